"""The pipeline as users drive it: `dvc repro`, a no-op repro, `dvc exp run -S latent_dim=8`,
`dvc exp show`, sweeps through DVC's queue, in a temporary git repository made from this project's
sources: most start from a copy of the session's repository after `dvc repro` (`workspace`), as a
user's sweep starts after the quick start."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, copy_project, git, mlflow_runs, repo_environment, repo_params, wait_for_line

from pipeline.core.config import merged
from pipeline.core.io import process_alive
from pipeline.stages import paths
from pipeline.tools import queue_sweep
from pipeline.tools.dvc_cli import SweepError
from pipeline.tools.queue_sweep import QueueView
from pipeline.tracking import names


def test_dvc_yaml_declares_every_path_the_stages_write_and_only_known_params():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

    def declared(stage):
        entries = dvc[stage].get("outs", []) + dvc[stage].get("metrics", []) + dvc[stage].get("plots", [])
        return {next(iter(e)) if isinstance(e, dict) else e for e in entries}

    assert tuple(dvc) == names.STAGES
    assert declared("download") == {str(paths.SPLITS), str(paths.FACTS)}
    assert declared("train_vae") == {str(p) for p in (paths.VAE_CHECKPOINTS, paths.VAE_RUN, paths.VAE_METRICS,
                                                       paths.VAE_HISTORY, paths.VAE_SEED_HISTORY, paths.VAE_SAMPLES,
                                                       paths.VAE_RECONSTRUCTIONS)}
    assert declared("train_classifier") == {str(p) for p in (paths.CLASSIFIER_CHECKPOINT, paths.CLASSIFIER_METRICS,
                                                              paths.CLASSIFIER_HISTORY)}
    assert declared("train_gan") == {str(p) for p in (paths.GAN_GENERATORS, paths.GAN_SAMPLES, paths.GAN_RUN,
                                                       paths.GAN_METRICS, paths.GAN_HISTORY, paths.GAN_SEED_HISTORY)}
    assert declared("evaluate") == {str(p) for p in (paths.EVAL_FIGURES, paths.EVAL_RUN, paths.EVAL_METRICS,
                                                      paths.EVAL_DETAILS, paths.EVAL_SEED_METRICS, paths.EVAL_KL_PER_DIM)}
    # DVC's metrics are the headline numbers only; every stage's detail is a plain output.
    assert [stage for stage in dvc if "metrics" in dvc[stage]] == ["evaluate"]
    assert dvc["evaluate"]["metrics"] == [{str(paths.EVAL_METRICS): {"cache": False}}]  # in git: see below
    assert str(paths.SPLITS) in dvc["train_vae"]["deps"]
    assert {str(paths.VAE_CHECKPOINTS), str(paths.VAE_RUN), str(paths.CLASSIFIER_CHECKPOINT)} <= set(
        dvc["train_gan"]["deps"])
    assert {str(paths.GAN_GENERATORS), str(paths.GAN_RUN)} <= set(dvc["evaluate"]["deps"])
    assert "latent_dim" not in dvc["train_classifier"]["params"]  # trained once, shared by every experiment
    # The ruler (split and classifier) does not move with the models' seed.
    assert "seed" not in dvc["download"]["params"] and "seed" not in dvc["train_classifier"]["params"]
    params = repo_params()
    for stage in dvc.values():
        for name in stage.get("params", []):
            section = params
            for part in name.split("."):
                assert isinstance(section, dict) and part in section, f"dvc.yaml names param {name!r} that params.yaml lacks"
                section = section[part]


def dvc(root, *args) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_module(root, module, *args) -> str:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, f"{module} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def result_rows(root):
    return {run.data.params["latent_dim"]: run for run in mlflow_runs(root / "mlflow.db", "mnist5k")}


@pytest.mark.slow
def test_repro_then_experiment_gives_one_row_per_seed_under_the_configurations_summary(reproduced, replicated,
                                                                                       tmp_path):
    """`dvc repro` (conftest's `reproduced`: seeds 0 and 1 trained together), a no-op `dvc repro`,
    then `dvc exp run -n s2 -S seeds=[2]` (conftest's `replicated`): one complete MLflow row per
    seed, nested under the configuration's summary run, which pools the experiment's seed with the
    workspace's. Both are read, not changed."""
    rows = {run.data.params["seed"]: run for run in mlflow_runs(reproduced / "mlflow.db", "mnist5k")}
    assert sorted(rows) == ["0", "1"] and all(row.info.status == "FINISHED" for row in rows.values())
    for row in rows.values():
        assert {"vae/test_neg_elbo", "gan/decoder/fid", "eval/scores/gan_decoder/fid"} <= set(row.data.metrics)
        assert row.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"
    (summary,) = mlflow_runs(reproduced / "mlflow.db", "mnist5k", summaries=True)  # made by the run itself
    assert {row.data.tags["mlflow.parentRunId"] for row in rows.values()} == {summary.info.run_id}
    assert summary.data.tags["pipeline.seeds"] == "0,1" and summary.data.metrics["eval/vae/neg_elbo/n"] == 2
    run_file = json.loads((reproduced / "outputs/eval/mlflow_run.json").read_text())
    assert run_file["summary_run_id"] == summary.info.run_id
    assert run_file["runs"] == {seed: row.info.run_id for seed, row in rows.items()}
    headline = json.loads((reproduced / "outputs/eval/metrics.json").read_text())
    neg_elbos = [row.data.metrics["eval/vae/neg_elbo"] for row in rows.values()]
    assert headline["n"] == 2 and headline["neg_elbo"] == pytest.approx(sum(neg_elbos) / 2)
    assert headline["neg_elbo_ci95"] == pytest.approx(summary.data.metrics["eval/vae/neg_elbo/ci95_half_width"])
    assert "Data and pipelines are up to date" in dvc(reproduced, "repro")
    assert len(mlflow_runs(reproduced / "mlflow.db")) == 4  # still two seeds' results, one dataset, one classifier

    repo = replicated.root
    rows = {run.data.params["seed"]: run for run in mlflow_runs(repo / "mlflow.db", "mnist5k")}
    assert sorted(rows) == ["0", "1", "2"]
    new = rows["2"]
    assert new.info.status == "FINISHED" and new.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"
    assert new.data.tags["dvc.exp_name"] == "s2"
    assert new.data.tags["dvc.baseline_rev"] == git(repo, "rev-parse", "HEAD").strip()
    assert len(mlflow_runs(repo / "mlflow.db", "datasets")) == 1  # the data stage did not rerun
    assert len(mlflow_runs(repo / "mlflow.db", "classifiers")) == 1  # nor the classifier: no seed of the models in it
    assert new.data.tags["git.dirty"] == "false"  # -S edits params.yaml, which is recorded as params
    assert new.info.run_name == "vae-gan-ld4-s2-s2"
    # Seeds from two DVC experiments pool: one summary run of the configuration, over all three.
    (summary,) = mlflow_runs(repo / "mlflow.db", "mnist5k", summaries=True)
    assert summary.data.tags["pipeline.seeds"] == "0,1,2"
    assert {row.data.tags["mlflow.parentRunId"] for row in rows.values()} == {summary.info.run_id}

    table = list(csv.DictReader(io.StringIO(dvc(repo, "exp", "show", "--csv"))))
    by_seeds = {row["seeds"]: row for row in table if row["typ"] != "baseline" or row["rev"] != "workspace"}
    assert set(by_seeds) == {"[0, 1]", "[2]"}
    assert float(by_seeds["[2]"]["neg_elbo"]) == pytest.approx(new.data.metrics["eval/vae/neg_elbo"])
    assert by_seeds["[2]"]["n"] == "1" and by_seeds["[2]"]["neg_elbo_ci95"] in ("", "-")  # one seed: no interval
    assert by_seeds["[0, 1]"]["n"] == "2" and float(by_seeds["[0, 1]"]["neg_elbo_ci95"]) > 0

    # The same comparison from MLflow, without the UI: printed, and written as CSV.
    shown = run_module(repo, "pipeline.tools.compare", "--runs", "--csv", str(tmp_path / "comparison.csv"))
    assert "vae-gan-ld4-s0-workspace" in shown and new.info.run_name in shown
    compared = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    assert sorted(row["seed"] for row in compared) == ["0", "1", "2"]
    for row in compared:
        metrics = rows[row["seed"]].data.metrics
        assert float(row["recon_mse"]) == metrics["eval/vae/recon_mse_per_pixel"]
        assert float(row["fid_decoder"]) == metrics["eval/scores/gan_decoder/fid"]


def repro_with(repo, section: str, key: str, value) -> set[str]:
    """Change one param, `dvc repro`; the stages that ran."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = dvc(repo, "repro")
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def newest_rows(repo, count: int):
    return sorted(mlflow_runs(repo / "mlflow.db", "mnist5k"), key=lambda r: r.info.start_time)[-count:]


@pytest.mark.slow
def test_a_killed_repro_and_changed_params_rerun_only_the_stages_after_them(workspace):
    """SIGKILL to `dvc repro` and its stage (the process group) while the GANs train: DVC has removed
    the stage's outputs and none is half written, and nothing was recorded (a stage records its
    seeds once they have trained). The rerun, with another `gan.*` value, runs only the GAN and
    the evaluation, from a clean state; each seed's new result gets its own complete row, which
    still carries the VAE's numbers it started from. Then an `evaluate.*` change reruns only the
    evaluation."""
    repo = workspace
    first = {r.data.params["seed"]: r for r in mlflow_runs(repo / "mlflow.db", "mnist5k")}  # the workspace's repro
    assert sorted(first) == ["0", "1"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gan"]["epochs"] = 100_000
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = open(repo / "repro.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    wait_for_line(process, log, "decoder epoch 2/", seconds=300)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (repo / "outputs" / "gan").exists() or not any((repo / "outputs" / "gan").rglob("*.pt"))
    assert len(mlflow_runs(repo / "mlflow.db", "mnist5k")) == 2  # the killed attempt recorded nothing

    assert repro_with(repo, "gan", "epochs", 1) == {"train_gan", "evaluate"}
    new = {r.data.params["seed"]: r for r in mlflow_runs(repo / "mlflow.db", "mnist5k")
           if r.info.run_id not in {row.info.run_id for row in first.values()}}
    assert sorted(new) == ["0", "1"] and {r.info.status for r in new.values()} == {"FINISHED"}
    for seed, row in new.items():
        assert row.data.params["gan.epochs"] == "1" and first[seed].data.params["gan.epochs"] == "2"
        assert row.data.metrics["vae/test_neg_elbo"] == first[seed].data.metrics["vae/test_neg_elbo"]
        assert row.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"

    assert repro_with(repo, "evaluate", "num_samples", 50) == {"evaluate"}  # nothing retrained
    latest = newest_rows(repo, 4)
    olds, news = ({r.data.params["seed"]: r for r in rows} for rows in (latest[:2], latest[2:]))
    assert sorted(olds) == sorted(news) == ["0", "1"]
    for seed, new in news.items():
        old = olds[seed]
        assert new.data.params["evaluate.num_samples"] == "50" and new.data.metrics["eval/num_samples"] == 50
        training = [key for key in old.data.metrics if key.startswith(("vae/", "gan/"))]
        assert training and all(new.data.metrics[key] == old.data.metrics[key] for key in training)
        assert new.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"


@pytest.mark.slow
def test_a_new_seed_reruns_the_models_on_the_same_ruler(replicated, monkeypatch):
    """`dvc exp run -n s2 -S seeds=[2]` after `dvc repro` (conftest's `replicated`, read only)."""
    repo, log = replicated.root, replicated.log
    assert {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")} == {
        "train_vae", "train_gan", "evaluate"}
    assert len(mlflow_runs(repo / "mlflow.db", "datasets")) == 1  # the split was not redrawn
    assert len(mlflow_runs(repo / "mlflow.db", "classifiers")) == 1  # nor the classifier retrained
    rows = {run.data.params["seed"]: run for run in mlflow_runs(repo / "mlflow.db", "mnist5k")}
    old, new = rows["0"], rows["2"]
    # One ruler: the same real images in the same feature space score the same floor for every seed.
    floor = "eval/scores/real_train/fid"
    assert new.data.metrics[floor] == old.data.metrics[floor]
    assert new.data.metrics["eval/scores/vae_prior/fid"] != old.data.metrics["eval/scores/vae_prior/fid"]
    assert new.data.tags[names.CONFIGURATION_TAG] == old.data.tags[names.CONFIGURATION_TAG]

    # `dvc exp show` in a 160-column terminal: its pager shows the table's first 160 columns, which
    # hold the experiment's name, the number of seeds, the headline metrics' means and the first of
    # their half-widths. DVC's metrics are the headline numbers only.
    monkeypatch.setenv("COLUMNS", "2000")  # the whole table's width, as the pager gets it
    header, *rows = [line[:160] for line in dvc(repo, "exp", "show", "--no-pager").splitlines() if line.strip(" ─")]
    print("\n".join([header, *rows]))
    columns = header.split()
    assert columns[:11] == ["Experiment", "Created", "n", *names.SHOWN_FIRST]  # n and every mean
    half_widths = columns[11:]  # then the half-widths, as many as the screen holds (the last one cut)
    expected = [name + names.CI_SUFFIX for name in names.SHOWN_FIRST][:len(half_widths)]
    assert len(half_widths) >= 2 and half_widths[:-1] == expected[:-1] and expected[-1].startswith(half_widths[-1])
    assert any("[s2]" in row for row in rows)
    (workspace,) = json.loads(dvc(repo, "metrics", "show", "--json")).values()
    assert list(workspace["data"]) == ["outputs/eval/metrics.json"]
    shown = workspace["data"]["outputs/eval/metrics.json"]["data"]  # the workspace's: s2, one seed
    assert list(shown) == ["n", *names.SHOWN_FIRST] and shown["n"] == 1  # DVC leaves out the null half-widths


# What git keeps of the outputs: dvc.yaml's `cache: false` files (test_structure checks the match).
COMMITTED_OUTPUTS = ["outputs/eval/kl_per_dim.csv", "outputs/eval/metrics.json", "outputs/gan/history.csv",
                     "outputs/vae/history.csv"]


@pytest.mark.slow
def test_an_experiment_compares_with_the_commit_on_a_machine_without_its_outputs(replicated, tmp_path, monkeypatch):
    """On another machine (another CPU: other bytes, other hashes) the commit's outputs are not in
    the local DVC cache. Its headline metrics and per-epoch CSVs are committed (`cache: false`), so
    DVC reads them from git: `dvc exp show`, `dvc metrics diff` and `dvc exp diff` compare the
    experiment `s2` with the commit (without them: a row of `!` and "diff not supported")."""
    repo_environment(monkeypatch)
    repo = copy_project(replicated.root, tmp_path / "repo")
    shutil.rmtree(repo / ".dvc" / "cache")  # nothing of either run's outputs but what git holds
    assert git(repo, "ls-files", "outputs").split() == COMMITTED_OUTPUTS
    committed = json.loads(git(repo, "show", "HEAD:outputs/eval/metrics.json"))
    assert list(committed) == list(names.DVC_METRICS)  # two seeds: means, ± and n

    (diff,) = json.loads(dvc(repo, "exp", "diff", "HEAD", "s2", "--all", "--json"))["metrics"].values()
    assert {key: change["old"] for key, change in diff.items()} == committed
    means = [key for key in diff if not key.endswith(names.CI_SUFFIX)]  # s2 has one seed: no interval
    assert means and all(diff[key]["new"] is not None and diff[key]["diff"] == pytest.approx(
        diff[key]["new"] - diff[key]["old"]) for key in means)
    (metrics_diff,) = json.loads(dvc(repo, "metrics", "diff", "HEAD", "s2", "--all", "--json")).values()
    assert metrics_diff == diff

    head = git(repo, "rev-parse", "HEAD").strip()
    (baseline,) = [row for row in json.loads(dvc(repo, "exp", "show", "--json")) if row["rev"] == head]
    assert baseline["data"]["metrics"]["outputs/eval/metrics.json"]["data"] == committed
    (s2,) = [experiment for experiment in baseline["experiments"] if experiment["name"] == "s2"]
    (shown,) = s2["revs"]
    assert shown["data"]["metrics"]["outputs/eval/metrics.json"]["data"] == {
        key: change["new"] for key, change in diff.items() if change["new"] is not None}

    # The result stages' curves come from git too; only what DVC caches is missing.
    plots = subprocess.run([sys.executable, "-m", "dvc", "plots", "diff", "HEAD", "s2", "--json"], cwd=repo,
                           capture_output=True, text=True)
    missing = {error["source"] for error in json.loads(plots.stdout[plots.stdout.index("{"):])["errors"]}
    assert missing and not missing & {*COMMITTED_OUTPUTS, str(paths.VAE_HISTORY), str(paths.GAN_HISTORY)}, missing


@pytest.mark.slow
def test_queued_sweep_with_two_workers_records_one_row_per_seed(workspace):
    """A sweep over two seeds at another beta, split one seed per experiment (`--seeds-per-task
    1`, as over many machines), after `dvc repro` (as a user's sweep starts after the quick start):
    two queue workers run the experiments at once into one SQLite store: every seed leaves its
    complete row, none lost, none twice, the shared stages are not run again, and the seeds of the
    two experiments pool under one summary run. (Which experiments a sweep makes of several betas
    and seeds, and that it runs the shared stages first: the tests after it.)"""
    repo = workspace
    head = git(repo, "rev-parse", "HEAD").strip()
    sweep = ("pipeline.tools.sweep", "--latent-dims", "2", "--betas", "0.5", "--seeds", "0", "1", "--seeds-per-task",
             "1", "--jobs", "2")
    out = run_module(repo, *sweep)
    assert "sweep of 2 experiments with 2 worker(s)" in out
    rows = swept_rows(repo)
    points = sorted((r.data.params["latent_dim"], r.data.params["vae.beta"], r.data.params["seed"]) for r in rows)
    assert points == [("2", "0.5", "0"), ("2", "0.5", "1")]  # none lost, none twice
    threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for run in rows:
        assert run.info.status == "FINISHED"
        assert run.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"
        assert run.data.tags["dvc.exp_name"].startswith("sweep-")
        assert run.data.tags["dvc.exp_name"].endswith(f"-ld2-beta0.5-s{run.data.params['seed']}")
        assert run.data.tags["dvc.baseline_rev"] == head
        assert run.data.tags["pipeline.threads"] == threads
    # The two seeds are one configuration: one summary run with their mean and interval, both nested under it.
    (summary,) = [run for run in mlflow_runs(repo / "mlflow.db", "mnist5k", summaries=True)
                  if run.data.params["latent_dim"] == "2"]
    assert {run.data.tags["mlflow.parentRunId"] for run in rows} == {summary.info.run_id}
    assert summary.data.tags["pipeline.seeds"] == "0,1" and summary.info.status == "FINISHED"
    assert summary.data.params["vae.beta"] == "0.5"
    fid = "eval/scores/vae_prior/fid"
    values = [run.data.metrics[fid] for run in rows]
    assert summary.data.metrics[fid] == pytest.approx(sum(values) / 2)
    assert summary.data.metrics[f"{fid}/ci95_low"] < min(values) < max(values) < summary.data.metrics[f"{fid}/ci95_high"]
    assert summary.data.metrics[f"{fid}/n"] == 2
    assert re.search(r"ld2-beta0\.5-\w{8} +2 +0\.5 +2 ", out)  # the configuration's line: latent_dim 2, beta 0.5, n 2
    # No queue worker is left behind: one would hold this test's pipes open for good.
    assert queue_sweep.read_queue(repo).workers == []
    # The shared stages ran once, in the workspace (its `dvc repro`), not once per experiment.
    assert len(mlflow_runs(repo / "mlflow.db", "datasets")) == 1
    assert len(mlflow_runs(repo / "mlflow.db", "classifiers")) == 1
    table = list(csv.DictReader((repo / "outputs" / "sweep.csv").open()))
    assert sorted(row["run_id"] for row in table) == sorted(run.info.run_id for run in rows)
    assert "Success" in dvc(repo, "queue", "status")

    # The same points again: DVC restores every stage from its run cache, records nothing new,
    # and the sweep reports the rows that already hold those results.
    out = run_module(repo, *sweep)
    assert out.count("computed before (DVC reused those outputs and ran nothing)") == 2
    assert len(mlflow_runs(repo / "mlflow.db", "mnist5k", summaries=True)) == 2  # updated, not made again
    assert len(swept_rows(repo)) == 2
    again = list(csv.DictReader((repo / "outputs" / "sweep.csv").open()))
    assert sorted(row["run_id"] for row in again) == sorted(row["run_id"] for row in table)


def swept_rows(repo):
    """The sweep's result rows: latent_dim 2 (the workspace's own `dvc repro` made latent_dim 4's)."""
    return [run for run in mlflow_runs(repo / "mlflow.db", "mnist5k") if run.data.params["latent_dim"] == "2"]


def test_the_queue_executor_runs_the_shared_stages_once_then_queues_each_point(monkeypatch):
    """The DVC commands the executor gives, in order, with the queue itself stood in for: the
    shared stages first, in the workspace (so that no experiment computes them again), then one
    queued experiment per point with its settings, then the workers with their threads."""
    given, started = [], []
    monkeypatch.setattr(queue_sweep, "dvc", lambda *args, env: given.append(args))
    monkeypatch.setattr(queue_sweep, "start_workers", lambda jobs, env: started.append((jobs, env["PIPELINE_THREADS"])))
    monkeypatch.setattr(queue_sweep, "follow", lambda names, look, restart: dict.fromkeys(names, "Success"))
    monkeypatch.setattr(queue_sweep, "stop_idle_workers", lambda look: [])
    tasks = {"sweep-a-ld2": ("latent_dim=2", "seeds=[0,1]"), "sweep-a-ld8": ("latent_dim=8", "seeds=[0,1]")}
    how = queue_sweep.execute(tasks, config=None, env={}, jobs=2, threads=1)
    assert given == [("repro", "download", "train_classifier"),
                     ("exp", "run", "--queue", "--quiet", "-n", "sweep-a-ld2", "-S", "latent_dim=2", "-S", "seeds=[0,1]"),
                     ("exp", "run", "--queue", "--quiet", "-n", "sweep-a-ld8", "-S", "latent_dim=8", "-S", "seeds=[0,1]")]
    assert started == [(2, "1")] and how == "2 worker(s), 1 thread(s) each"


def test_a_sweep_makes_one_experiment_per_configuration_with_its_seeds():
    """Every (latent_dim, beta) of the grid is one DVC experiment with all its seeds, named after
    its values, and sets exactly those values; with --seeds-per-task, its seeds are split over
    several experiments, named after their first seed."""
    from pipeline.tools.sweep import experiment_names, seed_groups, settings

    names = experiment_names("1203-120000", [2, 8], [0.5, 2.0], seed_groups([0, 1, 2], None))
    assert len(names) == 4 and len(set(names.values())) == 4
    assert names[(8, 0.5, (0, 1, 2))] == "sweep-1203-120000-ld8-beta0.5"
    assert settings((8, 0.5, (0, 1, 2))) == ("latent_dim=8", "vae.beta=0.5", "seeds=[0,1,2]")
    assert experiment_names("1203-120000", [2], None, [(0,)]) == {(2, None, (0,)): "sweep-1203-120000-ld2"}
    assert settings((2, None, (0,))) == ("latent_dim=2", "seeds=[0]")

    assert seed_groups([0, 1, 2, 3, 4], 2) == [(0, 1), (2, 3), (4,)]
    split = experiment_names("1203-120000", [8], None, seed_groups([0, 1, 2, 3, 4], 2))
    assert split == {(8, None, (0, 1)): "sweep-1203-120000-ld8-s0", (8, None, (2, 3)): "sweep-1203-120000-ld8-s2",
                     (8, None, (4,)): "sweep-1203-120000-ld8-s4"}


class ScriptedQueue:
    """Stands in for `read_queue`: each look returns the next view, the last one for good."""

    def __init__(self, *views: QueueView):
        self.views, self.looks, self.restarts = list(views), 0, 0

    def look(self) -> QueueView:
        self.looks += 1
        return self.views.pop(0) if len(self.views) > 1 else self.views[0]

    def restart(self) -> None:
        self.restarts += 1


def follow(queue: ScriptedQueue, names=("a", "b"), **kwargs) -> dict[str, str]:
    return queue_sweep.follow(list(names), queue.look, queue.restart, poll=0, grace=0, sleep=lambda s: None, **kwargs)


def test_follow_waits_for_every_experiment_of_its_own_and_reports_the_final_status():
    queue = ScriptedQueue(QueueView({"a": "Queued", "b": "Queued"}, [10, 11]),
                          QueueView({"a": "Running", "b": "Running", "other": "Queued"}, [10, 11]),
                          QueueView({"a": "Success", "b": "Running", "other": "Queued"}, [10, 11]),
                          QueueView({"a": "Success", "b": "Failed", "other": "Running"}, [10, 11]))
    assert follow(queue) == {"a": "Success", "b": "Failed"}  # not waiting for `other`
    assert queue.looks == 4 and queue.restarts == 0


def test_follow_restarts_the_workers_when_they_stop_with_experiments_still_queued():
    queue = ScriptedQueue(QueueView({"a": "Success", "b": "Queued"}, []),  # DVC's workers quit early
                          QueueView({"a": "Success", "b": "Queued"}, []),
                          QueueView({"a": "Success", "b": "Running"}, [12]),
                          QueueView({"a": "Success", "b": "Success"}, []))
    assert follow(queue) == {"a": "Success", "b": "Success"}
    assert queue.restarts == 1


@pytest.mark.parametrize("view, message", [
    (QueueView({"a": "Success", "b": "Running"}, []), "the queue worker running b is gone, so it will never finish"),
    (QueueView({"a": "Success"}, []), "no longer in DVC's queue (removed?): b"),
    (QueueView({"a": "Queued", "b": "Queued"}, []), "DVC's queue workers stopped 3 times with a, b still queued"),
])
def test_follow_stops_with_an_error_rather_than_wait_for_an_experiment_no_worker_will_finish(view, message):
    queue = ScriptedQueue(view)
    with pytest.raises(SweepError) as error:
        follow(queue, restarts=2)
    assert message in str(error.value)
    assert queue.restarts == (2 if "stopped" in message else 0)


def test_stop_idle_workers_ends_the_workers_left_once_the_queue_is_idle_and_leaves_a_busy_queue_alone():
    sent = []
    idle = ScriptedQueue(QueueView({"a": "Success", "b": "Failed"}, [10, 11]), QueueView({"a": "Success"}, [11]),
                         QueueView({"a": "Success"}, []))
    assert queue_sweep.stop_idle_workers(idle.look, kill=lambda pid, sig: sent.append((pid, sig)),
                                         sleep=lambda s: None) == []
    assert sent == [(10, signal.SIGTERM), (11, signal.SIGTERM)] and idle.looks == 3

    busy = ScriptedQueue(QueueView({"a": "Success", "other": "Queued"}, [10]))
    assert queue_sweep.stop_idle_workers(busy.look, kill=lambda pid, sig: sent.append(pid), sleep=lambda s: None) == []
    assert len(sent) == 2  # nothing more

    stubborn = ScriptedQueue(QueueView({"a": "Success"}, [10]))
    assert queue_sweep.stop_idle_workers(stubborn.look, kill=lambda pid, sig: None, wait=0.05, poll=0.01) == [10]


@pytest.mark.slow
def test_read_queue_counts_the_workers_whose_process_is_alive(repo):
    dvc(repo, "exp", "run", "--queue", "-n", "waiting", "-S", "latent_dim=3")
    celery = repo / ".dvc" / "tmp" / "exps" / "celery"
    ended = subprocess.Popen(["true"])
    ended.wait()
    for number, pid, returncode in ((1, os.getpid(), None), (2, ended.pid, None), (3, os.getpid(), 0)):
        (celery / f"dvc-exp-worker-{number}.json").write_text(json.dumps(
            {"pid": pid, "stdin": None, "stdout": None, "stderr": None, "returncode": returncode}))
    view = queue_sweep.read_queue(repo)
    assert view.states == {"waiting": "Queued"}
    assert view.workers == [os.getpid()]  # not the process that ended, nor the one with an exit code


@pytest.mark.slow
def test_a_real_worker_is_seen_while_it_runs_and_ended_once_the_queue_is_idle(repo, monkeypatch):
    monkeypatch.chdir(repo)
    queue_sweep.start_workers(1, dict(os.environ))  # an empty queue: DVC's own check would end it after 10 s
    deadline = time.monotonic() + 30
    while not (workers := queue_sweep.read_queue(repo).workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers) == 1
    assert queue_sweep.stop_idle_workers(lambda: queue_sweep.read_queue(repo)) == []
    assert not process_alive(workers[0])


@pytest.mark.parametrize("args, message", [
    (["--latent-dims", "0", "4"], "latent_dim = 0 is not allowed"),
    (["--latent-dims", "4", "4"], "latent_dim values [4] are given more than once"),
    (["--latent-dims", "4", "--betas", "1", "-1"], "vae.beta = -1.0 is not allowed"),
    (["--latent-dims", "4", "--betas", "2", "2"], "vae.beta values [2.0] are given more than once"),
    (["--latent-dims", "4", "--seeds", "0", "-1"], "seeds = [0, -1] is not allowed"),
    (["--latent-dims", "4", "--seeds", "3", "3"], "seeds values [3] are given more than once"),
    (["--latent-dims", "4", "--seeds-per-task", "0"], "--seeds-per-task must be at least 1"),
])
def test_sweep_refuses_bad_values_before_queueing_anything(repo, args, message):
    """In this process, as `python -m` runs it (conftest.run_in_process)."""
    from conftest import run_in_process

    result = run_in_process(repo, "sweep", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (repo / "mlflow.db").exists() and not (repo / "outputs").exists()
    assert git(repo, "for-each-ref", "refs/exps") == ""  # nothing queued: DVC keeps its queue under refs/exps


@pytest.mark.slow
def test_outputs_pushed_to_a_dvc_remote_restore_a_fresh_clone(workspace, tmp_path):
    repo = workspace
    dvc(repo, "remote", "add", "-d", "storage", str(tmp_path / "remote"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "results and their remote")
    dvc(repo, "push")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert sorted(str(path.relative_to(clone)) for path in (clone / "outputs").rglob("*") if path.is_file()) == (
        COMMITTED_OUTPUTS)  # what git keeps; DVC's outputs come from the remote
    dvc(clone, "pull")
    for path in (paths.VAE_CHECKPOINTS / "seed-0.pt", paths.GAN_METRICS, paths.EVAL_METRICS,
                 paths.EVAL_FIGURES / "seed-1" / "reconstructions.png"):
        assert (clone / path).read_bytes() == (repo / path).read_bytes()
    assert "Data and pipelines are up to date" in dvc(clone, "repro")
    assert not (clone / "mlflow.db").exists()  # nothing ran, so nothing was recorded


@pytest.mark.slow
def test_sweep_names_an_experiment_that_failed(workspace):
    # Valid by the params' rules, but the VAE's training diverges: train_vae, in the queued
    # experiment, refuses (the shared stages, download and the classifier, are up to date).
    repo = workspace
    params = merged(yaml.safe_load((repo / "params.yaml").read_text()), {"vae": {"learning_rate": 1e30}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "pipeline.tools.sweep", "--latent-dims", "2"], cwd=repo,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(r"sweep: error: sweep-\S+-ld2 left no complete result \(see `dvc queue logs sweep-", result.stderr)
    assert not (repo / "outputs" / "sweep.csv").exists()
