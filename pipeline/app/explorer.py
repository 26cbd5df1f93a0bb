"""What the explorer app (`pipeline/app/app.py`, `make app`) shows and does, without Streamlit: the
recorded runs, a run's models loaded from its MLflow artifacts with the pipeline's own loaders,
samples, reconstructions and latent walks as tensors.

Runs
    The complete rows of an MLflow experiment, as `make compare` lists them. A row's
    models come from its artifacts (`vae/checkpoint.pt`, `gan/generators/<init>.pt`), so every
    recorded run can be explored, not only the workspace's. Its test images come from the
    workspace's `outputs/data/splits.npz` when that holds the run's data (same content hash),
    and are rebuilt from the run's `data.*` params otherwise.


The Train page's job (one `dvc exp run --temp` at a time) is training_job.py's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.core import latent
from pipeline.core.checkpoints import load_gans, load_vae
from pipeline.core.config import ConfigError
from pipeline.core.data import Splits, build_splits, content_hash, load_splits
from pipeline.core.errors import CheckpointError, DataError
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
    """The result experiments in the store (not the datasets' or classifiers', nor MLflow's empty
    Default: those `make ui` lists); empty when there is no store."""
    if store.missing_local_store() is not None:
        return []
    _, client = store.connect()
    return sorted(e.name for e in client.search_experiments() if names.is_result_experiment(e.name))


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
        gans = load_gans(generators_path, {"architecture": {"latent_dim": vae.arch.latent_dim}})
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
