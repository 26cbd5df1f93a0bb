"""The explorer's Train page without Streamlit: one training job, a DVC experiment, at a time.

`start_training` launches `dvc exp run --temp` with the chosen params, detached from the app,
its output in `.dvc/tmp/explorer/train.log`. The job holds an exclusive lock on
`.dvc/tmp/explorer/train.lock` for as long as it runs (the lock is taken before the job starts
and handed to it), so a second request, from any browser tab or a restarted app, is refused
while it runs, and the lock frees itself however the job ends. `training_status` reads the
state from the lock, the log and the exit-code file.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.commands import environment_first
from pipeline.core.config import PARAMS_FILE, Config, ConfigError, parse_config, read_params
from pipeline.core.errors import PipelineError
from pipeline.tools.dvc_cli import check_git, result_run_ids
from pipeline.tracking import names, store
from pipeline.tracking.rows import read_row

JOB_DIR = Path(".dvc/tmp/explorer")
# The params the Train page offers; other params come from params.yaml.
TRAINABLE = ("latent_dim", "seeds", "vae.epochs", "vae.beta", "gan.epochs")


class TrainingBusy(PipelineError):
    """A training job is running already."""


def job_dir() -> Path:
    return store.project_root() / JOB_DIR


def _set(raw: dict, dotted: str, value) -> None:
    *sections, key = dotted.split(".")
    for section in sections:
        raw = raw[section]
    raw[key] = value


def parse_seeds(text: str) -> list:
    """The Train page's seed list, "0, 1, 2" (or "[0, 1, 2]"), as a list: integers where the
    items are whole numbers, else as typed, for check_settings to refuse with params.yaml's message."""
    items = [item.strip() for item in text.strip().strip("[]").split(",") if item.strip()]
    return [int(item) if item.isascii() and item.isdigit() else item for item in items]


def check_settings(settings: dict) -> Config:
    """params.yaml's config with `settings` applied; raises ConfigError when it is not valid.
    Nothing is written."""
    unknown = sorted(set(settings) - set(TRAINABLE))
    if unknown:
        raise ConfigError(f"the explorer cannot set {', '.join(unknown)}; it sets {', '.join(TRAINABLE)}")
    raw = read_params(store.project_root() / PARAMS_FILE)
    for key, value in settings.items():
        _set(raw, key, value)
    return parse_config(raw)


def experiment_name(settings: dict, stamp: str | None = None) -> str:
    """`app-<stamp>-ld<latent_dim>`: DVC experiment names must be unique."""
    return f"app-{stamp or time.strftime('%m%d-%H%M%S')}-ld{settings.get('latent_dim', 'default')}"


def _try_lock(path: Path) -> int | None:
    """An fd holding the exclusive lock on `path`, or None when another process holds it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def start_training(settings: dict) -> str:
    """Check `settings` and launch `dvc exp run --temp` with them; returns the experiment's name.

    Raises TrainingBusy while another job runs, ConfigError for bad settings, and SweepError when
    this is not a git repository with a commit and an identity (`dvc exp run` needs both).
    """
    config = check_settings(settings)
    check_git()
    root = store.project_root()
    folder = job_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fd = _try_lock(folder / "train.lock")
    if fd is None:
        raise TrainingBusy(f"a training is already running ({read_job().get('name', 'unknown')}); "
                           "wait for it to end, then start the next")
    try:
        name = experiment_name(settings)
        command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name,
                   *(arg for key, value in settings.items() for arg in ("-S", f"{key}={value}"))]
        (folder / "train.rc").unlink(missing_ok=True)
        (folder / "train.json").write_text(json.dumps({
            "name": name, "settings": settings, "started": time.time(), "command": command,
            "gan_inits": len(config.gan.trained_inits)}))
        # A small parent that waits for DVC and writes its exit code; it and DVC inherit the lock.
        waiter = ("import subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
                  "open(sys.argv[1], 'w').write(str(rc))")
        env = environment_first()
        with open(folder / "train.log", "wb") as log:
            subprocess.Popen([sys.executable, "-c", waiter, str(folder / "train.rc"), *command], cwd=root, env=env,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,),
                             start_new_session=True)
    finally:
        os.close(fd)
    return name


def read_job() -> dict:
    """The last job's name, settings, start time and command; {} when there was none."""
    path = job_dir() / "train.json"
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass
class TrainingStatus:
    state: str  # idle (no job yet), running, finished, failed, interrupted (ended without an exit code)
    name: str = ""
    progress: float = 0.0  # 0..1 over the five stages
    activity: str = ""  # what the log says the job does now
    log_tail: str = ""
    returncode: int | None = None
    seconds: float = 0.0


STAGE_LINE = re.compile(r"Running stage '(\w+)'|Stage '(\w+)' (?:didn't change|is cached)")
EPOCH_LINE = re.compile(r"^(\w+): (?:(\w+) )?epoch (\d+)/(\d+)", re.M)


def progress(log: str, gan_inits: int = 2) -> tuple[float, str]:
    """How far a `dvc exp run` has come, from its log: (fraction of the five stages, activity).

    A stage counts as done once a later one starts or it is skipped; inside a stage, its last
    `epoch i/N` line tells how far it is (the GAN stage trains `gan_inits` GANs one after the other).
    """
    events = [(m.start(), m.group(1) or m.group(2), bool(m.group(1))) for m in STAGE_LINE.finditer(log)]
    if not events:
        return 0.0, "starting"
    _, stage, running = events[-1]
    done = names.STAGES.index(stage) + (0 if running else 1) if stage in names.STAGES else 0
    if not running:
        return done / len(names.STAGES), f"{stage} up to date"
    inside = 0.0
    epochs = [m for m in EPOCH_LINE.finditer(log, events[-1][0]) if m.group(1) == stage]
    activity = stage
    if epochs:
        last = epochs[-1]
        inits_seen = list(dict.fromkeys(m.group(2) for m in epochs if m.group(2)))
        step, total = int(last.group(3)), int(last.group(4))
        part = (len(inits_seen) - 1 + step / total) / gan_inits if stage == "train_gan" else step / total
        inside = min(part, 1.0)
        activity = f"{stage}{' (' + last.group(2) + ')' if last.group(2) else ''}: epoch {step}/{total}"
    return (done + inside) / len(names.STAGES), activity


def training_status() -> TrainingStatus:
    """The state of the last training job (see module docstring)."""
    folder = job_dir()
    job = read_job()
    if not job:
        return TrainingStatus("idle")
    fd = _try_lock(folder / "train.lock")
    running = fd is None
    if fd is not None:
        os.close(fd)
    log = (folder / "train.log").read_text(errors="replace") if (folder / "train.log").exists() else ""
    rc_file = folder / "train.rc"
    returncode = int(rc_file.read_text()) if not running and rc_file.exists() else None
    if running or returncode is None:
        state = "running" if running else "interrupted"
    else:
        state = "finished" if returncode == 0 else "failed"
    fraction, activity = progress(log, job["gan_inits"])
    if state == "finished":
        fraction, activity = 1.0, "done"
    ended = rc_file.stat().st_mtime if not running and rc_file.exists() else time.time()
    seconds = ended - job["started"]
    return TrainingStatus(state, job["name"], fraction, activity,
                          "\n".join(log.splitlines()[-15:]), returncode, seconds)


def training_result(name: str) -> tuple[str | None, bool]:
    """The MLflow row that DVC experiment `name` left its first seed's result in (None if it left
    none), and whether that row is an earlier one: with params computed before, DVC restores their
    outputs from its run cache and runs (and records) nothing new."""
    run_ids = result_run_ids(name)
    if not run_ids:
        return None, False
    run_id = run_ids[min(run_ids)]
    return run_id, read_row(run_id).tags.get(names.EXP_NAME_TAG) != name
