"""Bad input and faults: every refusal says what is wrong, exits non-zero and writes nothing.

Bad input: each case below runs one stage on a copy of the tiny study (every stage has run), in
this process as `python -m` would (conftest.run_in_process: the process boundary is not what these
are about; test_config.py runs a refusal as a real process), and checks the exit code (2), the
message, that no output changed and that no MLflow row was added. Cases: params (wrong type, out
of range, a typo with its nearest key, unknown dataset and architecture, CUDA without CUDA,
credentials in data.mirror), data (missing, truncated, checksum mismatch, wrong shape, wrong
dtype/range, a class missing from a split),
checkpoints (missing, truncated, foreign, a pickle that would run code, another latent_dim),
MLflow (unreachable server, with its password kept out of the message; read-only store).

Faults: Ctrl-C, SIGTERM and SIGKILL in the middle of a stage leave no output of it, its MLflow
row ends KILLED (at once, or at the next stage's start when the process could not end it
itself), and the next run succeeds. A diverging training stops naming the epoch and the term.
(SIGKILL of a whole `dvc repro` is test_dvc_pipeline.py's; that the same params and seed give the
same bytes in a fresh process is test_train_vae.py's, and that two queue workers at once record
every run test_dvc_pipeline.py's sweep.)

Part two, each with the same checks (one line `<stage>: error: ...`, exit 2, no traceback, no
output changed, no row added unless it ended): a damaged store (random bytes, cut in half; also
for compare and report), a store locked past the wait (before any work, and in the middle of a
stage, whose row still ends FAILED) and one locked for less (waited for), stores that cannot work
(file:, a plain path, in-memory, a path under a file), a params file that is not UTF-8, a folder,
gives a key twice or is not YAML, sizes beyond the machine and sample counts below a meaningful score,
PIPELINE_THREADS beyond the cores, data too small for the evaluation (refused by download), an
allocation refused under an address-space limit, a full disk (tmpfs) and a read-only artifact
store (bind mount), both root only; a failure injected at each stage's last steps (store, disk,
SIGTERM) leaving every output folder byte for byte as it was; files with the user's umask. The
three silent cases: a `--temp` experiment's artifacts with a store of the user's choosing, an
experiment whose artifacts would be lost, and a refused `dvc exp run -S` during a `dvc repro`
(stopped within an epoch; with params changed between a DVC command's stages); markup in the
report: test_report.py.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, Project, copy_project, free_port, mlflow_runs, module_of, wait_for_line
from test_download import served_mnist  # noqa: F401  (a fixture: MNIST files served on 127.0.0.1)

from pipeline.stages import paths

LONG = {"vae": {"epochs": 100_000}}  # a training still running when the signal comes


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture(scope="module")
def upstream(study, tmp_path_factory) -> Project:
    """This module's copy of the tiny study: every stage has run (each stage runs without DVC's and
    MLflow's variables: Project.call and Project.stage clear them). Tests that damage a file put it
    back."""
    return Project(copy_project(study.root, tmp_path_factory.mktemp("upstream") / "project"))


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


def edit_checkpoint(change):
    def damage(path: Path) -> None:
        checkpoint = torch.load(path, weights_only=True)
        change(checkpoint)
        torch.save(checkpoint, path)
    return damage


def swap_seeds(path: Path) -> None:
    """A run file naming seed 1's row for seed 0 and the other way round (a stale or hand-made record)."""
    record = json.loads(path.read_text())
    record["runs"] = {"0": record["runs"]["1"], "1": record["runs"]["0"]}
    path.write_text(json.dumps(record))


def delete_seed_0_row(store: Path) -> None:
    """Seed 0's result row deleted in the MLflow UI (the store's bytes are put back afterwards)."""
    import mlflow

    row = json.loads((store.parent / paths.VAE_RUN).read_text())["runs"]["0"]
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}").delete_run(row)


SPLITS, VAE = paths.SPLITS, paths.VAE_CHECKPOINTS / "seed-0.pt"  # params.yaml's first seed
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
                                       "was trained with latent_dim = 4 where params.yaml says 8; "
                                       "rerun `dvc repro train_vae`"),
    "checkpoint: another vae param": ("train_gan", {"vae": {"hidden_dim": 64}}, None,
                                      "seed-0.pt was trained with vae.hidden_dim = 32 where params.yaml says 64; "
                                      "rerun `dvc repro train_vae`"),
    "checkpoint: another seed's": ("train_gan", None, (VAE, lambda p: p.write_bytes(p.with_name("seed-1.pt").read_bytes())),
                                   "seed-0.pt was trained with seed = 1 where params.yaml says 0"),
    "checkpoint: GANs of other gan params": ("evaluate", {"gan": {"epochs": 3}}, None,
                                             "decoder.pt was trained with gan.epochs = 2 where params.yaml says 3; "
                                             "rerun `dvc repro train_gan`"),
    "checkpoint: classifier of other params": ("train_gan", {"classifier": {"epochs": 2}}, None,
                                               "was trained with classifier.epochs = 1 where params.yaml says 2; "
                                               "rerun `dvc repro train_classifier`"),
    "checkpoint: random bytes": ("train_gan", None, (VAE, lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000))),
                                 "seed-0.pt could not be read as a checkpoint ("),
    "checkpoint: no architecture": ("train_gan", None, (VAE, edit_checkpoint(lambda c: c["config"].pop("architecture"))),
                                    "has no architecture.kind, architecture.image_shape"),
    "checkpoint: weights of other shapes": ("train_gan", None, (VAE, edit_checkpoint(
        lambda c: c["state_dict"].update({k: v[:-1] for k, v in list(c["state_dict"].items())[:1]}))),
        "seed-0.pt could not be rebuilt (weights of other shapes than its architecture: size mismatch for"),
    "record: damaged VAE run file": ("train_gan", None, (paths.VAE_RUN, lambda p: p.write_text("{garbage")),
                                     "outputs/vae/mlflow_run.json is damaged (not JSON: "),
    "record: empty VAE run file": ("train_gan", None, (paths.VAE_RUN, lambda p: p.write_text("{}")),
                                   "outputs/vae/mlflow_run.json is damaged (no 'runs' of the expected type); "
                                   "rerun `dvc repro -f train_vae`"),
    "record: rows of other params": ("train_gan", None, (paths.VAE_RUN, swap_seeds),
                                     "recorded with seed = '1' where params.yaml says '0'; rerun `dvc repro -f train_vae`"),
    "record: a deleted row": ("train_gan", None, ("mlflow.db", delete_seed_0_row),
                              "which is deleted: restore it (`mlflow runs restore --run-id "),
    "record: damaged GAN run file": ("evaluate", None, (paths.GAN_RUN, lambda p: p.write_text("[1, 2]")),
                                     "outputs/gan/mlflow_run.json is damaged (no 'runs'"),
    "record: damaged classifier metrics": ("evaluate", None, (paths.CLASSIFIER_METRICS, lambda p: p.write_text("x")),
                                           "outputs/classifier/metrics.json is damaged (not JSON: "),
}


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
            result = upstream.call(stage)
            assert state(upstream) == before  # no output written, no MLflow row added
    finally:
        upstream.write_params()
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{stage}: error: ")]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr, result.stderr
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


def test_an_unreachable_server_is_named_without_its_password(upstream):
    before = state(upstream)
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    result = upstream.call("train_vae", env={"MLFLOW_TRACKING_URI": uri})
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


def test_a_read_only_store_is_refused_before_any_work(upstream):
    before = state(upstream)
    uri = f"sqlite:///file:{upstream.store}?mode=ro&uri=true"  # the store, opened read-only
    result = upstream.call("train_vae", env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 2, result.stderr
    assert "is read-only (attempt to write a readonly database)" in result.stderr
    assert "Traceback" not in result.stderr and state(upstream) == before


def test_a_diverging_training_stops_naming_epoch_and_term_and_writes_nothing(upstream):
    """NaN or inf in training: exit 2 with the epoch and the loss term; no output, and no row: the
    stage records its seeds once they have trained."""
    before_files, before_rows = state(upstream)
    upstream.write_params({"vae": {"learning_rate": 1e30}})
    try:
        result = upstream.call("train_vae")
    finally:
        upstream.write_params()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert re.search(r"epoch \d+: the training loss term '\w+' became (nan|inf)", result.stderr), result.stderr
    assert state(upstream) == (before_files, before_rows)


# ---------------------------------------------------------------------------------------------
# Interruptions


def start_stage(project, name: str, env: dict | None = None) -> tuple[subprocess.Popen, object]:
    """`python -m pipeline.<name>` in the background, as Project.stage runs it, output to a log.
    SIGINT is put back to its default in it, as in a command typed at a terminal: a suite started
    in the background by a shell (`make test &`) has SIGINT ignored, and a process inherits that."""
    log = open(project.root / f"{name}.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", module_of(name)], cwd=project.root, stdout=log,
                               stderr=subprocess.STDOUT, env=project.environment(env),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return process, log


def vae_rows(project):
    return [r for r in project.runs("mnist5k") if r.data.tags.get("pipeline.stage") == "train_vae"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, exit_code, said", [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "terminated")])
def test_an_interrupted_stage_writes_nothing_and_records_nothing(project, signum, exit_code, said):
    """Ctrl-C or SIGTERM while the seeds train: the stage says so, writes no output, and leaves no
    row (it records its seeds once they have trained; an interrupt while it records ends its rows
    KILLED: test_a_failure_at_a_stages_last_steps_...)."""
    project.call("download", check=True)
    project.write_params(LONG)
    process, log = start_stage(project, "train_vae", env=FAST_WAIT)
    try:
        wait_for_line(process, log, "epoch 2/")
        process.send_signal(signum)
        assert process.wait(timeout=60) == exit_code
    finally:
        process.kill()  # not left training 100,000 epochs beside the rest of the suite
    log.seek(0)
    output = log.read()
    assert f"train_vae: {said}" in output and "Traceback" not in output
    assert not (project.root / "outputs" / "vae").exists()  # not even a temporary file
    assert vae_rows(project) == []

    project.write_params()
    project.call("train_vae", check=True)
    assert sorted(r.info.status for r in vae_rows(project)) == ["FINISHED", "FINISHED"]  # TINY's two seeds


def hold_a_row(project: Project, then: str) -> subprocess.Popen:
    """Another process that opens a result row as a stage does (`record.stage_run`), then sleeps
    holding it (`then` "sleep") or is killed outright in the middle of it ("die"), as a stage
    killed while it records would be."""
    script = ("import os, signal, sys, time\n"
              "from pipeline.core.config import load_config, seed_params\n"
              "from pipeline.tracking import record\n"
              "config = load_config()\n"
              "with record.stage_run('train_vae', config, run_name='held', params=seed_params(config, 0)):\n"
              "    print('holding', flush=True)\n"
              "    if sys.argv[1] == 'die':\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    time.sleep(3600)\n")
    process = subprocess.Popen([sys.executable, "-c", script, then], cwd=project.root, env=project.environment(),
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    return process


@pytest.mark.slow
def test_a_stage_killed_outright_leaves_no_output_and_the_next_run_marks_a_row_it_held_killed(project):
    """SIGKILL while the seeds train: no output, no row. A process killed outright while it holds a
    row (in the middle of recording) leaves that row RUNNING, with its host and pid; the next stage
    on this machine marks it KILLED and says so."""
    project.call("download", check=True)
    project.write_params(LONG)
    process, log = start_stage(project, "train_vae")
    wait_for_line(process, log, "epoch 2/")
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (project.root / "outputs" / "vae").exists() and vae_rows(project) == []

    project.write_params()
    holder = hold_a_row(project, "die")
    assert holder.wait(timeout=60) == -signal.SIGKILL
    [row] = vae_rows(project)
    assert row.info.status == "RUNNING" and row.data.tags["pipeline.pid"] == str(holder.pid)
    result = project.call("train_vae", check=True)
    assert f"MLflow row {row.info.run_id} was left RUNNING by process {holder.pid}" in result.stderr
    statuses = {r.info.run_id: r.info.status for r in vae_rows(project)}
    assert statuses.pop(row.info.run_id) == "KILLED" and list(statuses.values()) == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_a_running_stage_of_a_live_process_is_left_alone(project):
    """A second process recording into the experiment (a queue worker in its own copy of the
    project, say) must not close the row of a stage that is still recording."""
    project.call("download", check=True)
    holder = hold_a_row(project, "sleep")
    try:
        worker = Project(project.root / "worker")  # as DVC's queue runs an experiment: a copy, DVC_ROOT the project
        shutil.copytree(project.root / "outputs" / "data", worker.root / "outputs" / "data")
        worker.write_params({"latent_dim": 2})
        worker.call("train_vae", check=True, env={"DVC_ROOT": str(project.root)})  # another process: this one
        running = [r for r in vae_rows(project) if r.data.tags["pipeline.pid"] == str(holder.pid)]
        assert [r.info.status for r in running] == ["RUNNING"]
    finally:
        holder.kill()
        holder.wait(timeout=60)


# ---------------------------------------------------------------------------------------------
# Faults of the machine and the store (reliability part two): each is one line
# `<stage>: error: ...`, exit 2, no traceback, no output changed, and no row left RUNNING.


def assert_one_line_refusal(project: Project, stage: str, message: str, *, env: dict | None = None,
                            setup=contextlib.nullcontext) -> subprocess.CompletedProcess:
    """Run `stage` inside `setup()` (in this process: the store and the files are what these cases
    are about): exit 2 with one error line holding `message`, no traceback, every output as before,
    and no row added unless it ended (FAILED or KILLED)."""
    before_files = state(project)[0]
    before_rows = {r.info.run_id for r in project.runs()}
    with setup():
        result = project.call(stage, env=env)
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{stage}: error: ")]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert state(project)[0] == before_files  # no output written, none replaced, no temporary left
    added = [r for r in project.runs() if r.info.run_id not in before_rows]
    assert all(r.info.status in ("FAILED", "KILLED") for r in added), [r.info.status for r in added]
    return result


@contextlib.contextmanager
def store_replaced(project: Project, damage):
    """The store damaged by `damage(bytes) -> bytes` for the block; put back afterwards."""
    original = project.store.read_bytes()
    project.store.write_bytes(damage(original))
    try:
        yield
    finally:
        project.store.write_bytes(original)


@contextlib.contextmanager
def store_locked(project: Project, seconds: float | None = None):
    """Another process holding the store's write lock: for the block, or for `seconds` from now."""
    script = ("import sqlite3, sys, time\n"
              "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
              "time.sleep(float(sys.argv[2])); c.execute('COMMIT')\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(project.store), str(seconds or 3600)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    try:
        yield holder
    finally:
        if seconds is None:
            holder.kill()
        holder.wait(timeout=seconds + 60 if seconds else 60)


FAST_WAIT = {"PIPELINE_STORE_WAIT_S": "2"}


def writer_killed_mid_transaction(database: Path) -> None:
    """A process that writes to `database` and is SIGKILLed before it commits: a table of 1 MB,
    more than its page cache holds, so that changed pages reach the file and the journal beside
    it is hot (SQLite rolls it back at the next writable open). Checks that a read-only open
    cannot, as an unfixed reader would meet it."""
    import sqlite3

    script = ("import os, signal, sqlite3, sys\n"
              "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "c.execute('PRAGMA cache_size = 10'); c.execute('BEGIN IMMEDIATE')\n"
              "c.execute('CREATE TABLE dead_writer (x)')\n"
              "c.execute('INSERT INTO dead_writer WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
              "WHERE i < 256) SELECT randomblob(4096) FROM n')\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", script, str(database)]).returncode == -signal.SIGKILL
    assert Path(f"{database}-journal").exists()
    with pytest.raises(sqlite3.OperationalError) as raised:
        sqlite3.connect(f"file:{database}?mode=ro", uri=True).execute("SELECT count(*) FROM sqlite_master")
    assert raised.value.sqlite_errorcode == sqlite3.SQLITE_READONLY_ROLLBACK


def test_a_dead_writers_journal_is_rolled_back_before_a_read_only_read(tmp_path):
    import sqlite3

    from pipeline.tracking import store

    database = tmp_path / "store.db"
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("CREATE TABLE kept (x)")
        connection.execute("INSERT INTO kept VALUES (1)")
    writer_killed_mid_transaction(database)
    with contextlib.closing(store.read_only(database)) as connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert tables == ["kept"] and connection.execute("SELECT x FROM kept").fetchall() == [(1,)]
    assert not Path(f"{database}-journal").exists()
    store.check_database(database)  # and the check every stage makes passes


@pytest.mark.slow
def test_a_store_whose_writer_was_killed_mid_write_works_for_the_next_stage(upstream):
    """`dvc repro` killed while a stage writes to the store (tests: ..._killed_mid_pipeline_...) leaves
    a hot journal: the next stage's check of the store must let SQLite roll it back, not call the
    store read-only."""
    rows = len(upstream.runs())
    writer_killed_mid_transaction(upstream.store)
    result = upstream.call("train_classifier")
    assert result.returncode == 0, result.stderr
    assert len(upstream.runs()) == rows + 1


@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    (lambda data: os.urandom(len(data)), "is damaged (file is not a database); move it aside or restore a backup"),
    (lambda data: data[: len(data) // 2], "is damaged (database disk image is malformed)"),
])
def test_a_damaged_store_is_named_in_one_line(upstream, damage, message):
    assert_one_line_refusal(upstream, "train_vae", message, setup=lambda: store_replaced(upstream, damage))


@pytest.mark.slow
def test_a_damaged_store_is_named_by_compare_and_report_too(upstream):
    for tool in ("compare", "report"):
        assert_one_line_refusal(upstream, tool, "is damaged (file is not a database)",
                                setup=lambda: store_replaced(upstream, lambda data: b"\0" * len(data)))


@pytest.mark.slow
def test_a_store_locked_past_the_wait_is_named_in_one_line(upstream):
    result = assert_one_line_refusal(upstream, "train_vae", "stayed locked by another process for 2 s; find what "
                                     "holds it", env=FAST_WAIT, setup=lambda: store_locked(upstream))
    assert "PIPELINE_STORE_WAIT_S" in result.stderr


@pytest.mark.slow
def test_a_store_locked_for_a_while_is_waited_for(upstream):
    """A lock held for less than the wait (a queue worker's write, say): the stage waits and succeeds."""
    rows = len(upstream.runs())
    with store_locked(upstream, seconds=4):
        result = upstream.call("train_classifier", env={"PIPELINE_STORE_WAIT_S": "30"})
    assert result.returncode == 0, result.stderr
    assert len(upstream.runs()) == rows + 1


@pytest.mark.slow
def test_a_lock_that_outlasts_the_wait_when_the_stage_records_fails_it_cleanly(project):
    """The store is locked by another process while the seeds train (the check before any work
    passed) and stays locked when the stage comes to record them: one line after the wait, no
    output, no row left behind."""
    project.call("download", check=True)
    project.write_params({"vae": {"epochs": 200}})  # a few seconds of training: the lock comes first
    process, log = start_stage(project, "train_vae", env=FAST_WAIT)
    try:
        wait_for_line(process, log, "epoch 2/")
        with store_locked(project):  # until the stage has ended
            assert process.wait(timeout=120) == 2
    finally:
        process.kill()
    log.seek(0)
    output = log.read()
    assert "epoch 200/200" in output  # it trained to the end, then met the lock
    assert "train_vae: error: MLflow store" in output and "stayed locked by another process" in output, output
    assert "Traceback" not in output and not (project.root / "outputs" / "vae").exists()
    assert all(r.info.status != "FINISHED" for r in vae_rows(project))


@pytest.mark.slow
@pytest.mark.parametrize("uri, message", [
    ("file:///tmp/mlruns", "is a folder (file:) store, which this project does not use"),
    ("/tmp/mlruns", "is a folder (file:) store"),
    ("sqlite://", "is in memory and would keep nothing"),
    ("sqlite:///{root}/params.yaml/mlflow.db", "cannot be created: {root}/params.yaml is a file, not a folder"),
])
def test_a_store_that_cannot_work_is_named_in_one_line(upstream, uri, message):
    root = str(upstream.root)
    assert_one_line_refusal(upstream, "train_vae", message.format(root=root),
                            env={"MLFLOW_TRACKING_URI": uri.format(root=root)})


def test_a_store_path_with_a_hash_and_a_space_is_the_path_mlflow_uses(upstream, tmp_path):
    """MLflow (through SQLAlchemy) takes `sqlite:////x/st ore#1/mlflow.db` as the path it says; the
    pipeline's own check and reads used to open it cut at `#`, creating a stray empty file."""
    folder = tmp_path / "st ore#1"
    folder.mkdir()
    shutil.copy(upstream.store, folder / "mlflow.db")
    result = upstream.call("compare", "--csv", str(tmp_path / "c.csv"),
                           env={"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"})
    assert result.returncode == 0, result.stderr
    assert " 4 " in result.stdout and sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "st ore#1"]
    assert all(p.name.startswith("mlflow.db") for p in folder.iterdir())


def test_artifacts_folder_replaced_by_a_file_is_named_in_one_line(upstream):
    artifacts = upstream.root / "mlartifacts"

    @contextlib.contextmanager
    def a_file():
        artifacts.rename(artifacts.with_name("mlartifacts.aside"))
        artifacts.write_text("not a folder")
        try:
            yield
        finally:
            artifacts.unlink()
            artifacts.with_name("mlartifacts.aside").rename(artifacts)

    assert_one_line_refusal(upstream, "train_vae", f"{artifacts} is a file, where MLflow store", setup=a_file)


@pytest.mark.slow
@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes("# \u00c9\n".encode("latin-1") + p.read_bytes()),
     "params.yaml is not UTF-8 text (byte 0xc9 at offset 2); save it as UTF-8"),
    (lambda p: (p.unlink(), p.mkdir()), "params.yaml could not be read (Is a directory)"),
    (lambda p: p.write_text(p.read_text() + "\nlatent_dim: 8\n"), "key 'latent_dim' is given twice in one mapping"),
    (lambda p: p.write_text("latent_dim: [16\n" + p.read_text()),
     "is not valid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence from line 1, column 13)"),
])
def test_a_params_file_that_cannot_be_read_is_named_in_one_line(upstream, write, message):
    params = upstream.root / "params.yaml"

    @contextlib.contextmanager
    def written():
        original = params.read_bytes()
        write(params)
        try:
            yield
        finally:
            if params.is_dir():
                params.rmdir()
            params.write_bytes(original)

    assert_one_line_refusal(upstream, "train_vae", message, setup=written)


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ({"latent_dim": 100_000}, "latent_dim = 100000 is not allowed; expected an integer >= 1 and <= 1024"),
    ({"seeds": [0, 2**70]}, f"seeds = [0, {2**70}] is not allowed; expected a list of 1 to 64 distinct integers, "
                            "such as [0, 1, 2], each >= 0 and <= 4294967295"),
    ({"evaluate": {"iwae_samples": 100_000}}, "evaluate.iwae_samples = 100000 is not allowed"),
    ({"gan": {"fid_samples": 2}}, "gan.fid_samples = 2 is too few for a Fréchet distance in classifier.feature_dim "
                                  "= 16 features"),
])
def test_settings_beyond_the_machine_or_below_a_meaningful_score_are_refused_before_any_work(upstream, override,
                                                                                             message):
    upstream.write_params(override)
    try:
        assert_one_line_refusal(upstream, "train_vae", message)
    finally:
        upstream.write_params()


@pytest.mark.slow
def test_threads_beyond_the_machine_are_refused_before_any_work(upstream):
    assert_one_line_refusal(upstream, "train_vae", "PIPELINE_THREADS = '99999999' is not allowed",
                            env={"PIPELINE_THREADS": "99999999"})


@pytest.mark.slow
def test_data_too_small_for_the_evaluation_is_refused_by_the_first_stage(project):
    """A handful of images per class: refused by `download`, before any stage wrote anything, not
    by `evaluate` after four stages (nor scored from a singular covariance)."""
    project.write_params({"data": {"max_per_class": 2}})
    assert_one_line_refusal(project, "download", "evaluate.num_samples = 60 is more than the data has (10 train and "
                                                 "10 test images)")
    assert project.files() == [] and not project.store.exists()


# Runs a stage as `python -m` does, with its address space limited to what its imports take plus
# 512 MiB: less than it needs, as on a smaller machine.
WITH_LITTLE_MEMORY = """
import re, resource, runpy, sys
import matplotlib.pyplot, mlflow, mlflow.pytorch, sqlalchemy, torch, torchmetrics.image.fid, torchmetrics.image.kid
import pipeline.stages.{stage}, pipeline.tracking.store
size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 2**29, size + 2**29))
runpy.run_module("pipeline.stages.{stage}", run_name="__main__")
"""


@pytest.mark.slow
def test_memory_that_cannot_be_allocated_names_the_settings_to_lower(upstream):
    """An allocation the machine refuses: one line that says which settings size the stage's memory."""
    before = state(upstream)[0]
    upstream.write_params({"evaluate": {"iwae_samples": 1024}})  # its decoded samples alone: 60 x 1024 images
    try:
        result = subprocess.run([sys.executable, "-W", "ignore", "-c", WITH_LITTLE_MEMORY.format(stage="evaluate")],
                                cwd=upstream.root, capture_output=True, text=True, env=upstream.environment())
    finally:
        upstream.write_params()
    errors = [line for line in result.stderr.splitlines() if line.startswith("evaluate: error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("evaluate: error: out of memory (") and errors[0].endswith(
        "lower evaluate.iwae_samples or evaluate.num_samples in params.yaml, or free memory")
    assert "Traceback" not in result.stderr and state(upstream)[0] == before


def test_file_system_and_memory_faults_become_one_line_others_keep_their_traceback():
    import errno

    from pipeline.stages.cli import named_fault

    full = OSError(errno.ENOSPC, "No space left on device", "outputs/vae/.checkpoint.pt.x.tmp")
    assert named_fault("train_vae", full) == ("no space left on the device writing outputs/vae/.checkpoint.pt.x.tmp; "
                                              "free space there (`df -h`) and run again")
    denied = PermissionError(errno.EACCES, "Permission denied", "/srv/mlartifacts/1/abc")
    wrapped = RuntimeError("artifact upload failed")
    wrapped.__cause__ = denied
    assert named_fault("train_gan", wrapped).startswith("permission denied writing /srv/mlartifacts/1/abc; make it")
    oom = RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you tried "
                       "to allocate 822083584 bytes.")
    assert "lower evaluate.iwae_samples or evaluate.num_samples in params.yaml" in named_fault("evaluate", oom)
    assert named_fault("evaluate", torch.OutOfMemoryError("CUDA out of memory")).startswith("out of memory (CUDA")
    assert named_fault("train_vae", KeyError("epoch")) is None  # a bug: its traceback stays
    assert named_fault("train_vae", FileNotFoundError(errno.ENOENT, "No such file", "x")) is None


@pytest.fixture
def small_disk(tmp_path):
    """A project on a tmpfs with little room beyond its upstream outputs (root only: it mounts)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield Project(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_named_in_one_line_and_replaces_no_output(small_disk):
    project = small_disk
    project.write_params()
    project.call("download", check=True)
    project.call("train_vae", check=True)
    filler = project.root / "filler"
    free = os.statvfs(project.root).f_bavail * os.statvfs(project.root).f_frsize
    filler.write_bytes(b"\0" * max(free - 64 * 1024, 0))  # 64 KiB left: less than a new VAE's outputs
    result = assert_one_line_refusal(project, "train_vae", "")
    assert ("no space left on the device" in result.stderr or "is on a full disk" in result.stderr), \
        result.stderr


@pytest.mark.slow
def test_an_unwritable_artifact_store_is_named_in_one_line_and_ends_the_row(tmp_path):
    """The artifact folder on a read-only file system (root only: a read-only bind mount)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    project = Project(tmp_path)
    project.write_params()
    project.call("download", check=True)
    artifacts = tmp_path / "mlartifacts"
    subprocess.run(["mount", "--bind", str(artifacts), str(artifacts)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(artifacts)], check=True)
        assert_one_line_refusal(project, "train_vae", "read-only file system writing " + str(artifacts))
    finally:
        subprocess.run(["umount", "-l", str(artifacts)], check=False)
    [row] = vae_rows(project)
    assert row.info.status == "FAILED"


# ---------------------------------------------------------------------------------------------
# All or nothing: a failure at a stage's last steps leaves its output folder as it was.


@pytest.fixture(scope="module")
def complete(study, tmp_path_factory) -> Project:
    """A copy of the study: its five stages have all run, every output folder holds old outputs."""
    return Project(copy_project(study.root, tmp_path_factory.mktemp("complete") / "project"))


# Each stage's run() result, computed at the first of its three cases and reused by the others:
# what is tested is the record and the outputs after it, which are the same for every failure.
COMPUTED: dict[str, object] = {}


def computed_once(module):
    """The stage module's run(), computed once per stage (without its per-epoch callback, which
    checks params.yaml: the injected failures belong at the last step only)."""
    real = module.run

    def run(*args, **kwargs):
        kwargs.pop("on_epoch", None)
        if module.__name__ not in COMPUTED:
            COMPUTED[module.__name__] = real(*args, **kwargs)
        return COMPUTED[module.__name__]
    return run


def outputs_digest(project: Project) -> dict[str, bytes]:
    """Every entry under outputs/ (hidden temporaries included) with its bytes (b"" for a folder)."""
    out = project.root / "outputs"
    return {str(p.relative_to(out)): p.read_bytes() if p.is_file() else b"" for p in sorted(out.rglob("*"))}


def refuse_last_write(original):
    """mlflow.end_run whose FINISHED write the store refuses, as a store locked past the wait would."""
    import mlflow

    def end_run(status="FINISHED"):
        if status == "FINISHED":
            raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked")
        original(status)
    return end_run


def raise_at_last_step(error: BaseException):
    def last_step() -> None:
        raise error
    return last_step


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["download", "train_vae", "train_classifier", "train_gan", "evaluate"])
@pytest.mark.parametrize("failure", ["store refuses the last write", "disk full at the last step",
                                     "SIGTERM at the last step"])
def test_a_failure_at_a_stages_last_steps_leaves_its_outputs_as_they_were(complete, monkeypatch, stage, failure):
    """Each stage run in this process with a failure injected after every output was written aside
    and recorded, just before its row is finished and its outputs appear: its output folder (and
    every other) is byte for byte what it was, and its row ended rather than stayed RUNNING. The
    stage's computation (run) is done once and reused by its three cases."""
    import errno
    import importlib

    import mlflow

    from pipeline.core.errors import PipelineError, Terminated
    from pipeline.stages import params_guard
    from pipeline.stages.cli import named_fault

    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(complete.root)
    module = importlib.import_module(f"pipeline.stages.{stage}")
    monkeypatch.setattr(module, "run", computed_once(module))
    before, rows = outputs_digest(complete), {r.info.run_id for r in complete.runs()}
    if failure == "store refuses the last write":
        monkeypatch.setattr(mlflow, "end_run", refuse_last_write(mlflow.end_run))
        expected = Exception
    elif failure == "disk full at the last step":
        full = OSError(errno.ENOSPC, "No space left on device", "outputs/x")
        monkeypatch.setattr(params_guard, "unchanged", raise_at_last_step(full))
        expected = OSError
    else:
        monkeypatch.setattr(params_guard, "unchanged", raise_at_last_step(Terminated()))
        expected = Terminated
    with pytest.raises(expected) as raised:
        module.main()
    if expected is not Terminated:
        assert isinstance(raised.value, PipelineError) or named_fault(stage, raised.value)  # one line for the user
    monkeypatch.undo()
    assert outputs_digest(complete) == before
    added = [r for r in complete.runs() if r.info.run_id not in rows]  # the seeds' rows it wrote to, or its own
    assert added and {r.info.status for r in added} == {"KILLED" if expected is Terminated else "FAILED"}


def test_outputs_get_the_users_umask_not_private_modes(tmp_path):
    from pipeline.core.io import atomic_dir, staged, write_json

    previous = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "outputs" / "vae") as out:
            write_json(staged(out, paths.VAE_METRICS), {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "outputs" / "vae").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / paths.VAE_METRICS).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("tool, argv, message", [
    ("compare", ["--csv", "{root}/outputs"], "{root}/outputs is a folder; give a file path"),
    ("compare", ["--csv", "{root}/params.yaml/x.csv"],
     "{root}/params.yaml/x.csv cannot be created: {root}/params.yaml is a file, not a folder"),
    ("report", ["--output", "{root}/params.yaml"], "{root}/params.yaml is a file; give a folder to write into"),
    ("sweep", ["--latent-dims", "8", "--threads", "{many}"], "--threads {many} is more than this machine's"),
])
def test_a_tool_refuses_an_output_it_cannot_write_or_threads_beyond_the_cores_before_any_work(upstream, tool, argv,
                                                                                              message):
    """Checked before any work: compare used to write its summary runs first, sweep to run every
    experiment and then say only that none left a complete result."""
    values = {"root": upstream.root, "many": (os.cpu_count() or 1) + 1}
    before = state(upstream), len(mlflow_runs(upstream.store, summaries=True))
    result = upstream.call(tool, *(a.format(**values) for a in argv))
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{tool}: error: ")]
    assert result.returncode == 2 and len(errors) == 1 and message.format(**values) in errors[0], result.stderr
    assert (state(upstream), len(mlflow_runs(upstream.store, summaries=True))) == before


@pytest.mark.slow
def test_two_compares_at_once_leave_one_finished_summary_run_per_configuration(upstream, tmp_path):
    """Two `make compare` at once, where no summary runs exist yet: each makes one per
    configuration, looks again, and the newer gives way to the older (3 times out of 3, the older
    code left two)."""
    from collections import Counter

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{upstream.store}")
    for run in mlflow_runs(upstream.store, summaries=True):
        client.delete_run(run.info.run_id)
    processes = [subprocess.Popen([sys.executable, "-m", "pipeline.tools.compare", "--csv", str(tmp_path / f"{i}.csv")],
                                  cwd=upstream.root, env=upstream.environment(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    made = mlflow_runs(upstream.store, summaries=True)
    per_configuration = Counter(run.data.tags["pipeline.summary_of"] for run in made)
    assert len(per_configuration) == 2 and set(per_configuration.values()) == {1}, per_configuration
    assert {run.info.status for run in made} == {"FINISHED"}


def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_stages_start_removes_what_a_killed_run_of_it_left_and_nothing_else(upstream):
    """A stage killed outright at its last steps leaves its staging folder (`.gan.<pid>-<random>.tmp`,
    a checkpoint inside, and the `.old` one of the swap); the next run of the stage removes them,
    whether or not it goes on to finish (this one is refused right after), and leaves alone a live
    process's, another stage's, and any it cannot tell the owner of."""
    outputs, dead = upstream.root / "outputs", dead_pid()
    left = [outputs / f".gan.{dead}-k1ll3d.tmp", outputs / f".gan.{dead}-k1ll3d.tmp.old"]
    kept = [outputs / f".gan.{os.getppid()}-alive.tmp", outputs / f".vae.{dead}-other.tmp", outputs / ".gan.old.tmp"]
    for folder in left + kept:
        folder.mkdir()
        (folder / "decoder.pt").write_bytes(b"half written")
    upstream.write_params({"latent_dim": 8})  # its checkpoints are latent_dim 4: refused before any work
    try:
        result = upstream.call("train_gan")
        assert [folder.exists() for folder in left + kept] == [False] * len(left) + [True] * len(kept)
    finally:
        upstream.write_params()
        for folder in left + kept:
            shutil.rmtree(folder, ignore_errors=True)
    assert result.returncode == 2 and "was trained with latent_dim = 4" in result.stderr
    assert (f"train_gan: removed outputs/.gan.{dead}-k1ll3d.tmp, left by a run of train_gan that was killed "
            "outright") in result.stderr


# ---------------------------------------------------------------------------------------------
# The three silent cases of part two: lost artifacts, a hijacked repro, markup in the report
# (the report's case is in test_report.py).


@pytest.mark.slow
def test_a_temporary_experiment_keeps_its_artifacts_with_a_store_of_the_users_choosing(workspace, tmp_path):
    """`dvc exp run --temp` (the explorer's Train page) with MLFLOW_TRACKING_URI set to a SQLite
    file: the artifacts go beside that file, not into DVC's temporary copy, which is deleted. (An
    evaluation param: only the evaluation reruns, in a row of its own in that store.)"""
    import mlflow

    database = tmp_path / "team" / "store.db"
    environment = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{database}"}
    result = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", "elsewhere",
                             "-S", "evaluate.num_samples=50"], cwd=workspace, capture_output=True, text=True,
                            env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = mlflow_runs(database, "mnist5k")
    assert sorted(row.data.params["seed"] for row in rows) == ["0", "1"]  # a row per seed
    client = mlflow.MlflowClient(f"sqlite:///{database}")
    for row in rows:
        assert row.info.status == "FINISHED" and row.data.tags["dvc.exp_name"] == "elsewhere"
        assert row.info.artifact_uri.startswith((tmp_path / "team" / "mlartifacts").as_uri())
        figure = client.download_artifacts(row.info.run_id, "eval/reconstructions.png", str(tmp_path))
        assert Path(figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_experiment_whose_artifacts_would_be_lost_is_refused(project, monkeypatch, tmp_path):
    """An experiment made by other code with its artifacts in a temporary copy, or at a relative
    path, is refused with what to do; a relative SQLite path is the project root's, not the copy's."""
    from pipeline.core.errors import TrackingError
    from pipeline.tracking import experiments, store

    copy = tmp_path / "root" / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///team.db")
    assert store.tracking_uri() == f"sqlite:///{(tmp_path / 'root' / 'team.db').resolve()}"
    for location in ((copy / "mlruns").as_uri(), "mlruns", "./mlruns/1"):
        with pytest.raises(TrackingError, match="where they would be lost; record into another experiment"):
            experiments.check_artifact_location("mnist5k", location)
    experiments.check_artifact_location("mnist5k", (tmp_path / "root" / "mlartifacts").as_uri())
    experiments.check_artifact_location("mnist5k", "s3://bucket/mlartifacts")


@pytest.mark.slow
def test_a_refused_experiment_cannot_hijack_a_running_repro(workspace):
    """`dvc exp run -S latent_dim=8` during a `dvc repro` (of a VAE with more epochs, after the
    quick start's): DVC refuses it but has rewritten params.yaml. The running stage notices after
    its epoch, long before it would record its rows or show its outputs, and the repro stops saying
    what happened: no result of latent_dim 8, no row, no VAE output of its own, no new lock entry."""
    import yaml

    repo = workspace
    lock = (repo / "dvc.lock").read_bytes()
    rows_before = {r.info.run_id for r in mlflow_runs(repo / "mlflow.db", "mnist5k")}
    outputs_before = {p.name: p.read_bytes() for p in (repo / "outputs" / "vae").rglob("*") if p.is_file()}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["vae"]["epochs"] = 100_000  # a training that only the check after each epoch can stop in time
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = open(repo / "repro.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train_vae"], cwd=repo, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        wait_for_line(process, log, "epoch 2/", seconds=300)
        refused = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "latent_dim=8"], cwd=repo,
                                 capture_output=True, text=True)
        assert refused.returncode != 0, refused.stdout + refused.stderr
        assert yaml.safe_load((repo / "params.yaml").read_text())["latent_dim"] == 8  # what DVC left behind
        assert process.wait(timeout=120) != 0  # within an epoch of the change, not 100,000 epochs later
    finally:
        process.kill()
    log.seek(0)
    output = log.read()
    assert re.search(r"train_vae: error: params.yaml changed while `dvc repro` \(process \d+\) was running "
                     r"\(latent_dim: 4 -> 8\)", output), output
    assert "Traceback" not in output
    rows = [r for r in mlflow_runs(repo / "mlflow.db", "mnist5k") if r.info.run_id not in rows_before]
    assert rows == []  # the seeds had not trained: nothing was recorded
    # DVC removed the stage's old outputs before running it, and the refused `dvc exp run` checks
    # the committed ones back out of DVC's cache before it meets the lock; the stage wrote none.
    outputs_after = {p.name: p.read_bytes() for p in (repo / "outputs" / "vae").rglob("*") if p.is_file()}
    assert all(outputs_after[name] == outputs_before.get(name) for name in outputs_after)
    assert (repo / "dvc.lock").read_bytes() == lock


def test_params_changed_between_the_stages_of_one_dvc_command_are_refused(project, monkeypatch):
    """What the stages of one DVC command read is kept from the first: a later stage, or the same
    stage at its end, refuses a change; under `dvc repro` an edit made after it started is refused
    even by its first stage. (The DVC process is stood in for by this one.)"""
    from pipeline.core.config import ConfigError
    from pipeline.stages import params_guard

    (project.root / ".dvc").mkdir()
    monkeypatch.setattr(params_guard, "_started", {})
    monkeypatch.setattr(params_guard, "dvc_command", lambda: {"pid": os.getpid(), "start": 1, "kind": "exp"})
    params_guard.started()  # the command's first stage: remembered
    params_guard.started()  # its next stage, nothing changed
    params_guard.unchanged()
    project.write_params({"latent_dim": 8})
    with pytest.raises(ConfigError, match=r"changed while `dvc exp run` \(process \d+\) was running \(latent_dim: 4 "
                                          r"-> 8\)"):
        params_guard.unchanged()  # the stage, at its end
    with pytest.raises(ConfigError, match=r"\(latent_dim: 4 -> 8\)"):
        params_guard.started()  # the command's next stage

    start = params_guard._process(os.getpid())[1]  # this process started before params.yaml was written
    monkeypatch.setattr(params_guard, "dvc_command", lambda: {"pid": os.getpid(), "start": start, "kind": "repro"})
    with pytest.raises(ConfigError, match=r"params.yaml was changed at [\d:]+, after `dvc repro` \(process \d+\) "
                                          r"started at [\d:]+"):
        params_guard.started()


def test_params_caught_in_the_middle_of_a_rewrite_are_read_once_they_settle(project, monkeypatch):
    """An editor or `dvc exp run -S` empties params.yaml, then writes it: the check after an epoch
    that reads it in between waits for it to settle, then compares what it settled on."""
    import threading

    from pipeline.core.config import ConfigError
    from pipeline.stages import params_guard

    monkeypatch.setattr(params_guard, "_started", {})
    monkeypatch.setattr(params_guard, "dvc_command", lambda: None)
    params_guard.started()
    original = (project.root / "params.yaml").read_text()

    def rewrite_later(text: str) -> threading.Thread:
        (project.root / "params.yaml").write_text("")  # emptied: the writer is under way
        writer = threading.Timer(0.3, lambda: (project.root / "params.yaml").write_text(text))
        writer.start()
        return writer

    writer = rewrite_later(original)  # the same params back: no change
    params_guard.unchanged()
    writer.join()
    writer = rewrite_later(original.replace("latent_dim: 4", "latent_dim: 8"))
    with pytest.raises(ConfigError, match=r"changed while the stage was running \(latent_dim: 4 -> 8\)"):
        params_guard.unchanged()
    writer.join()
