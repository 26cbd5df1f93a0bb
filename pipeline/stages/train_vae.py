"""Stage `train_vae`: train the VAE on the training split, judge it on the test split after every
epoch, and start the result's MLflow row."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from pipeline.core.checkpoints import VAE_KIND, save_checkpoint, vae_architecture, vae_config
from pipeline.core.config import Config, load_config, resolve_device
from pipeline.core.data import Splits, dataset_facts, load_splits
from pipeline.core.images import GRID_ROWS, image_grid, save_png
from pipeline.core.io import atomic_dir, staged, write_csv, write_json
from pipeline.core.latent import prior_noise, reconstruct
from pipeline.core.losses import kl_weight
from pipeline.core.models import VAE
from pipeline.core.training import adam, check_finite, encoder_gradient_norms, to_unit_float, vae_epoch, vae_evaluate
from pipeline.stages import params_guard, paths

log = logging.getLogger(__name__)

PROBE_IMAGES = 128  # training images the encoder's gradients are measured on after each epoch


@dataclass
class TrainResult:
    model: VAE
    history: list[dict[str, float]]  # one row per epoch: epoch, kl_weight, train_*, test_*
    seconds: float

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


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
    model = VAE(vae_architecture(config, splits.image_shape)).to(device)
    optimizer = adam(model.parameters(), lr=vae.learning_rate)
    x_train = to_unit_float(torch.from_numpy(splits.x_train)).to(device)  # (N, C, H, W)
    x_test = to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(range(vae.epochs), desc="train_vae", unit="epoch", disable=None)
    for epoch in bar:
        scale = kl_weight(epoch, vae.beta, vae.kl_warmup_epochs)
        train = vae_epoch(model, optimizer, x_train, batch_size=vae.batch_size, kind=vae.reconstruction,
                          kl_scale=scale, generator=generator, epoch=epoch)
        test = vae_evaluate(model, x_test, batch_size=vae.batch_size, kind=vae.reconstruction, kl_scale=scale,
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


def sample_grid(decoder, latent_dim: int, count: int, seed: int) -> torch.Tensor:
    """Decode `count` draws of the prior from a fixed seed: a (3, H', W') grid image."""
    with torch.inference_mode():
        return image_grid(decoder(prior_noise(latent_dim, count, seed)))


def reconstruction_grid(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """Rows of test images, each followed by a row of their reconstructions from mu."""
    x = images[: (len(images) // GRID_ROWS) * GRID_ROWS]
    reconstructed = reconstruct(model, x)
    pairs = torch.stack([x.view(-1, GRID_ROWS, *x.shape[1:]), reconstructed.view(-1, GRID_ROWS, *x.shape[1:])], 1)
    return image_grid(pairs.flatten(0, 2))


def main() -> None:
    import mlflow
    import mlflow.pytorch
    import numpy as np

    from pipeline.tracking import names, provenance, record

    config = load_config()
    device = resolve_device(config.device)
    splits = load_splits(paths.SPLITS)
    facts = dataset_facts(splits)
    log.info("training on %s (%d images) on %s", splits.name, len(splits.y_train), device)

    def log_epoch(epoch: int, row: dict[str, float]) -> None:
        mlflow.log_metrics({names.metric("train_vae", k): v for k, v in row.items() if k != "epoch"}, step=epoch)
        params_guard.unchanged()  # a run hijacked by a params.yaml edit stops at once, not after training

    # The outputs are written aside and appear together once the row is recorded (pipeline.core.io).
    with atomic_dir(paths.VAE_DIR) as out, \
            record.stage_run("train_vae", config, run_name=provenance.run_name(config)) as active:
        record.log_dataset(splits, facts)
        result = run(config, splits, device, on_epoch=log_epoch)
        model = result.model
        # DVC metrics hold only what the params determine, so a rerun reproduces the file bit for
        # bit and `dvc metrics diff` shows real changes; timings go to MLflow alone.
        metrics = {k: v for k, v in result.final.items() if k != "epoch"} | {"epochs": config.vae.epochs}
        mlflow.log_metrics({names.metric("train_vae", "train_seconds"): result.seconds,
                            names.metric("train_vae", "train_images_per_s"):
                                config.vae.epochs * len(splits.y_train) / result.seconds})

        save_checkpoint(staged(out, paths.VAE_CHECKPOINT), kind=VAE_KIND, state_dict=model.state_dict(),
                        config=vae_config(config, model.arch, facts["content_hash"]),
                        epoch=config.vae.epochs, metrics=metrics)
        write_csv(staged(out, paths.VAE_HISTORY), result.history)
        write_json(staged(out, paths.VAE_METRICS), metrics)
        test_images = to_unit_float(torch.from_numpy(splits.x_test[: 4 * GRID_ROWS]))
        samples = sample_grid(model.decoder, config.latent_dim, GRID_ROWS * GRID_ROWS, config.seed)
        save_png(staged(out, paths.VAE_SAMPLES), samples)
        save_png(staged(out, paths.VAE_RECONSTRUCTIONS), reconstruction_grid(model, test_images))

        for path in (paths.VAE_SAMPLES, paths.VAE_RECONSTRUCTIONS, paths.VAE_HISTORY, paths.VAE_CHECKPOINT):
            mlflow.log_artifact(str(staged(out, path)), artifact_path="vae")
        torch_version = torch.__version__.split("+")[0]  # the local tag (+cpu, +cu132) is not on PyPI
        mlflow.pytorch.log_model(model.decoder, name="vae_decoder", pip_requirements=[f"torch=={torch_version}"],
                                 input_example=np.zeros((2, config.latent_dim), dtype=np.float32))
        record.write_run_file(staged(out, paths.VAE_RUN), active)
        params_guard.unchanged()  # before the row is finished and the outputs appear
    log.info("done: test negative ELBO %.3f nats per image", metrics["test_neg_elbo"])


if __name__ == "__main__":
    from pipeline.stages.cli import run_stage

    run_stage("train_vae", main)
