"""Where runs are stored, and how stage executions map onto MLflow rows (one row per result)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from conftest import REPO, mlflow_runs, repo_params

from pipeline.core.config import flatten, merged, parse_config
from pipeline.core.errors import TrackingError
from pipeline.tracking import experiments, names, store
from pipeline.tracking import record as recording

# Rows recorded here go to an experiment of their own, "rows" (tracking.experiment).
ROWS = {"tracking": {"experiment": "rows"}}


def rows_config():
    return parse_config(merged(repo_params(), ROWS))


def test_store_defaults_to_the_project_root_and_follows_dvc_root(project, monkeypatch, tmp_path_factory):
    assert store.tracking_uri() == f"sqlite:///{project.root.resolve()}/mlflow.db"
    elsewhere = tmp_path_factory.mktemp("dvc-root")
    monkeypatch.setenv("DVC_ROOT", str(elsewhere))
    assert store.tracking_uri() == f"sqlite:///{elsewhere.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert store.tracking_uri() == "http://127.0.0.1:5999"


@pytest.fixture
def record(project, monkeypatch):
    """Record a fake stage execution; returns its run id. Stages here stand in for later ones."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.store}")
    config = rows_config()

    def recorded(stage: str, metric: float, upstream: str | None = None, params: dict | None = None, fail=False):
        prefix = names.STAGE_METRIC_PREFIX[stage]
        with recording.stage_run(stage, config, run_name=f"{stage}-run", params=params,
                              upstream_run_id=upstream) as active:
            mlflow.log_metric(f"{prefix}/score", metric, step=1)
            if fail:
                raise RuntimeError("stage failed")
        return active.info.run_id

    return recorded


def rows(project):
    return {run.info.run_id: run for run in project.runs("rows")}


def test_later_stage_adds_to_the_row_of_the_stage_before_it(project, record):
    vae = record("train_vae", 1.0)
    gan = record("train_gan", 2.0, upstream=vae)
    assert gan == vae
    (row,) = rows(project).values()
    assert row.data.tags["pipeline.stages"] == "train_vae,train_gan"
    assert row.data.metrics == {"vae/score": 1.0, "gan/score": 2.0}


def test_rerun_of_a_later_stage_starts_a_new_row_that_carries_the_earlier_numbers(project, record):
    vae = record("train_vae", 1.0)
    first_gan = record("train_gan", 2.0, upstream=vae)
    second_gan = record("train_gan", 3.0, upstream=vae, params={"gan.lr": "0.1"})
    assert first_gan == vae and second_gan != vae
    new = rows(project)[second_gan]
    assert new.data.metrics == {"vae/score": 1.0, "gan/score": 3.0}
    assert new.data.tags["pipeline.stages"] == "train_vae,train_gan"
    assert new.data.tags["pipeline.forked_from"] == vae
    assert new.data.tags["pipeline.source_run.train_vae"] == vae  # where the VAE's artifacts are
    assert rows(project)[vae].data.metrics["gan/score"] == 2.0  # the first result is untouched


def test_different_params_in_the_upstream_row_start_a_new_row(project, record):
    vae = record("train_vae", 1.0, params={"latent_dim": "16"})
    gan = record("train_gan", 2.0, upstream=vae, params={"latent_dim": "8"})
    assert gan != vae and rows(project)[gan].data.params["latent_dim"] == "8"


def test_failed_stage_marks_the_row_failed_and_the_retry_starts_clean(project, record):
    vae = record("train_vae", 1.0)
    with pytest.raises(RuntimeError):
        record("train_gan", 99.0, upstream=vae, fail=True)
    failed = rows(project)[vae]
    assert failed.info.status == "FAILED" and failed.data.tags["pipeline.stages"] == "train_vae"
    retry = record("train_gan", 2.0, upstream=vae)
    assert retry != vae
    assert rows(project)[retry].data.metrics == {"vae/score": 1.0, "gan/score": 2.0}  # no 99 left over


def test_missing_upstream_row_starts_a_new_one(project, record):
    gan = record("train_gan", 2.0, upstream="0" * 32)
    assert rows(project)[gan].data.tags["pipeline.stages"] == "train_gan"


def test_a_failure_while_copying_into_a_new_row_marks_it_failed(project, record, monkeypatch):
    vae = record("train_vae", 1.0)
    record("train_gan", 2.0, upstream=vae)

    def broken_copy(*args, **kwargs):
        raise RuntimeError("store went away mid-copy")

    monkeypatch.setattr(recording, "_copy_upstream", broken_copy)
    with pytest.raises(RuntimeError, match="mid-copy"):
        record("train_gan", 3.0, upstream=vae)
    statuses = sorted(run.info.status for run in rows(project).values())
    assert statuses == ["FAILED", "FINISHED"]  # the new row is not left RUNNING


@pytest.mark.slow
def test_processes_that_create_a_new_store_at_once_all_record(tmp_path):
    """MLflow's schema migrations break when two processes create one SQLite store together
    (queue workers starting at once); the creation lock makes them take turns."""
    script = (
        "import mlflow\n"
        "from pipeline.tracking import experiments\n"
        "experiment = experiments.ensure_experiment('rows')\n"
        "for step in range(3):\n"
        "    with mlflow.start_run(experiment_id=experiment):\n"
        "        mlflow.log_metric('m', step)\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(REPO),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    workers = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    errors = [worker.communicate()[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 4, "\n".join(errors)
    assert len(mlflow_runs(tmp_path / "mlflow.db", "rows")) == 12


def test_an_unreachable_tracking_server_is_reported_at_once(monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(TrackingError, match=rf"server http://127.0.0.1:{port} is unreachable \(\[Errno 111\]"):
        store.check_server()


def test_a_dataset_that_another_process_is_recording_is_logged_again(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.store}")
    splits = SimpleNamespace(name="tiny", x_train=np.zeros((4, 1, 2, 2), np.uint8), y_train=np.arange(4),
                             x_test=np.zeros((2, 1, 2, 2), np.uint8), y_test=np.arange(2))
    real_log_input, calls = mlflow.log_input, []

    def racing(dataset, context):  # the other process commits the dataset first, once
        calls.append(context)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                                    "datasets.experiment_id, datasets.name, datasets.digest")
        real_log_input(dataset, context=context)

    monkeypatch.setattr(mlflow, "log_input", racing)
    with mlflow.start_run(experiment_id=experiments.ensure_experiment("rows")) as active:
        recording.log_dataset(splits, {"content_hash": "abc"})
    inputs = mlflow.MlflowClient().get_run(active.info.run_id).inputs.dataset_inputs
    assert calls == ["train", "train", "test"]
    assert sorted(i.dataset.name for i in inputs) == ["tiny-test", "tiny-train"]

    def broken(dataset, context):
        raise mlflow.exceptions.MlflowException("store is read-only")

    monkeypatch.setattr(mlflow, "log_input", broken)
    with pytest.raises(mlflow.exceptions.MlflowException, match="read-only"), mlflow.start_run(
            experiment_id=experiments.ensure_experiment("rows")):
        recording.log_dataset(splits, {"content_hash": "abc"})


def test_an_interrupted_stage_ends_its_row_killed_or_leaves_it_to_the_next_stage(project, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.store}")
    config = rows_config()
    with pytest.raises(KeyboardInterrupt):
        with recording.stage_run("train_vae", config, run_name="interrupted"):
            raise KeyboardInterrupt
    assert [run.info.status for run in rows(project).values()] == ["KILLED"]

    # An interrupt that lands inside one of MLflow's writes can leave the store locked for the
    # stage: the interrupt still ends the stage (no other exception), and the row is left RUNNING
    # with the host and pid that close_abandoned reads once this process is gone.
    def locked(self, run_id, status=None, end_time=None):
        raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", locked)
    with pytest.raises(KeyboardInterrupt):
        with recording.stage_run("train_vae", config, run_name="locked") as active:
            raise KeyboardInterrupt
    monkeypatch.undo()
    assert f"MLflow row {active.info.run_id} could not be marked KILLED (" in caplog.text
    assert "stayed locked by another process for 60 s; find what holds it" in caplog.text
    assert "; the next stage on this machine will mark it KILLED" in caplog.text
    row = rows(project)[active.info.run_id]
    assert row.info.status == "RUNNING" and row.data.tags["pipeline.pid"] == str(os.getpid())
    assert mlflow.active_run() is None  # nothing left for MLflow to end again (as FAILED, or FINISHED at exit)


def test_an_interrupt_in_mlflows_commit_does_not_lock_the_row_out_of_being_killed(project, monkeypatch):
    """Ctrl-C landing as MLflow commits a write left this process's pooled connection holding the
    store's lock: ending the row KILLED then waited the whole store wait for this very process, and
    failed (a stage killed by SIGINT took 60 s to exit)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.store}")
    monkeypatch.setenv("PIPELINE_STORE_WAIT_S", "5")
    config = rows_config()
    armed = []

    def interrupt(connection):
        if armed:
            armed.clear()
            raise KeyboardInterrupt

    event.listen(Engine, "commit", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with recording.stage_run("train_vae", config, run_name="interrupted") as active:
                armed.append(True)
                mlflow.log_metric("vae/loss", 1.0)  # the interrupt lands in this write's commit
    finally:
        event.remove(Engine, "commit", interrupt)
    assert not armed  # it did land there
    assert rows(project)[active.info.run_id].info.status == "KILLED"


def test_each_configuration_gets_one_summary_run_with_its_seeds_nested_and_updated_in_place(project, record):
    from pipeline.tracking import summaries
    from pipeline.tracking.rows import configurations, read_rows

    fid = names.HEADLINE_METRICS["fid_vae"]

    def result(seed: int, value: float) -> str:
        params = {**{k: str(v) for k, v in flatten(rows_config()).items()}, "seed": str(seed)}
        row = record("train_vae", 1.0, params=params)
        record("train_gan", 2.0, upstream=row, params=params)
        with mlflow.start_run(run_id=record("evaluate", 3.0, upstream=row, params=params)):
            mlflow.log_metric(fid, value)
        return row

    ids = [result(0, 400.0), result(1, 500.0)]
    tagged = {run.data.tags[names.CONFIGURATION_TAG] for run in project.runs("rows")}
    assert len(tagged) == 1  # two seeds, one configuration
    recorded = read_rows("rows")
    (summary_id,) = summaries.record("rows", configurations(recorded), recorded).values()
    runs = {run.info.run_id: run for run in mlflow_runs(project.store, "rows", summaries=True)}
    assert list(runs) == [summary_id] and runs[summary_id].info.status == "FINISHED"
    summary = runs[summary_id].data
    assert summary.metrics[fid] == 450.0 and summary.metrics[f"{fid}/n"] == 2
    assert (summary.metrics[f"{fid}/ci95_low"], summary.metrics[f"{fid}/ci95_high"]) == pytest.approx(
        (450.0 - 12.706204736 * 50.0, 450.0 + 12.706204736 * 50.0))  # t(0.975, 1) * s / sqrt(2)
    assert summary.metrics[f"{fid}/ci95_half_width"] == pytest.approx(12.706204736 * 50.0)  # the UI's ± column
    assert summary.tags["pipeline.seeds"] == "0,1" and summary.tags["mlflow.runName"].endswith("(2 seeds)")
    assert "seed" not in summary.params and summary.params["latent_dim"] == str(repo_params()["latent_dim"])
    assert {run.info.run_id: run.data.tags.get("mlflow.parentRunId") for run in project.runs("rows")} == {
        ids[0]: summary_id, ids[1]: summary_id}
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project.store}")
    assert client.get_experiment_by_name("rows").tags[names.EXPERIMENT_KIND_TAG] == names.TRAINING_KIND

    ids.append(result(2, 600.0))  # a third seed: the same summary, updated
    recorded = read_rows("rows")
    assert summaries.record("rows", configurations(recorded), recorded) == {runs[summary_id].data.tags[
        names.SUMMARY_TAG]: summary_id}
    (again,) = mlflow_runs(project.store, "rows", summaries=True)
    assert again.data.metrics[fid] == 500.0 and again.data.tags["pipeline.seeds"] == "0,1,2"
    assert mlflow_runs(project.store, "rows")[0].data.tags["mlflow.parentRunId"] == summary_id


def test_rows_read_from_a_sqlite_store_are_those_mlflow_gives(project, record):
    """rows.read_rows reads a local SQLite store's tables directly (thousands of rows in a fraction
    of MLflow's time): the same Rows as MLflow's search, a NaN and a deleted run included."""
    from pipeline.tracking import rows

    first = record("train_vae", 1.0)
    record("train_gan", float("nan"), upstream=first)
    record("train_vae", 2.0, params={"latent_dim": "8"})
    with pytest.raises(RuntimeError):
        record("train_vae", 4.0, fail=True)  # a FAILED row
    doomed = record("train_vae", 3.0, params={"latent_dim": "2"})
    mlflow.MlflowClient().delete_run(doomed)
    direct, searched = rows.read_rows("rows"), rows.read_rows("rows", through_mlflow=True)
    assert len(direct) == 3 and doomed not in {row.run_id for row in direct}
    assert sorted(row.status for row in direct) == ["FAILED", "FINISHED", "FINISHED"]

    def comparable(row):  # NaN != NaN: compare the metrics as text
        return {**row.__dict__, "metrics": {key: repr(value) for key, value in row.metrics.items()}}

    assert [comparable(row) for row in direct] == [comparable(row) for row in searched]


def seed_run_rows(config, values: dict[int, float]) -> dict[int, str]:
    """The result stages recorded as a run of `config`'s seeds records them (record.seed_runs),
    the evaluation logging `values[seed]` as the VAE samples' score; each seed's row id."""
    upstream: dict[int, str] = {}
    for stage in names.RESULT_STAGES:
        with recording.seed_runs(stage, config, upstream=upstream) as runs:
            for seed in config.seeds:
                with runs.seed(seed):
                    if stage == "evaluate":
                        mlflow.log_metric(names.HEADLINE_METRICS["fid_vae"], values[seed])
        upstream = dict(runs.ids)
    return upstream


def test_rows_of_older_code_one_seed_per_experiment_pool_with_seeds_trained_together(project, record, monkeypatch):
    """A store written before seeds were trained together holds one row per DVC experiment, with
    the param `seed` (no list); a new run records one row per seed in the same form, so the
    configuration pools them all: one configuration of three seeds, one summary run over them, and
    `make compare`'s line with n = 3. A seed run again replaces its row under the summary."""
    import dataclasses

    from pipeline.tools import compare
    from pipeline.tracking import summaries
    from pipeline.tracking.rows import configurations, read_rows

    fid = names.HEADLINE_METRICS["fid_vae"]
    config = dataclasses.replace(rows_config(), seeds=(2,))
    older = {key: str(value) for key, value in flatten(config).items() if key != "seeds"}  # as older code logged
    for seed, value in ((0, 400.0), (1, 500.0)):
        params = {**older, "seed": str(seed)}
        row = record("train_vae", 1.0, params=params)
        record("train_gan", 2.0, upstream=row, params=params)
        with mlflow.start_run(run_id=record("evaluate", 3.0, upstream=row, params=params)):
            mlflow.log_metric(fid, value)
    new = seed_run_rows(config, {2: 600.0})
    assert all(run.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate" for run in project.runs("rows"))

    (configuration,) = configurations(read_rows("rows"))
    assert configuration.seeds == [0, 1, 2] and configuration.interval(fid).mean == 500.0
    summary_id = summaries.record_configuration("rows", configuration.id)
    nested = {run.data.params["seed"]: run.data.tags.get("mlflow.parentRunId") for run in project.runs("rows")}
    assert nested == {"0": summary_id, "1": summary_id, "2": summary_id}
    (line,) = compare.aggregate(read_rows("rows")).itertuples()
    assert line.n == 3

    again = seed_run_rows(config, {2: 900.0})  # seed 2 run again: its newest row replaces the older one
    summaries.record_configuration("rows", configuration.id)
    parents = {run.info.run_id: run.data.tags.get("mlflow.parentRunId") for run in project.runs("rows")}
    assert parents[again[2]] == summary_id and parents[new[2]] is None  # one child per seed, never two
    (summary,) = mlflow_runs(project.store, "rows", summaries=True)
    assert summary.data.metrics[fid] == 600.0 and summary.data.tags["pipeline.seeds"] == "0,1,2"


def test_a_failure_while_recording_the_seeds_leaves_no_row_holding_the_stage(project, monkeypatch):
    """The stage joins every seed's row together, once all are recorded: a failure on the way ends
    every row the execution wrote FAILED, none of them counted as holding the stage."""
    import dataclasses

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.store}")
    config = dataclasses.replace(rows_config(), seeds=(0, 1, 2))
    with pytest.raises(RuntimeError, match="seed 1 failed"):
        with recording.seed_runs("train_vae", config) as runs:
            for seed in config.seeds:
                with runs.seed(seed):
                    mlflow.log_metric("vae/score", 1.0)
                    if seed == 1:
                        raise RuntimeError("seed 1 failed")
    found = project.runs("rows")
    assert len(found) == 2 and {run.info.status for run in found} == {"FAILED"}
    assert all("pipeline.stages" not in run.data.tags for run in found)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_infinite_seed_is_left_out_named_and_n_counts_the_others(project, monkeypatch, bad):
    """One seed of three records NaN (or inf): the mean and interval are the other two seeds', the
    n says 2, and compare, the summary run and the report's reader name the seed left out, rather
    than showing `-` (or NaN) for the whole configuration."""
    import dataclasses

    from pipeline.core.stats import mean_interval
    from pipeline.tools import compare
    from pipeline.tracking import summaries
    from pipeline.tracking.rows import configurations, left_out, read_rows

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.store}")
    fid = names.HEADLINE_METRICS["fid_vae"]
    seed_run_rows(dataclasses.replace(rows_config(), seeds=(0, 1, 2)), {0: 400.0, 1: bad, 2: 500.0})
    recorded = read_rows("rows")
    (configuration,) = configurations(recorded)
    interval = configuration.interval(fid)
    assert (interval.mean, interval.n, interval.low) == (450.0, 2, mean_interval([400.0, 500.0]).low)
    named = f"{configuration.id} seed 1: {fid} = {bad}"
    assert left_out([configuration], [fid]) == [named]

    table = compare.aggregate(recorded)
    assert (table["n"][0], table["fid_vae"][0], table["fid_vae_n"][0], table["left_out"][0]) == (3, 450.0, 2, named)
    assert f"left out of the means, as NaN or infinite (1; the interval of that metric counts the other seeds, its n " \
           f"in the CSV's <metric>_n): {named}" in compare.format_aggregate(table)

    (summary_id,) = summaries.record("rows", [configuration], recorded).values()
    (summary,) = mlflow_runs(project.store, "rows", summaries=True)
    assert summary.data.metrics[fid] == 450.0 and summary.data.metrics[f"{fid}/n"] == 2
    assert summary.data.tags[names.LEFT_OUT_TAG] == named and summary.data.tags["pipeline.seeds"] == "0,1,2"


def test_summary_runs_are_never_left_running_or_made_twice(project, monkeypatch):
    """A summary run stopped while it is written (Ctrl-C, SIGTERM, a store fault) is deleted by its
    writer; one whose writer was killed outright (RUNNING, this host, a dead pid) is deleted by the
    next writer; two writers of one configuration at once (two `compare`) keep the older run."""
    import dataclasses

    from mlflow.tracking import MlflowClient

    from pipeline.tracking import summaries
    from pipeline.tracking.rows import configurations, read_rows

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.store}")
    seed_run_rows(dataclasses.replace(rows_config(), seeds=(0, 1)), {0: 400.0, 1: 500.0})
    recorded = read_rows("rows")
    (configuration,) = configurations(recorded)
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("rows").experiment_id

    def summary_runs(view="ACTIVE_ONLY"):
        from mlflow.entities import ViewType

        return client.search_runs([experiment_id], filter_string=f"tags.`{names.SUMMARY_TAG}` = '{configuration.id}'",
                                  run_view_type=getattr(ViewType, view))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(type(client), "set_terminated", interrupted)
        with pytest.raises(KeyboardInterrupt):
            summaries.record("rows", [configuration], recorded)
    assert summary_runs() == [] and len(summary_runs("DELETED_ONLY")) == 1  # deleted, not left RUNNING

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = client.create_run(experiment_id, tags={names.SUMMARY_TAG: configuration.id, names.HOST_TAG:
                                                    socket.gethostname(), names.PID_TAG: str(dead.pid)}).info.run_id
    live = client.create_run(experiment_id, tags={names.SUMMARY_TAG: configuration.id, names.HOST_TAG:
                                                  socket.gethostname(), names.PID_TAG: str(os.getppid())}).info.run_id
    recorded = read_rows("rows")
    (kept,) = summaries.record("rows", [configuration], recorded).values()
    assert kept == live  # a live writer's run, the oldest left: written into, not doubled
    assert {run.info.run_id for run in summary_runs()} == {live}
    assert client.get_run(killed).info.lifecycle_stage == "deleted"

    client.delete_run(live)
    first = summaries._create(client, experiment_id, configuration)  # two writers that each found none
    second = summaries._create(client, experiment_id, configuration)
    assert second == first and [run.info.run_id for run in summary_runs()] == [first]
    assert client.get_run(first).info.status == "FINISHED"


def test_a_server_gone_mid_stage_is_one_line_after_a_bounded_wait(monkeypatch):
    """MLflow's client retries a refused request for minutes by default (a stage hung 506 s before
    its traceback): connecting to a server bounds the retries, a user's own setting kept, and the
    refusal reads as one line saying what to do."""
    import time

    from conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    for variable in store.SERVER_RETRIES:
        monkeypatch.setenv(variable, "x")  # recorded, so that what connect() sets is undone
        monkeypatch.delenv(variable)
    _, client = store.connect()
    assert {variable: os.environ[variable] for variable in store.SERVER_RETRIES} == store.SERVER_RETRIES
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        client.get_experiment_by_name("rows")
    waited = time.monotonic() - started
    fault = str(store.store_fault(raised.value))
    assert fault.startswith("MLflow tracking server http://127.0.0.1:") and "stopped answering (" in fault
    assert "start it again and rerun" in fault and "\n" not in fault
    assert waited < 30, waited
