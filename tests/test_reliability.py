"""Interrupted stages (issue 9, faults): Ctrl-C, SIGTERM and SIGKILL in the middle of a stage
leave no output of it, its MLflow row ends KILLED (at once, or at the next stage's start when the
process could not end it itself), and the next run succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import OUTSIDE_VARIABLES, REPO, mlflow_runs

LONG = {"vae": {"epochs": 100_000}}  # a training still running when the signal comes


def start_stage(project, name: str) -> tuple[subprocess.Popen, object]:
    clean = {k: v for k, v in os.environ.items() if k not in OUTSIDE_VARIABLES}
    log = open(project.root / f"{name}.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", f"pipeline.{name}"], cwd=project.root, stdout=log,
                               stderr=subprocess.STDOUT, env={**clean, "PYTHONPATH": str(REPO)})
    return process, log


def wait_for_line(process: subprocess.Popen, log, text: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        log.seek(0)
        if text in log.read():
            return
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"the stage ended ({process.returncode}) before {text!r}:\n{log.read()}")
        time.sleep(0.2)
    pytest.fail(f"no {text!r} within {seconds} s")


def vae_rows(project):
    return [r for r in project.runs("mnist5k") if r.data.tags.get("pipeline.stage") == "train_vae"]


@pytest.mark.parametrize("signum, exit_code, said", [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "terminated")])
def test_an_interrupted_stage_ends_its_row_killed_and_writes_nothing(project, signum, exit_code, said):
    project.stage("download")
    project.write_params(LONG)
    process, log = start_stage(project, "train_vae")
    wait_for_line(process, log, "epoch 2/")
    process.send_signal(signum)
    assert process.wait(timeout=60) == exit_code
    log.seek(0)
    output = log.read()
    assert f"train_vae: {said}" in output and "Traceback" not in output
    assert not (project.root / "outputs" / "vae").exists()  # not even a temporary file
    [row] = vae_rows(project)
    assert row.info.status == "KILLED"

    project.write_params()
    project.stage("train_vae")
    assert sorted(r.info.status for r in vae_rows(project)) == ["FINISHED", "KILLED"]


def test_a_stage_killed_outright_leaves_no_output_and_the_next_run_marks_its_row_killed(project):
    project.stage("download")
    project.write_params(LONG)
    process, log = start_stage(project, "train_vae")
    wait_for_line(process, log, "epoch 2/")
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (project.root / "outputs" / "vae").exists()
    [row] = vae_rows(project)
    assert row.info.status == "RUNNING" and row.data.tags["pipeline.pid"] == str(process.pid)

    project.write_params()
    result = project.stage("train_vae")
    assert f"MLflow row {row.info.run_id} was left RUNNING by process {process.pid}" in result.stderr
    statuses = {r.info.run_id: r.info.status for r in vae_rows(project)}
    assert statuses.pop(row.info.run_id) == "KILLED" and list(statuses.values()) == ["FINISHED"]


def test_a_running_stage_of_a_live_process_is_left_alone(project):
    """A second process recording into the experiment (a queue worker, say) must not close the
    row of a stage that is still running."""
    project.stage("download")
    project.write_params(LONG)
    process, log = start_stage(project, "train_vae")
    try:
        wait_for_line(process, log, "epoch 2/")
        project.write_params({"latent_dim": 2})
        project.stage("train_vae")
        running = [r for r in vae_rows(project) if r.data.tags["pipeline.pid"] == str(process.pid)]
        assert [r.info.status for r in running] == ["RUNNING"]
    finally:
        process.kill()
        process.wait(timeout=60)


def test_dvc_repro_killed_mid_pipeline_then_rerun_succeeds(repo):
    """SIGKILL to `dvc repro` and its stage (the process group) during the GAN stage: the rerun
    redoes that stage from a clean state, the killed attempt's row ends KILLED, and one complete
    result row stands."""
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gan"]["epochs"] = 100_000
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = open(repo / "repro.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    wait_for_line(process, log, "decoder epoch 2/", seconds=300)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (repo / "outputs" / "gan").exists() or not any((repo / "outputs" / "gan").glob("generators/*.pt"))

    params["gan"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = mlflow_runs(repo / "mlflow.db", "mnist5k")
    assert sorted(r.info.status for r in rows) == ["FINISHED", "KILLED"]
    [complete] = [r for r in rows if r.info.status == "FINISHED"]
    assert complete.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"
