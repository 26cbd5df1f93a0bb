"""Stage `train_vae`: train the VAE on the training split, judge it on the test split after every
epoch, and start the result's MLflow row."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.core.checkpoints import VAE_KIND, save_checkpoint, seed_name, vae_architecture, vae_config
from pipeline.core.config import Config, load_config, resolve_device
from pipeline.core.data import Splits, dataset_facts, load_splits
from pipeline.core.images import GRID_ROWS, image_grid, save_png
from pipeline.core.io import atomic_dir, csv_text, staged, write_csv, write_json
from pipeline.core.latent import prior_noise, reconstruct
from pipeline.core.losses import kl_weight
from pipeline.core.models import VAE
from pipeline.core.replicas import Stack, build_seeded, stream, stream_seed
from pipeline.core.stats import mean_rows
from pipeline.core.training import adam, check_finite, encoder_gradient_norms, to_unit_float, vae_epoch, vae_evaluate
from pipeline.stages import params_guard, paths

log = logging.getLogger(__name__)

PROBE_IMAGES = 128  # training images the encoder's gradients are measured on after each epoch


@dataclass
class TrainResult:
    """One seed's trained VAE and its history."""

    seed: int
    model: VAE
    history: list[dict[str, float]]  # one row per epoch: epoch, kl_weight, train_*, test_*, encoder_grad_*

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


@dataclass
class Training:
    """Every seed's result, in the order of `seeds`, and the time they took together."""

    results: list[TrainResult]
    seconds: float


def run(
    config: Config,
    splits: Splits,
    device: str,
    on_epoch: Callable[[int, list[dict[str, float]]], None] | None = None,
) -> Training:
    """Train one VAE per seed of `config`, all at once (pipeline.core.replicas): each starts from
    the weights its seed draws alone and sees its own batch order and noise. `on_epoch(epoch,
    rows)` is called after each epoch with every seed's history row."""
    vae = config.vae
    torch.use_deterministic_algorithms(True, warn_only=True)
    arch = vae_architecture(config, splits.image_shape)
    models = [build_seeded(lambda: VAE(arch), seed, "vae/weights").to(device) for seed in config.seeds]
    vaes = Stack(models)
    optimizer = adam(vaes.parameters(), lr=vae.learning_rate)
    x_train = to_unit_float(torch.from_numpy(splits.x_train)).to(device)  # (N, C, H, W)
    x_test = to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    orders = [stream(seed, "vae/batches", device) for seed in config.seeds]
    noises = [stream(seed, "vae/noise", device) for seed in config.seeds]

    histories: list[list[dict[str, float]]] = [[] for _ in config.seeds]
    started = time.perf_counter()
    bar = tqdm(range(vae.epochs), desc="train_vae", unit="epoch", disable=None)
    for epoch in bar:
        scale = kl_weight(epoch, vae.beta, vae.kl_warmup_epochs)
        trains = vae_epoch(vaes, optimizer, x_train, latent_dim=config.latent_dim, batch_size=vae.batch_size,
                           kind=vae.reconstruction, kl_scale=scale, orders=orders, noises=noises, epoch=epoch)
        rows = []
        for i, (seed, model, train) in enumerate(zip(config.seeds, models, trains)):
            vaes.load_into(i, model)  # the seed's own module, for the measures below
            test = vae_evaluate(model, x_test, batch_size=vae.batch_size, kind=vae.reconstruction, kl_scale=scale,
                                generator=stream(seed, "vae/samples", device))
            check_finite(test, epoch, "test")
            probe = encoder_gradient_norms(model, x_train[:PROBE_IMAGES], kind=vae.reconstruction,
                                           generator=stream(seed, "vae/samples", device))
            row = {"epoch": epoch + 1, "kl_weight": scale}
            row |= {f"train_{k}": v for k, v in train.items()} | {f"test_{k}": v for k, v in test.items()}
            row |= {f"encoder_grad_{k}": v for k, v in probe.items()}
            histories[i].append(row)
            rows.append(row)
        train_loss = sum(row["train_loss"] for row in rows) / len(rows)
        test_loss = sum(row["test_loss"] for row in rows) / len(rows)
        bar.set_postfix(loss=f"{train_loss:.2f}", test=f"{test_loss:.2f}")
        if bar.disable:
            log.info("epoch %d/%d  train loss %.3f  test loss %.3f  (mean of %d seeds)", epoch + 1, vae.epochs,
                     train_loss, test_loss, len(rows))
        if on_epoch is not None:
            on_epoch(epoch + 1, rows)
    seconds = time.perf_counter() - started
    results = [TrainResult(seed, vaes.load_into(i, model).cpu().eval(), history)
               for i, (seed, model, history) in enumerate(zip(config.seeds, models, histories))]
    return Training(results, seconds)


def seed_rows(histories: dict[int, list[dict]]) -> list[dict]:
    """Every seed's history in one table, with a `seed` column first."""
    return [{"seed": seed, **row} for seed, rows in histories.items() for row in rows]


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

    from pipeline.tracking import names, record

    config = load_config()
    device = resolve_device(config.device)
    splits = load_splits(paths.SPLITS)
    facts = dataset_facts(splits)
    log.info("training on %s (%d images) on %s, seeds %s", splits.name, len(splits.y_train), device,
             ", ".join(map(str, config.seeds)))

    def check_params(epoch: int, rows: list[dict[str, float]]) -> None:
        params_guard.unchanged()  # a run hijacked by a params.yaml edit stops at once, not after training

    training = run(config, splits, device, on_epoch=check_params)
    test_images = to_unit_float(torch.from_numpy(splits.x_test[: 4 * GRID_ROWS]))
    torch_version = torch.__version__.split("+")[0]  # the local tag (+cpu, +cu132) is not on PyPI
    # The outputs are written aside and appear together once the rows are recorded (pipeline.core.io).
    with atomic_dir(paths.VAE_DIR) as out, record.seed_runs("train_vae", config) as rows:
        checkpoints = staged(out, paths.VAE_CHECKPOINTS)
        checkpoints.mkdir(parents=True, exist_ok=True)
        seed_metrics = {}
        for result in training.results:
            model, seed = result.model, result.seed
            # DVC metrics hold only what the params determine, so a rerun reproduces the file bit for
            # bit and `dvc metrics diff` shows real changes; timings go to MLflow alone.
            metrics = {k: v for k, v in result.final.items() if k != "epoch"} | {"epochs": config.vae.epochs}
            seed_metrics[seed] = metrics
            checkpoint = checkpoints / seed_name(seed, ".pt")
            save_checkpoint(checkpoint, kind=VAE_KIND, state_dict=model.state_dict(),
                            config=vae_config(config, model.arch, seed, facts["content_hash"]),
                            epoch=config.vae.epochs, metrics=metrics)
            samples = sample_grid(model.decoder, config.latent_dim, GRID_ROWS * GRID_ROWS, stream_seed(seed, "samples"))
            with rows.seed(seed):
                record.log_dataset(splits, facts)
                record.log_steps([(names.metric("train_vae", k), v, row["epoch"])
                                  for row in result.history for k, v in row.items() if k != "epoch"])
                mlflow.log_metrics({names.metric("train_vae", "train_seconds"): training.seconds,
                                    names.metric("train_vae", "train_images_per_s"):
                                        len(config.seeds) * config.vae.epochs * len(splits.y_train) / training.seconds})
                mlflow.log_image(samples.permute(1, 2, 0).numpy(), artifact_file="vae/samples.png")
                mlflow.log_image(reconstruction_grid(model, test_images).permute(1, 2, 0).numpy(),
                                 artifact_file="vae/reconstructions.png")
                mlflow.log_text(csv_text(result.history), "vae/history.csv")
                with tempfile.TemporaryDirectory(prefix="train_vae-") as folder:  # under the name readers look for
                    shutil.copyfile(checkpoint, Path(folder) / "checkpoint.pt")
                    mlflow.log_artifact(str(Path(folder) / "checkpoint.pt"), artifact_path="vae")
                mlflow.pytorch.log_model(model.decoder, name="vae_decoder", pip_requirements=[f"torch=={torch_version}"],
                                         input_example=np.zeros((2, config.latent_dim), dtype=np.float32))
        first = training.results[0]
        save_png(staged(out, paths.VAE_SAMPLES), sample_grid(first.model.decoder, config.latent_dim,
                                                             GRID_ROWS * GRID_ROWS, stream_seed(first.seed, "samples")))
        save_png(staged(out, paths.VAE_RECONSTRUCTIONS), reconstruction_grid(first.model, test_images))
        histories = {result.seed: result.history for result in training.results}
        write_csv(staged(out, paths.VAE_HISTORY), mean_rows(list(histories.values())))
        write_csv(staged(out, paths.VAE_SEED_HISTORY), seed_rows(histories))
        write_json(staged(out, paths.VAE_METRICS), {str(seed): metrics for seed, metrics in seed_metrics.items()})
        record.write_run_file(staged(out, paths.VAE_RUN), rows)
        params_guard.unchanged()  # before the rows are finished and the outputs appear
    log.info("done in %.1f s: test negative ELBO %s nats per image (seeds %s)", training.seconds,
             ", ".join(f"{m['test_neg_elbo']:.3f}" for m in seed_metrics.values()), ", ".join(map(str, seed_metrics)))


if __name__ == "__main__":
    from pipeline.stages.cli import run_stage

    run_stage("train_vae", main)
