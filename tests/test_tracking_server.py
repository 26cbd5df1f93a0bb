"""A team's MLflow server: the pipeline records into a real `mlflow server` on 127.0.0.1 (SQLite
backend, artifacts served by the server) and the run reads back over HTTP; an unreachable server
stops a stage at once, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from conftest import UP_TO_GAN, free_port, tiny_project

from pipeline.stages import paths
from pipeline.tools.local_cluster import ClusterError, mlflow_server
from pipeline.tracking import names


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `mlflow server` in the background; yields (url, its folder); stopped afterwards."""
    root = tmp_path_factory.mktemp("mlflow-server")
    try:
        with mlflow_server(f"sqlite:///{root / 'backend.db'}", root / "artifacts", workers=1) as url:
            yield url, root
    except ClusterError as error:
        pytest.fail(str(error))


@pytest.mark.slow
def test_pipeline_records_everything_into_a_tracking_server(server, tmp_path):
    url, server_root = server
    project = tiny_project(tmp_path, ())
    for stage in (*UP_TO_GAN, "evaluate"):
        project.call(stage, check=True, env={"MLFLOW_TRACKING_URI": url})
    assert not project.store.exists() and not (tmp_path / "mlartifacts").exists()  # nothing stayed local

    client = mlflow.MlflowClient(tracking_uri=url)  # read back over HTTP
    runs = client.search_runs([client.get_experiment_by_name("mnist5k").experiment_id])
    (summary,) = [run for run in runs if "pipeline.summary_of" in run.data.tags]
    rows = {run.data.params["seed"]: run for run in runs if run is not summary}
    assert sorted(rows) == ["0", "1"]
    details = json.loads((tmp_path / paths.EVAL_DETAILS).read_text())
    for seed, row in rows.items():
        assert row.info.status == "FINISHED" and row.data.params["latent_dim"] == "4"
        assert row.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"
        assert row.data.tags["mlflow.parentRunId"] == summary.info.run_id
        assert row.data.metrics["eval/vae/kl"] == details[seed]["vae"]["kl"]
        assert row.data.metrics["eval/scores/gan_decoder/fid"] == details[seed]["scores"]["gan_decoder"]["fid"]
    headline = json.loads((tmp_path / paths.EVAL_METRICS).read_text())  # DVC's metrics: the headline only
    assert list(headline) == list(names.DVC_METRICS)
    assert headline["fid_decoder"] == pytest.approx(summary.data.metrics["eval/scores/gan_decoder/fid"])
    assert len(client.search_runs([client.get_experiment_by_name("datasets").experiment_id])) == 1

    # Artifacts went through the server into its artifact store, and come back byte for byte.
    row = rows["0"]
    figure = Path(client.download_artifacts(row.info.run_id, "eval/reconstructions.png", str(tmp_path / "back")))
    assert figure.read_bytes() == (tmp_path / paths.EVAL_FIGURES / "seed-0" / "reconstructions.png").read_bytes()
    stored = sorted(p.read_bytes() for p in (server_root / "artifacts").rglob("eval/reconstructions.png"))
    assert stored == sorted((tmp_path / paths.EVAL_FIGURES / f"seed-{seed}" / "reconstructions.png").read_bytes()
                            for seed in (0, 1))


@pytest.mark.slow
def test_an_unreachable_server_stops_a_stage_at_once_and_nothing_is_written(tmp_path):
    project = tiny_project(tmp_path, ("download",))  # recorded in the local store
    before = project.files()
    unreachable = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    for stage in ("train_vae", "download"):
        # MLflow's client alone would retry for minutes (pytest.ini's timeout turns a hang into a failure).
        result = project.call(stage, env=unreachable)
        assert result.returncode == 2, result.stderr
        assert f"MLflow tracking server {unreachable['MLFLOW_TRACKING_URI']} is unreachable" in result.stderr
        assert "Traceback" not in result.stderr
        assert project.files() == before
    assert len(project.runs()) == 1
