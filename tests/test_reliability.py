"""Bad input and faults: every refusal says what is wrong, exits non-zero and writes nothing.

Bad input: each case below runs one stage, as DVC would, on a tiny project whose earlier stages
have run, and checks the exit code (2), the message, that no output changed and that no MLflow
row was added. Cases: params (wrong type, out of range, a typo with its nearest key, unknown
dataset and architecture, CUDA without CUDA, credentials in data.mirror), data (missing,
truncated, checksum mismatch, wrong shape, wrong dtype/range, a class missing from a split),
checkpoints (missing, truncated, foreign, a pickle that would run code, another latent_dim),
MLflow (unreachable server, with its password kept out of the message; read-only store).

Faults: Ctrl-C, SIGTERM and SIGKILL in the middle of a stage leave no output of it, its MLflow
row ends KILLED (at once, or at the next stage's start when the process could not end it
itself), and the next run succeeds. A diverging training stops naming the epoch and the term;
the same params and seed give the same bytes. Two queue workers at once record every run.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, UP_TO_GAN, Project, free_port, mlflow_runs, module_of, tiny_project
from test_download import served_mnist  # noqa: F401  (a fixture: MNIST files served on 127.0.0.1)

from pipeline.stages import paths
from pipeline.tools import sweep

LONG = {"vae": {"epochs": 100_000}}  # a training still running when the signal comes


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Project:
    """A tiny project whose stages up to the GAN have run (each stage runs without DVC's and
    MLflow's variables: Project.stage clears them)."""
    return tiny_project(tmp_path_factory.mktemp("upstream"), UP_TO_GAN)


def state(project: Project) -> tuple[dict, int]:
    files = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (project.root / "outputs").rglob("*")}
    return files, len(project.runs())


@contextlib.contextmanager
def replaced(path: Path, damage):
    """`damage(path)` for the block; the file's bytes are put back afterwards."""
    original = path.read_bytes()
    try:
        damage(path)
        yield
    finally:
        path.write_bytes(original)


def rewrite_splits(change):
    def damage(path: Path) -> None:
        with np.load(path) as stored:
            arrays = {key: stored[key] for key in stored.files}
        change(arrays)
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
    return damage


def drop_class_9(arrays: dict) -> None:
    keep = arrays["y_test"] != 9
    arrays["x_test"], arrays["y_test"] = arrays["x_test"][keep], arrays["y_test"][keep]


class RunsCode:
    """Unpickling this would create the file `marker`: what weights_only loading must refuse."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


SPLITS, VAE = paths.SPLITS, paths.VAE_CHECKPOINT
BAD_INPUT = {
    # case: (stage, params override, damaged file and damage, message)
    "params: wrong type": ("train_vae", {"vae": {"epochs": "many"}}, None,
                           "vae.epochs = 'many' is not allowed; expected an integer >= 1"),
    "params: out of range": ("train_vae", {"latent_dim": 0}, None, "latent_dim = 0 is not allowed"),
    "params: typo": ("train_vae", {"latent_dm": 8}, None, "unknown key 'latent_dm'; did you mean 'latent_dim'?"),
    "params: unknown dataset": ("download", {"data": {"name": "cifar10"}}, None,
                                "data.name = 'cifar10' is not allowed; expected one of: mnist5k"),
    "params: unknown architecture": ("train_vae", {"vae": {"architecture": "transformer"}}, None,
                                     "vae.architecture = 'transformer' is not allowed; expected one of: mlp, conv"),
    "params: cuda without CUDA": ("train_vae", {"device": "cuda"}, None, "this machine has no CUDA device"),
    "params: password in data.mirror": ("download", {"data": {"name": "mnist", "mirror": "https://me:s3cret@host/"}},
                                        None, "data.mirror holds a user name or password"),
    "data: missing": ("train_vae", None, (SPLITS, Path.unlink), "does not exist; run `dvc repro download` first"),
    "data: truncated": ("train_vae", None, (SPLITS, lambda p: p.write_bytes(p.read_bytes()[:1000])),
                        "could not be read"),
    "data: wrong shape": ("train_vae", None, (SPLITS, rewrite_splits(lambda a: a.update(x_train=a["x_train"][:, 0]))),
                          "expected uint8 images of shape (N, C, H, W)"),
    "data: wrong value range": ("train_vae", None,
                                (SPLITS, rewrite_splits(lambda a: a.update(x_train=a["x_train"] / 255.0))),
                                "expected uint8 images"),
    "data: a class missing from a split": ("train_vae", None, (SPLITS, rewrite_splits(drop_class_9)),
                                           "test split has no images of class(es) [9]"),
    "checkpoint: missing": ("train_gan", None, (VAE, Path.unlink), "does not exist; run `dvc repro train_vae` first"),
    "checkpoint: truncated": ("train_gan", None, (VAE, lambda p: p.write_bytes(p.read_bytes()[:500])),
                              "could not be read as a checkpoint"),
    "checkpoint: foreign": ("train_gan", None, (VAE, lambda p: p.write_bytes(paths.CLASSIFIER_CHECKPOINT.read_bytes())),
                            "is not a vae checkpoint; rerun `dvc repro -f train_vae`"),
    "checkpoint: runs code when unpickled": ("train_gan", None, (VAE, lambda p: torch.save(RunsCode("pwned"), p)),
                                             "could not be read as a checkpoint"),
    "checkpoint: another latent_dim": ("train_gan", {"latent_dim": 8}, None,
                                       "has latent_dim 4 but params.yaml says 8; rerun `dvc repro train_vae`"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_refused_with_its_message_and_nothing_written(upstream, monkeypatch, case):
    stage, override, damaged, message = BAD_INPUT[case]
    if "CUDA" in case and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(upstream.root)
    upstream.write_params(override)
    damage = replaced(upstream.root / damaged[0], damaged[1]) if damaged else contextlib.nullcontext()
    try:
        with damage:
            before = state(upstream)
            result = upstream.stage(stage, check=False)
            assert state(upstream) == before  # no output written, no MLflow row added
    finally:
        upstream.write_params()
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert not (upstream.root / "pwned").exists()


def test_a_download_whose_checksum_does_not_match_is_refused(served_mnist, project, monkeypatch):  # noqa: F811
    """data: checksum mismatch (the files served on 127.0.0.1, one of them tampered with)."""
    from test_download import with_store

    from pipeline.core.errors import DataError

    url, folder, _ = served_mnist
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"tampered"))
    project.write_params({"data": {"name": "mnist", "mirror": url}})
    with pytest.raises(DataError) as error:
        with_store(project, monkeypatch)
    message = str(error.value)
    assert f"could not download 'mnist' from {url}" in message
    assert "File not found or corrupted" in message  # torchvision's checksum failure
    assert "data.name=mnist5k" in message
    assert project.files() == [] and project.runs() == []


@pytest.mark.slow
def test_an_unreachable_server_is_named_without_its_password(upstream):
    before = state(upstream)
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    result = upstream.stage("train_vae", check=False, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 2 and "http://***@127.0.0.1" in result.stderr and "is unreachable" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert state(upstream) == before


def test_the_ui_and_the_app_bind_to_this_machine_only():
    """Security: `make ui`, `make app` and a plain `streamlit run` listen on 127.0.0.1 (the README
    says how to expose them, and what that exposes)."""
    makefile = (REPO / "Makefile").read_text()
    ui = makefile[makefile.index("\nui:"):].split("\n\n")[0]
    app = makefile[makefile.index("\napp:"):].split("\n\n")[0]
    assert "--host 127.0.0.1" in ui and "--server.address 127.0.0.1" in app
    assert 'address = "127.0.0.1"' in (REPO / ".streamlit" / "config.toml").read_text()


@pytest.mark.slow
def test_a_read_only_store_is_refused_before_any_work(upstream):
    before = state(upstream)
    uri = f"sqlite:///file:{upstream.store}?mode=ro&uri=true"  # the store, opened read-only
    result = upstream.stage("train_vae", check=False, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 2, result.stderr
    assert "could not be used: attempt to write a readonly database" in result.stderr
    assert "Traceback" not in result.stderr and state(upstream) == before


@pytest.mark.slow
def test_a_diverging_training_stops_naming_epoch_and_term_and_writes_nothing(upstream):
    """NaN or inf in training: exit 2 with the epoch and the loss term; no output, and the row of
    the attempt ends FAILED (not left running)."""
    before_files, before_rows = state(upstream)
    upstream.write_params({"vae": {"learning_rate": 1e30}})
    try:
        result = upstream.stage("train_vae", check=False)
    finally:
        upstream.write_params()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert re.search(r"epoch \d+: the training loss term '\w+' became (nan|inf)", result.stderr), result.stderr
    files, rows = state(upstream)
    assert files == before_files and rows == before_rows + 1
    newest = max(upstream.runs("mnist5k"), key=lambda r: r.info.start_time)
    assert newest.info.status == "FAILED"


@pytest.mark.slow
def test_the_same_params_and_seed_give_the_same_bytes(upstream):
    """Two runs of a training stage on CPU: identical checkpoint and metrics, bit for bit."""
    outputs = [paths.VAE_CHECKPOINT, paths.VAE_METRICS, paths.VAE_HISTORY]
    upstream.stage("train_vae")
    first = {p: (upstream.root / p).read_bytes() for p in outputs}
    upstream.stage("train_vae")
    assert {p: (upstream.root / p).read_bytes() for p in outputs} == first


# ---------------------------------------------------------------------------------------------
# Interruptions


def start_stage(project, name: str) -> tuple[subprocess.Popen, object]:
    """`python -m pipeline.<name>` in the background, as Project.stage runs it, output to a log."""
    log = open(project.root / f"{name}.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", module_of(name)], cwd=project.root, stdout=log,
                               stderr=subprocess.STDOUT, env=project.environment())
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


@pytest.mark.slow
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
    # The interrupt can land inside one of MLflow's own writes and leave the store locked for the
    # stage; then it says so and the next stage closes the row, as after a SIGKILL (store.end_killed).
    deferred = "could not be marked KILLED" in output
    assert row.info.status == ("RUNNING" if deferred else "KILLED")

    project.write_params()
    project.stage("train_vae")
    assert sorted(r.info.status for r in vae_rows(project)) == ["FINISHED", "KILLED"]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_two_queue_workers_at_once_record_every_run(repo):
    """Two `dvc exp run` workers running at once (DVC's queue, `-j 2`) into one SQLite store: every
    experiment leaves its complete row, none lost, none twice."""
    environment = {**os.environ, "PIPELINE_THREADS": "1"}
    log = repo.parent / "dvc.log"

    def dvc(*args: str) -> None:
        # Output to a file, not a pipe: `--run-all` hands it to the queue workers, and one that
        # misses DVC's idle shutdown would keep a pipe open, and this test waiting, for good.
        with log.open("w") as output:
            result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, stdout=output,
                                    stderr=subprocess.STDOUT, env=environment)
        assert result.returncode == 0, log.read_text()

    for value in (2, 3, 5):
        dvc("exp", "run", "--queue", "-n", f"concurrent-ld{value}", "-S", f"latent_dim={value}")
    dvc("exp", "run", "--run-all", "-j", "2")
    assert sweep.stop_idle_workers(lambda: sweep.read_queue(repo)) == []
    rows = mlflow_runs(repo / "mlflow.db", "mnist5k")
    assert sorted(r.data.params["latent_dim"] for r in rows) == ["2", "3", "5"]
    assert all(r.info.status == "FINISHED" and r.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"
               for r in rows)
    assert {r.data.tags["dvc.exp_name"] for r in rows} == {"concurrent-ld2", "concurrent-ld3", "concurrent-ld5"}
