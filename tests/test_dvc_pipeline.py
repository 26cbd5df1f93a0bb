"""The pipeline as users drive it: `dvc repro`, a no-op repro, `dvc exp run -S latent_dim=8`,
`dvc exp show`, in a temporary git repository made from this project's sources."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY, copy_repo, merge, mlflow_runs, repo_params
from pipeline import paths


def test_dvc_yaml_declares_every_path_the_stages_write_and_only_known_params():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

    def declared(stage):
        entries = dvc[stage].get("outs", []) + dvc[stage].get("metrics", []) + dvc[stage].get("plots", [])
        return {next(iter(e)) if isinstance(e, dict) else e for e in entries}

    assert declared("download") == {str(paths.SPLITS), str(paths.FACTS)}
    assert declared("train_vae") == {str(p) for p in (paths.VAE_CHECKPOINT, paths.VAE_RUN, paths.VAE_METRICS,
                                                       paths.VAE_HISTORY, paths.VAE_SAMPLES, paths.VAE_RECONSTRUCTIONS)}
    assert declared("train_classifier") == {str(p) for p in (paths.CLASSIFIER_CHECKPOINT, paths.CLASSIFIER_METRICS,
                                                              paths.CLASSIFIER_HISTORY)}
    assert declared("train_gan") == {str(p) for p in (paths.GAN_GENERATORS, paths.GAN_SAMPLES, paths.GAN_RUN,
                                                       paths.GAN_METRICS, paths.GAN_HISTORY)}
    assert declared("evaluate") == {str(p) for p in (paths.EVAL_FIGURES, paths.EVAL_RUN, paths.EVAL_METRICS,
                                                      paths.EVAL_KL_PER_DIM)}
    assert str(paths.SPLITS) in dvc["train_vae"]["deps"]
    assert {str(paths.VAE_CHECKPOINT), str(paths.VAE_RUN), str(paths.CLASSIFIER_CHECKPOINT)} <= set(dvc["train_gan"]["deps"])
    assert {str(paths.GAN_GENERATORS), str(paths.GAN_RUN)} <= set(dvc["evaluate"]["deps"])
    assert "latent_dim" not in dvc["train_classifier"]["params"]  # trained once, shared by every experiment
    params = repo_params()
    for stage in dvc.values():
        for name in stage.get("params", []):
            assert name in params, f"dvc.yaml names param {name!r} that params.yaml lacks"


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A committed git repository with the project's sources and tiny params."""
    root = copy_repo(tmp_path / "repo")
    (root / "dvc.lock").unlink(missing_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(merge(repo_params(), TINY), sort_keys=False))
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "PIPELINE_DATA_MIRROR"):
        monkeypatch.delenv(name, raising=False)
    # dvc.yaml's `python` must be this environment's, as `make` arranges for users.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
                       "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}.items():
        monkeypatch.setenv(key, value)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    return root


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def dvc(root, *args) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def result_rows(root):
    return {run.data.params["latent_dim"]: run for run in mlflow_runs(root / "mlflow.db", "mnist5k")}


def test_repro_then_experiment_gives_one_row_per_result(repo):
    dvc(repo, "repro")
    rows = result_rows(repo)
    assert list(rows) == ["4"] and rows["4"].info.status == "FINISHED"
    assert {"vae/test_neg_elbo", "gan/decoder/fid", "eval/scores/gan_decoder/fid"} <= set(rows["4"].data.metrics)
    assert rows["4"].data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"

    assert "Data and pipelines are up to date" in dvc(repo, "repro")
    assert len(mlflow_runs(repo / "mlflow.db")) == 3  # still one result, one dataset, one classifier record

    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first result")
    dvc(repo, "exp", "run", "-S", "latent_dim=8")
    rows = result_rows(repo)
    assert sorted(rows) == ["4", "8"]
    assert rows["8"].data.tags["dvc.exp_name"] not in ("", "workspace")
    assert rows["8"].data.tags["dvc.baseline_rev"] == git(repo, "rev-parse", "HEAD").strip()
    assert len(mlflow_runs(repo / "mlflow.db", "datasets")) == 1  # the data stage did not rerun
    assert len(mlflow_runs(repo / "mlflow.db", "classifiers")) == 1  # nor the classifier: no latent_dim in it

    table = list(csv.DictReader(io.StringIO(dvc(repo, "exp", "show", "--csv"))))
    by_latent = {row["latent_dim"]: row for row in table if row["typ"] != "baseline" or row["rev"] != "workspace"}
    assert set(by_latent) == {"4", "8"}
    assert float(by_latent["8"]["test_neg_elbo"]) == pytest.approx(rows["8"].data.metrics["vae/test_neg_elbo"])


def test_changing_a_gan_param_reruns_only_the_gan_and_evaluation(repo):
    dvc(repo, "repro")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gan"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = dvc(repo, "repro")
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    assert ran == {"train_gan", "evaluate"}
    # The new result gets its own row, which still carries the VAE's numbers it started from.
    (old, new) = sorted(mlflow_runs(repo / "mlflow.db", "mnist5k"), key=lambda r: r.info.start_time)
    assert new.data.params["gan.epochs"] == "1" and old.data.params["gan.epochs"] == "2"
    assert new.data.metrics["vae/test_neg_elbo"] == old.data.metrics["vae/test_neg_elbo"]
    assert new.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"
