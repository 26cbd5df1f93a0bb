"""Stage `train_vae`: train the VAE on the training split, judge it on the test split.

The loop keeps the whole split on the device as one tensor and draws shuffled index batches
from a seeded generator: no per-image Dataset conversion, and the same params give the same
numbers on CPU, run after run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import paths
from pipeline.config import Config, load_config, resolve_device
from pipeline.download import Splits, dataset_facts, load_splits
from pipeline.errors import CheckpointError
from pipeline.io import load_checkpoint, save_checkpoint, write_json
from pipeline.losses import kl_weight, vae_loss
from pipeline.models import VAE, VAEArchitecture
from pipeline.training import GRID_ROWS, adam, check_finite, image_grid, save_png, to_unit_float, write_csv

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "vae"
PROBE_IMAGES = 128  # training images the encoder's gradients are measured on after each epoch


@dataclass
class TrainResult:
    model: VAE
    history: list[dict[str, float]]  # one row per epoch: epoch, kl_weight, train_*, test_*
    seconds: float

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


def train_epoch(model, optimizer, x, *, batch_size, kind, kl_scale, generator, epoch) -> dict[str, float]:
    """One pass over `x` in shuffled batches; returns the per-image mean of each loss term."""
    model.train()
    totals: dict[str, float] = {}
    order = torch.randperm(len(x), generator=generator, device=x.device)
    for start in range(0, len(x), batch_size):
        batch = x[order[start : start + batch_size]]  # (B, C, H, W)
        logits, mu, logvar = model(batch, generator)
        terms = vae_loss(logits, batch, mu, logvar, kind=kind, kl_scale=kl_scale)
        values = {name: value.item() for name, value in terms.items()}
        check_finite(values, epoch, "training")
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value * len(batch)
    return {name: total / len(x) for name, total in totals.items()}


@torch.inference_mode()
def evaluate(model, x, *, batch_size, kind, kl_scale, seed) -> dict[str, float]:
    """Per-image mean loss terms on `x`, with the same posterior noise at every call."""
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    totals: dict[str, float] = {}
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        logits, mu, logvar = model(batch, generator)
        for name, value in vae_loss(logits, batch, mu, logvar, kind=kind, kl_scale=kl_scale).items():
            totals[name] = totals.get(name, 0.0) + value.item() * len(batch)
    return {name: total / len(x) for name, total in totals.items()}


def encoder_gradient_norms(model: VAE, x: torch.Tensor, *, kind: str, seed: int) -> dict[str, float]:
    """L2 norms of the gradients that the reconstruction term and the KL term of the loss on `x`
    send to the encoder's weights (their batch means, noise drawn from `seed`); nothing is updated.

    The reconstruction term reaches the encoder only through the sample z = mu + sigma * eps: that
    path is the reparameterisation trick, and without it this gradient would be zero. The KL term
    reaches it directly, through mu and logvar in closed form.
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    logits, mu, logvar = model(x, generator)
    terms = vae_loss(logits, x, mu, logvar, kind=kind, kl_scale=1.0)
    weights = list(model.encoder.parameters())
    norms = {}
    for name in ("reconstruction", "kl"):
        grads = torch.autograd.grad(terms[name], weights, retain_graph=True, allow_unused=True)  # None: no path
        norms[name] = math.sqrt(sum(g.pow(2).sum().item() for g in grads if g is not None))
    return norms


def run(
    config: Config,
    splits: Splits,
    device: str,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a VAE as `config` says; `on_epoch(epoch, row)` is called after each epoch."""
    vae = config.vae
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = VAE(architecture(config, splits.image_shape)).to(device)
    optimizer = adam(model.parameters(), lr=vae.learning_rate)
    x_train = to_unit_float(torch.from_numpy(splits.x_train)).to(device)  # (N, C, H, W)
    x_test = to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(range(vae.epochs), desc="train_vae", unit="epoch", disable=None)
    for epoch in bar:
        scale = kl_weight(epoch, vae.beta, vae.kl_warmup_epochs)
        train = train_epoch(model, optimizer, x_train, batch_size=vae.batch_size, kind=vae.reconstruction,
                            kl_scale=scale, generator=generator, epoch=epoch)
        test = evaluate(model, x_test, batch_size=vae.batch_size, kind=vae.reconstruction, kl_scale=scale,
                        seed=config.seed)
        check_finite(test, epoch, "test")
        probe = encoder_gradient_norms(model, x_train[:PROBE_IMAGES], kind=vae.reconstruction, seed=config.seed)
        row = {"epoch": epoch + 1, "kl_weight": scale}
        row |= {f"train_{k}": v for k, v in train.items()} | {f"test_{k}": v for k, v in test.items()}
        row |= {f"encoder_grad_{k}": v for k, v in probe.items()}
        history.append(row)
        bar.set_postfix(loss=f"{train['loss']:.2f}", test=f"{test['loss']:.2f}")
        if bar.disable:
            log.info("epoch %d/%d  train loss %.3f  test loss %.3f  (recon %.3f, kl %.3f)", epoch + 1,
                     vae.epochs, train["loss"], test["loss"], test["reconstruction"], test["kl"])
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
    return TrainResult(model.cpu(), history, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# Pictures


@torch.inference_mode()
def sample_grid(decoder, latent_dim: int, count: int, seed: int) -> torch.Tensor:
    """Decode `count` draws of the prior from a fixed seed: a (3, H', W') grid image."""
    z = torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(seed))
    return image_grid(decoder(z))


@torch.inference_mode()
def reconstruction_grid(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """Rows of test images, each followed by a row of their reconstructions from mu."""
    x = images[: (len(images) // GRID_ROWS) * GRID_ROWS]
    reconstructed = model.decoder(model.encoder(x)[0])
    pairs = torch.stack([x.view(-1, GRID_ROWS, *x.shape[1:]), reconstructed.view(-1, GRID_ROWS, *x.shape[1:])], 1)
    return image_grid(pairs.flatten(0, 2))


# ---------------------------------------------------------------------------------------------
# Checkpoint


def architecture(config: Config, image_shape: tuple[int, int, int]) -> VAEArchitecture:
    """The VAE's architecture for `config` and images of `image_shape`."""
    return VAEArchitecture(config.vae.architecture, image_shape, config.latent_dim, config.vae.hidden_dim)


def checkpoint_config(config: Config, arch: VAEArchitecture, data_hash: str) -> dict:
    return {"architecture": arch.to_dict(), "vae": dataclasses.asdict(config.vae), "seed": config.seed,
            "data_hash": data_hash}


def load_vae(path: Path = paths.VAE_CHECKPOINT, latent_dim: int | None = None) -> tuple[VAE, dict]:
    """Rebuild the VAE from its checkpoint alone; check `latent_dim` if given."""
    checkpoint = load_checkpoint(path, kind=CHECKPOINT_KIND, stage="train_vae")
    arch = VAEArchitecture.from_dict(checkpoint["config"]["architecture"])
    if latent_dim is not None and arch.latent_dim != latent_dim:
        raise CheckpointError(
            f"{path} has latent_dim {arch.latent_dim} but params.yaml says {latent_dim}; rerun `dvc repro train_vae`"
        )
    model = VAE(arch)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


def main() -> None:
    import mlflow
    import mlflow.pytorch
    import numpy as np

    from pipeline import tracking

    config = load_config()
    device = resolve_device(config.device)
    splits = load_splits()
    facts = dataset_facts(splits)
    log.info("training on %s (%d images) on %s", splits.name, len(splits.y_train), device)

    def log_epoch(epoch: int, row: dict[str, float]) -> None:
        mlflow.log_metrics({f"vae/{k}": v for k, v in row.items() if k != "epoch"}, step=epoch)

    with tracking.stage_run("train_vae", config, experiment=config.experiment_name,
                            run_name=tracking.run_name(config)) as active:
        tracking.log_dataset(splits, facts)
        result = run(config, splits, device, on_epoch=log_epoch)
        model = result.model
        # DVC metrics hold only what the params determine, so a rerun reproduces the file bit for
        # bit and `dvc metrics diff` shows real changes; timings go to MLflow alone.
        metrics = {k: v for k, v in result.final.items() if k != "epoch"} | {"epochs": config.vae.epochs}
        mlflow.log_metrics({"vae/train_seconds": result.seconds,
                            "vae/train_images_per_s": config.vae.epochs * len(splits.y_train) / result.seconds})

        save_checkpoint(paths.VAE_CHECKPOINT, kind=CHECKPOINT_KIND, state_dict=model.state_dict(),
                        config=checkpoint_config(config, model.arch, facts["content_hash"]),
                        epoch=config.vae.epochs, metrics=metrics)
        write_csv(paths.VAE_HISTORY, result.history)
        write_json(paths.VAE_METRICS, metrics)
        test_images = to_unit_float(torch.from_numpy(splits.x_test[: 4 * GRID_ROWS]))
        save_png(paths.VAE_SAMPLES, sample_grid(model.decoder, config.latent_dim, GRID_ROWS * GRID_ROWS, config.seed))
        save_png(paths.VAE_RECONSTRUCTIONS, reconstruction_grid(model, test_images))

        for path in (paths.VAE_SAMPLES, paths.VAE_RECONSTRUCTIONS, paths.VAE_HISTORY, paths.VAE_CHECKPOINT):
            mlflow.log_artifact(str(path), artifact_path="vae")
        torch_version = torch.__version__.split("+")[0]  # the local tag (+cpu, +cu132) is not on PyPI
        mlflow.pytorch.log_model(model.decoder, name="vae_decoder", pip_requirements=[f"torch=={torch_version}"],
                                 input_example=np.zeros((2, config.latent_dim), dtype=np.float32))
        tracking.write_run_file(paths.VAE_RUN, active)
    log.info("done: test negative ELBO %.3f nats per image", metrics["test_neg_elbo"])


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage("train_vae", main)
