"""How a stage execution becomes (part of) an MLflow row: one complete row per result, a later
stage adding to its upstream's row or starting a new one with copies of the upstream records, a
failed or interrupted stage's row ended FAILED or KILLED (and one left RUNNING by a killed process
closed later), and the run files that tell the next stage which row to add to. docs/tracking.md
explains the row model; store.py is the store itself.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.config import Config, flatten, seed_params
from pipeline.core.errors import CheckpointError, Terminated
from pipeline.core.io import process_alive, read_stage_json, write_json
from pipeline.tracking import experiments, names, provenance, store

log = logging.getLogger(__name__)


def close_abandoned(client, experiment_id: str) -> list[str]:
    """Mark KILLED the experiment's RUNNING rows that a process on this machine held and that
    process is gone (killed without a chance to end its row); returns their ids. Rows of other
    machines, and of live processes (a queue worker running now), are left alone."""
    host = socket.gethostname()
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        pid = run.data.tags.get(names.PID_TAG, "")
        if run.data.tags.get(names.HOST_TAG) == host and pid.isdigit() and not process_alive(int(pid)):
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("MLflow row %s was left RUNNING by process %s, which is gone: marked KILLED",
                        run.info.run_id, pid)
            closed.append(run.info.run_id)
    return closed


def close_dead_attempts(experiment_name: str, exp_names: list[str]) -> list[str]:
    """Mark KILLED the rows of DVC experiments `exp_names` still RUNNING once the sweep knows that
    every attempt at them has ended: attempts that died with their Ray node. Their process was on
    another host, so close_abandoned, which sees this machine's processes only, cannot tell that
    it is gone. Returns their ids."""
    from mlflow.entities import RunTag

    _, client = store.connect()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    closed = []
    for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"):
        if run.data.tags.get(names.EXP_NAME_TAG) in exp_names:
            client.log_batch(run.info.run_id, tags=[RunTag(names.CLOSED_BY_TAG, "sweep: its attempt died with its node")])
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("MLflow row %s of %s was left RUNNING by an attempt that died with its node: marked KILLED",
                        run.info.run_id, run.data.tags[names.EXP_NAME_TAG])
            closed.append(run.info.run_id)
    return closed


def _recorded_stages(run) -> list[str]:
    value = run.data.tags.get(names.STAGES_TAG, "")
    return value.split(",") if value else []


def _can_add_to(run, stage: str, params: dict[str, str]) -> bool:
    """Whether `stage` may add its record to the existing row `run` (see module docstring)."""
    return (
        run.info.status == "FINISHED"
        and stage not in _recorded_stages(run)
        and all(run.data.params.get(key, value) == value for key, value in params.items())
    )


def _copy_upstream(client, source, target_id: str, stage: str) -> list[str]:
    """Copy the records of the stages before `stage` from row `source` into row `target_id`."""
    from mlflow.entities import RunTag

    recorded = _recorded_stages(source)
    kept = recorded[: recorded.index(stage)] if stage in recorded else recorded
    prefixes = tuple(f"{names.STAGE_METRIC_PREFIX[s]}/" for s in kept)
    metrics = [
        point
        for key in source.data.metrics
        if key.startswith(prefixes)
        for point in client.get_metric_history(source.info.run_id, key)
    ]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(target_id, metrics=metrics[start : start + 1000])
    client.log_batch(target_id, tags=[RunTag(f"{names.SOURCE_TAG}{s}", source.data.tags.get(
        f"{names.SOURCE_TAG}{s}", source.info.run_id)) for s in kept])
    return kept


@contextlib.contextmanager
def stage_run(
    stage: str,
    config: Config,
    *,
    run_name: str,
    params: dict[str, Any] | None = None,
    upstream_run_id: str | None = None,
    mark_stage: bool = True,
) -> Iterator[Any]:
    """Record one stage execution in MLflow; yields the active `mlflow.ActiveRun`.

    The row goes into the stage's experiment (provenance.experiment_for). With `upstream_run_id` the stage
    adds to that row or starts a new one holding copies of its upstream records (docs/tracking.md).
    `params` defaults to the full typed config. If the block raises, the run ends FAILED (KILLED
    for Ctrl-C and SIGTERM) and the stage is not added to `pipeline.stages`. With `mark_stage`
    false the row ends FINISHED without the stage in `pipeline.stages` (`mark_stage` adds it), so
    no reader takes it for the stage's record yet (`seed_runs`).
    """
    mlflow, client = store.connect()
    params = {key: str(value) for key, value in (params or flatten(config)).items()}
    try:
        experiment_id = experiments.ensure_experiment(provenance.experiment_for(stage, config))
        close_abandoned(client, experiment_id)
        upstream = client.get_run(upstream_run_id) if upstream_run_id else None
    except mlflow.exceptions.MlflowException as error:
        if upstream_run_id and "not found" in str(error).lower():
            log.warning("upstream MLflow run %s is not in %s; starting a new row", upstream_run_id, store.shown_uri())
            upstream = None
        else:
            raise store.unusable_store(error) from None

    adding = upstream is not None and _can_add_to(upstream, stage, params)
    try:
        with store.quiet("mlflow.store.db.utils"):
            if adding:
                active = mlflow.start_run(run_id=upstream.info.run_id)
            else:
                active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
    except mlflow.exceptions.MlflowException as error:  # a read-only store, say: nothing was recorded
        raise store.unusable_store(error) from None
    # Everything from here on ends the run, FAILED or KILLED on a failure, rather than leaving it
    # RUNNING and half-copied.
    run_id = active.info.run_id
    try:
        stages = _recorded_stages(upstream) if adding else []
        if upstream is not None and not adding:
            stages = _copy_upstream(client, upstream, run_id, stage)
            mlflow.set_tag(names.FORKED_TAG, upstream.info.run_id)
        mlflow.set_tags(provenance.context_tags(stage))
        mlflow.log_params({k: v for k, v in params.items() if k not in active.data.params})
        if names.STAGE_EXPERIMENT[stage] is None:  # a result row: tag what its replicates share
            mlflow.set_tag(names.CONFIGURATION_TAG, names.configuration_id(params))
        yield active
        if mark_stage:
            mlflow.set_tags(stage_tags(stage, run_id, stages))
        else:
            mlflow.set_tag(_PENDING_TAG, ",".join(stages))
        with store.quiet("mlflow.store.db.utils"):
            mlflow.end_run("FINISHED")
    except (KeyboardInterrupt, Terminated):  # Ctrl-C, or SIGTERM (see pipeline.stages.cli)
        end_run(run_id, "KILLED")
        raise
    except BaseException:
        end_run(run_id, "FAILED")
        raise


_PENDING_TAG = "pipeline.pending_stages"  # a seed's row whose stage record waits for its other seeds'


def stage_tags(stage: str, run_id: str, stages: list[str]) -> dict[str, str]:
    """The tags that add `stage` to a row's recorded stages (after `stages`)."""
    return {names.STAGES_TAG: ",".join([*stages, stage]), f"{names.SOURCE_TAG}{stage}": run_id}


class SeedRuns:
    """The rows of one stage execution, one per model seed: `seed(s)` records seed s's row (a
    `stage_run`, into the seed's upstream row where there is one); the stage is added to every
    row's recorded stages only once all of them are recorded (`seed_runs`)."""

    def __init__(self, stage: str, config: Config, upstream: dict[int, str]):
        self.stage, self.config, self.upstream = stage, config, upstream
        self.ids: dict[int, str] = {}
        self.experiment_id = ""

    @contextlib.contextmanager
    def seed(self, seed: int) -> Iterator[Any]:
        with stage_run(self.stage, self.config, run_name=provenance.run_name(self.config, seed),
                       params=seed_params(self.config, seed), upstream_run_id=self.upstream.get(seed),
                       mark_stage=False) as active:
            self.ids[seed] = active.info.run_id
            self.experiment_id = active.info.experiment_id
            yield active


@contextlib.contextmanager
def seed_runs(stage: str, config: Config, *, upstream: dict[int, str] | None = None) -> Iterator[SeedRuns]:
    """Record one stage execution that computed every seed of `config`: one row per seed, each
    added to its upstream row (`upstream`: seed -> row id, from the previous stage's run file) or
    a new one. The stage joins the rows' recorded stages together, once every seed's record is
    written: a failure or an interrupt on the way ends every row this execution wrote to FAILED
    (KILLED), none holding the stage, so no reader counts a half-recorded execution."""
    import mlflow
    from mlflow.entities import RunTag

    runs = SeedRuns(stage, config, upstream or {})
    try:
        yield runs
        _, client = store.connect()
        for run_id in runs.ids.values():
            run = client.get_run(run_id)
            pending = run.data.tags.get(_PENDING_TAG, "")
            tags = stage_tags(stage, run_id, pending.split(",") if pending else [])
            client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
            client.delete_tag(run_id, _PENDING_TAG)
    except BaseException as error:
        status = "KILLED" if isinstance(error, (KeyboardInterrupt, Terminated)) else "FAILED"
        for run_id in runs.ids.values():
            with contextlib.suppress(Exception):  # the row's own stage_run may have ended it already
                mlflow.MlflowClient().set_terminated(run_id, status)
        raise


def end_run(run_id: str, status: str) -> None:
    """End a failed or interrupted stage's row as `status`. An interrupt that lands inside one of
    MLflow's writes can leave this process's connection in its write transaction, holding the
    store's lock against this very call for the whole store_wait(): the write is rolled back first
    (interrupted, it was never to be kept). The store can still refuse, locked by another process
    past store_wait(). Then the row stays RUNNING with its host and pid, and the next stage on this
    machine marks it KILLED (`close_abandoned`), as after a SIGKILL; the stage still ends with its
    own error or exit code, not a traceback."""
    import mlflow

    for record in list(store.opened_connections()):
        connection = record.dbapi_connection
        if getattr(connection, "in_transaction", False):
            with contextlib.suppress(Exception):  # another thread's, or already closed
                connection.rollback()
    try:
        with store.quiet("mlflow.store.db.utils"):
            if mlflow.active_run() is not None:
                mlflow.end_run(status)
            else:
                mlflow.MlflowClient().set_terminated(run_id, status)
    except Exception as error:
        log.warning("MLflow row %s could not be marked %s (%s); the next stage on this machine will mark it KILLED",
                    run_id, status, store.store_fault(error) or error)


def log_steps(points: list[tuple[str, float, int]]) -> None:
    """Log many metric points, (key, value, step), into the active run in batches of MLflow's
    largest size: one request per thousand points where `mlflow.log_metrics` makes one per step."""
    import time

    import mlflow
    from mlflow.entities import Metric

    run_id = mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, step) for key, value, step in points]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_dataset(splits, facts: dict) -> None:
    """Log both splits as MLflow dataset inputs, with the data's content hash as digest."""
    import mlflow
    import mlflow.data

    for context, x, y in (("train", splits.x_train, splits.y_train), ("test", splits.x_test, splits.y_test)):
        dataset = mlflow.data.from_numpy(x, targets=y, name=f"{splits.name}-{context}", digest=facts["content_hash"])
        try:
            mlflow.log_input(dataset, context=context)
        except mlflow.exceptions.MlflowException as error:
            # MLflow looks a dataset up, then inserts it if missing: two processes logging the same
            # dataset at once (two queue workers) both insert, and the second hits the table's
            # uniqueness. Once the first has committed, the lookup finds it: one retry is enough.
            if "unique" not in str(error).lower():
                raise
            log.info("dataset %s was being recorded by another process; logging it again", dataset.name)
            mlflow.log_input(dataset, context=context)


def write_run_file(path: Path, runs: SeedRuns, summary_id: str | None = None) -> None:
    """Store which MLflow rows a stage recorded into, by seed, for the stages after it (and, after
    the evaluation, the configuration's summary run)."""
    content = {"experiment_id": runs.experiment_id, "runs": {str(seed): run_id for seed, run_id in runs.ids.items()}}
    write_json(path, content | ({"summary_run_id": summary_id} if summary_id else {}))


def upstream_rows(config: Config, run_file: Path, stage: str) -> dict[int, str]:
    """The row ids, by seed, that `stage` recorded into (`run_file`), for the next stage to add to;
    refused before any work, as a CheckpointError naming `stage` to rerun, when the file is damaged
    or its rows were recorded with other values than `config`'s of the params `stage`'s results
    depend on (the next stage would copy them into a row that says otherwise), or deleted. A row
    missing from the store is left to `stage_run` (it starts a new row, with a warning)."""
    import mlflow

    upstream = _read_run_file(run_file, stage)
    if not upstream:
        return upstream
    _, client = store.connect()
    for seed in config.seeds:
        if seed not in upstream:
            continue
        try:
            row = client.get_run(upstream[seed])
        except mlflow.exceptions.MlflowException as error:
            if "not found" in str(error).lower():
                continue
            raise store.unusable_store(error) from None
        if row.info.lifecycle_stage == "deleted":
            raise CheckpointError(f"{run_file} names MLflow row {upstream[seed]} for seed {seed}, which is deleted: "
                                  f"restore it (`mlflow runs restore --run-id {upstream[seed]}`) or rerun "
                                  f"`dvc repro -f {stage}`")
        differing = [f"{key} = {row.data.params[key]!r} where params.yaml says {value!r}"
                     for key, value in seed_params(config, seed).items()
                     if names.depends_on(stage, key) and key in row.data.params and row.data.params[key] != value]
        if differing:
            raise CheckpointError(f"{run_file} names MLflow row {upstream[seed]} for seed {seed}, recorded with "
                                  f"{', '.join(differing)}; rerun `dvc repro -f {stage}`")
    return upstream


def _read_run_file(path: Path, stage: str) -> dict[int, str]:
    """The row ids `stage` recorded into, by seed; empty when the file is missing or was written
    by older code (one row, no seeds): the next stage then starts new rows. A damaged file is a
    CheckpointError naming `stage` to rerun."""
    path = Path(path)
    if not path.exists():
        return {}
    data = read_stage_json(path, stage, {})
    if isinstance(data, dict) and "runs" not in data and isinstance(data.get("run_id"), str):
        return {}  # older code's one row
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, dict):
        raise CheckpointError(f"{path} is damaged (no 'runs' of the expected type); rerun `dvc repro -f {stage}`")
    if not all(seed.isdigit() and isinstance(run_id, str) for seed, run_id in runs.items()):
        raise CheckpointError(f"{path} is damaged (its runs are not seed -> row id); rerun `dvc repro -f {stage}`")
    return {int(seed): run_id for seed, run_id in runs.items()}
