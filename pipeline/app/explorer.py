"""What the explorer app (`pipeline/app/app.py`, `make app`) shows and does, without Streamlit: the
recorded runs, a run's models loaded from its MLflow artifacts with the pipeline's own loaders,
samples, reconstructions and latent walks as tensors, and one training job at a time.

Runs
    The complete rows of an MLflow experiment, as `make compare` lists them. A row's
    models come from its artifacts (`vae/checkpoint.pt`, `gan/generators/<init>.pt`), so every
    recorded run can be explored, not only the workspace's. Its test images come from the
    workspace's `outputs/data/splits.npz` when that holds the run's data (same content hash),
    and are rebuilt from the run's `data.*` params otherwise.

Training
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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from pipeline.core import latent
from pipeline.core.checkpoints import load_gans, load_vae
from pipeline.core.config import PARAMS_FILE, Config, ConfigError, parse_config
from pipeline.core.data import Splits, build_splits, content_hash, load_splits
from pipeline.core.errors import CheckpointError, DataError, PipelineError
from pipeline.core.metrics import kl_per_dimension
from pipeline.core.models import VAE, Decoder
from pipeline.core.training import to_unit_float
from pipeline.stages import paths
from pipeline.tools import compare
from pipeline.tracking import names, store
from pipeline.tracking.rows import Row, open_experiment, read_row, read_rows

# ---------------------------------------------------------------------------------------------
# Runs and their models


def rows_version(experiment: str) -> tuple:
    """A cheap mark that changes when a row is added to the experiment or ends: its newest start and
    its latest end (two one-row queries, where reading every row of thousands takes seconds). The
    app reads the rows again only when it changes (or after a few minutes, for renamed or deleted
    rows). Raises TrackingError when the store or the experiment does not exist."""
    client, experiment_id = open_experiment(experiment)
    mark = []
    for order in ("attributes.start_time DESC", "attributes.end_time DESC"):
        newest = client.search_runs([experiment_id], max_results=1, order_by=[order])
        mark += [(run.info.run_id, run.info.status, run.info.end_time) for run in newest]
    return tuple(mark)


def list_runs(experiment: str, rows: list[Row] | None = None) -> pd.DataFrame:
    """The experiment's complete rows (`rows`, else read), newest first, with their dataset.
    Raises TrackingError when the store or the experiment does not exist (nothing is created)."""
    rows = read_rows(experiment) if rows is None else rows
    table = compare.comparison(rows)
    if table.empty:
        return table
    by_id = {row.run_id: row for row in rows}
    table.insert(1, "dataset", [by_id[run_id].params.get(names.DATA_NAME) for run_id in table["run_id"]])
    table["started"] = [pd.Timestamp(by_id[run_id].start_time, unit="ms", tz="UTC") for run_id in table["run_id"]]
    return table.sort_values("started", ascending=False).reset_index(drop=True)


def list_configurations(experiment: str, rows: list[Row] | None = None) -> pd.DataFrame:
    """The experiment's configurations as `make compare` prints them: one line each, with n, the
    seeds, and each headline metric as its seeds' mean ± the half-width of the 95% interval."""
    rows = read_rows(experiment) if rows is None else rows
    return compare.readable_aggregate(compare.aggregate(rows), list(names.HEADLINE_METRICS))


def tables(experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(list_runs, list_configurations) from one reading of the rows."""
    rows = read_rows(experiment)
    return list_runs(experiment, rows), list_configurations(experiment, rows)


def experiments() -> list[str]:
    """The result experiments in the store (not the datasets' or classifiers'); empty when there is no store."""
    if store.missing_local_store() is not None:
        return []
    _, client = store.connect()
    own = {name for name in names.STAGE_EXPERIMENT.values() if name}
    return sorted(e.name for e in client.search_experiments() if e.name not in own)


@dataclass
class LoadedRun:
    """One recorded run's models and the test images of its data, on `device`."""

    run_id: str
    vae: VAE
    generators: dict[str, Decoder]  # GAN generators by init: decoder, scratch
    x_test: torch.Tensor  # (N, C, H, W) in [0, 1]
    y_test: np.ndarray
    kl_per_dim: torch.Tensor  # (latent_dim,) mean KL per dimension on the test images, in nats

    @property
    def latent_dim(self) -> int:
        return self.vae.arch.latent_dim

    @property
    def decoders(self) -> dict[str, Decoder]:
        """Every network that maps the prior's z to an image, by the name the app shows."""
        return {"VAE decoder": self.vae.decoder} | {f"GAN from {init}": g for init, g in self.generators.items()}

    def most_active(self, count: int) -> list[int]:
        """The `count` latent dimensions with the highest KL, highest first."""
        return torch.argsort(self.kl_per_dim, descending=True)[:count].tolist()


def test_split(row: Row, data_hash: str) -> Splits:
    """The test images of the data a run was trained on (see module docstring). The row's params
    are read only when the workspace's splits are not that data."""
    workspace = store.project_root() / paths.SPLITS
    if workspace.exists():
        splits = load_splits(workspace)
        if content_hash(splits) == data_hash:
            return splits
    try:
        config = row.config()
    except ConfigError as error:
        raise DataError(f"the run's params are incomplete or malformed ({error})") from None
    with tempfile.TemporaryDirectory(prefix="explorer-data-") as workdir:
        splits = build_splits(config.data, Path(workdir))
    if content_hash(splits) != data_hash:
        raise DataError(f"the {config.data.name} data rebuilt from the run's params does not match the data it was "
                        f"trained on (content hash {data_hash[:12]}); rerun `dvc repro download` with its params")
    return splits


def load_run(run_id: str, device: str = "cpu") -> LoadedRun:
    """Load a run's VAE and GAN generators from its MLflow artifacts, and its test images."""
    row = read_row(run_id)
    _, client = store.connect()
    with tempfile.TemporaryDirectory(prefix="explorer-run-") as folder:
        try:
            vae_path = Path(client.download_artifacts(row.source_run("train_vae"), "vae/checkpoint.pt", folder))
            generators_path = Path(client.download_artifacts(row.source_run("train_gan"), "gan/generators", folder))
        except Exception as error:  # MLflow raises several types for a missing artifact or store
            raise CheckpointError(f"run {run_id}'s models could not be read from its MLflow artifacts "
                                  f"({type(error).__name__}: {str(error)[:200]})") from None
        vae, checkpoint = load_vae(vae_path)
        gans = load_gans(generators_path, vae.arch.latent_dim)
    splits = test_split(row, checkpoint["config"]["data_hash"])
    vae = vae.to(device)
    x_test = to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    mu, logvar = latent.posterior(vae, x_test)
    return LoadedRun(run_id=run_id, vae=vae,
                     generators={init: g.to(device) for init, (g, _) in gans.items()},
                     x_test=x_test, y_test=splits.y_test, kl_per_dim=kl_per_dimension(mu, logvar).cpu())


# ---------------------------------------------------------------------------------------------
# What the pages draw: tensors in [0, 1], (N, C, H, W), on the CPU (pipeline.core.latent computes)


def generate(run: LoadedRun, count: int, seed: int) -> dict[str, torch.Tensor]:
    """Samples of every decoder of the run from the same noise."""
    z = latent.prior_noise(run.latent_dim, count, seed).to(run.x_test.device)
    with torch.inference_mode():
        return {name: decoder(z).cpu() for name, decoder in run.decoders.items()}


def reconstruct(vae: VAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstructions from the posterior mean, and each image's MSE per pixel (as `evaluate`)."""
    reconstructed = latent.reconstruct(vae, images)
    return reconstructed.cpu(), (reconstructed - images).pow(2).flatten(1).mean(dim=1).cpu()


def latent_means(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """(N, latent_dim) posterior means."""
    return latent.posterior_means(vae, images).cpu()


def interpolate(vae: VAE, a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """Decode `steps` points on the line between the posterior means of images a and b (C, H, W)."""
    mu = latent.posterior_means(vae, torch.stack([a, b]))
    return latent.interpolate(vae.decoder, mu[:1], mu[1:], steps).cpu()


def decode(decoder: Decoder, z: torch.Tensor | list[float]) -> torch.Tensor:
    """Decode latent points (N, latent_dim), or one point given as a list, to images."""
    return latent.decode(decoder, z).cpu()


def as_picture(images: torch.Tensor) -> np.ndarray:
    """Images (N, C, H, W) or a grid (C, H, W) in [0, 1] as what st.image shows: (..., H, W[, 3])."""
    array = images.clamp(0, 1).numpy()
    channels_last = np.moveaxis(array, -3, -1)
    return channels_last[..., 0] if channels_last.shape[-1] == 1 else channels_last


# ---------------------------------------------------------------------------------------------
# Training: one DVC experiment at a time

JOB_DIR = Path(".dvc/tmp/explorer")
# The params the Train page offers; other params come from params.yaml.
TRAINABLE = ("latent_dim", "seed", "vae.epochs", "vae.beta", "gan.epochs")


class TrainingBusy(PipelineError):
    """A training job is running already."""


def job_dir() -> Path:
    return store.project_root() / JOB_DIR


def _set(raw: dict, dotted: str, value) -> None:
    *sections, key = dotted.split(".")
    for section in sections:
        raw = raw[section]
    raw[key] = value


def check_settings(settings: dict) -> Config:
    """params.yaml's config with `settings` applied; raises ConfigError when it is not valid.
    Nothing is written."""
    unknown = sorted(set(settings) - set(TRAINABLE))
    if unknown:
        raise ConfigError(f"the explorer cannot set {', '.join(unknown)}; it sets {', '.join(TRAINABLE)}")
    raw = yaml.safe_load((store.project_root() / PARAMS_FILE).read_text())
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
    from pipeline.tools.sweep import check_git

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
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
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
    """The MLflow row that DVC experiment `name` left its result in (None if it left none), and
    whether that row is an earlier one: with params computed before, DVC restores their outputs
    from its run cache and runs (and records) nothing new."""
    from pipeline.tools.sweep import result_run_id

    run_id = result_run_id(name)
    if run_id is None:
        return None, False
    return run_id, read_row(run_id).tags.get(names.EXP_NAME_TAG) != name
