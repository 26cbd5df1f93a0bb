"""Where runs are stored, and how stage executions map onto MLflow rows (one row per result)."""

from __future__ import annotations

import mlflow
import pytest

from conftest import repo_params
from pipeline import tracking
from pipeline.config import parse_config


def test_store_defaults_to_the_project_root_and_follows_dvc_root(project, monkeypatch, tmp_path_factory):
    assert tracking.tracking_uri() == f"sqlite:///{project.root.resolve()}/mlflow.db"
    elsewhere = tmp_path_factory.mktemp("dvc-root")
    monkeypatch.setenv("DVC_ROOT", str(elsewhere))
    assert tracking.tracking_uri() == f"sqlite:///{elsewhere.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999"


@pytest.fixture
def record(project, monkeypatch):
    """Record a fake stage execution; returns its run id. Stages here stand in for later ones."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.store}")
    config = parse_config(repo_params())

    def record(stage: str, metric: float, upstream: str | None = None, params: dict | None = None, fail=False):
        prefix = tracking.STAGE_METRIC_PREFIX[stage]
        with tracking.stage_run(stage, config, experiment="rows", run_name=f"{stage}-run",
                                params=params, upstream_run_id=upstream) as active:
            mlflow.log_metric(f"{prefix}/score", metric, step=1)
            if fail:
                raise RuntimeError("stage failed")
        return active.info.run_id

    return record


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

    monkeypatch.setattr(tracking, "_copy_upstream", broken_copy)
    with pytest.raises(RuntimeError, match="mid-copy"):
        record("train_gan", 3.0, upstream=vae)
    statuses = sorted(run.info.status for run in rows(project).values())
    assert statuses == ["FAILED", "FINISHED"]  # the new row is not left RUNNING
