"""Stage `train_gan`: a GAN whose generator starts as the trained VAE decoder, and the same GAN
from scratch beside it.

The generator is a `Decoder` (z ~ N(0, I) of size latent_dim -> image in [0, 1]). With
`gan.init: decoder` it starts from the VAE decoder's trained weights; with `scratch` from random
ones. The discriminator is new in both cases. Both GANs share the seed, so they start from the
same discriminator, see the same batches and noise, and differ only in the generator's start.

After every epoch (and before the first) the stage scores the generator's samples from one fixed
noise tensor in the classifier's feature space (the FID-style score of the evaluation) against the
test split, and records their class spread, so mode collapse shows in the history. The VAE's own
prior samples, scored the same way from the same noise, are the bar: `epochs_to_beat_vae_prior`
is the first epoch at which a GAN's score is better (lower).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import paths
from pipeline.config import Config, GANConfig, load_config, resolve_device
from pipeline.download import Splits, dataset_facts, load_splits
from pipeline.errors import CheckpointError
from pipeline.io import atomic_dir, load_checkpoint, save_checkpoint, write_json
from pipeline.losses import discriminator_loss, generator_loss
from pipeline.metrics import Scorer, class_spread
from pipeline.models import VAE, Decoder, Discriminator, VAEArchitecture
from pipeline.training import (GRID_ROWS, adam, check_finite, image_grid, in_batches, save_png, to_unit_float,
                               write_csv)

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "gan_generator"
ADAM_BETA2 = 0.999
MEASURES = ("d_loss", "g_loss", "d_real", "d_fake", "fid", "classes", "label_entropy")


def models_to_train(gan: GANConfig) -> list[str]:
    """The GANs this config trains, named by their generator's start: decoder and/or scratch."""
    return ["decoder", "scratch"] if gan.init == "decoder" and gan.compare_scratch else [gan.init]


def snapshot_epochs(epochs: int, count: int) -> list[int]:
    """`count` epochs spread evenly before the last, at which a sample grid is kept."""
    return sorted({round(epochs * (i + 1) / (count + 1)) for i in range(count)} - {0, epochs})


def make_generator(vae: VAE, init: str) -> Decoder:
    """The generator: the decoder's architecture, with its trained weights when init is 'decoder'.

    With 'scratch' the weights are PyTorch's default initialisation, drawn from the current seed.
    """
    generator = Decoder(vae.arch)
    if init == "decoder":
        generator.load_state_dict(vae.decoder.state_dict())
    elif init != "scratch":
        raise ValueError(f"unknown generator init {init!r}")
    return generator


def discriminator_step(discriminator, optimizer, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """One discriminator update on a real and a generated batch. `fake` must be detached from the
    generator, so this step does not compute (or apply) gradients for the generator."""
    if fake.requires_grad:
        raise ValueError("the discriminator step needs the fake batch detached from the generator")
    real_logits, fake_logits = discriminator(real), discriminator(fake)
    loss = discriminator_loss(real_logits, fake_logits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"d_loss": loss.item(), "d_real": torch.sigmoid(real_logits).mean().item(),
            "d_fake": torch.sigmoid(fake_logits).mean().item()}


def generator_step(discriminator, optimizer, fake: torch.Tensor) -> dict[str, float]:
    """One generator update: push D(G(z)) up (the non-saturating loss). Only the generator's
    optimizer steps; the discriminator's gradients from this pass are discarded at its next step."""
    loss = generator_loss(discriminator(fake))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"g_loss": loss.item()}


def train_epoch(generator: Decoder, discriminator: Discriminator, optimizer_g, optimizer_d, x: torch.Tensor, *,
                latent_dim: int, batch_size: int, batches: torch.Generator, epoch: int,
                name: str = "GAN") -> dict[str, float]:
    """One pass over `x` in shuffled batches, a discriminator step then a generator step on each,
    with noise and order drawn from `batches`; returns the per-image mean of each step measure."""
    totals = dict.fromkeys(MEASURES[:4], 0.0)
    order = torch.randperm(len(x), generator=batches, device=x.device)
    for start in range(0, len(x), batch_size):
        real = x[order[start : start + batch_size]]
        z = torch.randn(len(real), latent_dim, generator=batches, device=x.device)
        fake = generator(z)
        step = discriminator_step(discriminator, optimizer_d, real, fake.detach())
        step |= generator_step(discriminator, optimizer_g, fake)
        check_finite(step, epoch, name, "lower gan.learning_rate")
        for key, value in step.items():
            totals[key] += value * len(real)
    return {key: total / len(x) for key, total in totals.items()}


def sample_measures(generator: Decoder, noise: torch.Tensor, scorer: Scorer) -> dict[str, float]:
    """FID-style score and class spread of the generator's samples from the fixed `noise`."""
    images = in_batches(generator, noise)
    fid, labels = scorer.fid_and_labels(images)
    return {"fid": fid, **class_spread(labels, scorer.classifier.num_classes)}


@dataclass
class GANRun:
    """One trained GAN: its networks, one history row per epoch (row 0 = before training), the
    sample grids kept on the way ({epoch: grid}) and the training time."""

    generator: Decoder
    discriminator: Discriminator
    history: list[dict[str, float | None]]
    grids: dict[int, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def final(self) -> dict:
        return self.history[-1]


def train_one(init: str, config: Config, vae: VAE, x_train: torch.Tensor, scorer: Scorer, noise: torch.Tensor,
              on_epoch: Callable[[str, dict], None] | None = None) -> GANRun:
    """Train one GAN whose generator starts as `init`; everything else is the same for every init."""
    gan = config.gan
    device = x_train.device
    torch.manual_seed(config.seed)
    generator = make_generator(vae, init).to(device)
    discriminator = Discriminator(vae.arch, gan.discriminator_hidden).to(device)
    options = {"lr": gan.learning_rate, "betas": (gan.adam_beta1, ADAM_BETA2)}
    optimizer_g = adam(generator.parameters(), **options)
    optimizer_d = adam(discriminator.parameters(), **options)
    batches = torch.Generator(device=device).manual_seed(config.seed)
    grid_noise = noise[: GRID_ROWS * GRID_ROWS]
    keep = set(snapshot_epochs(gan.epochs, gan.snapshots)) | {gan.epochs}

    result = GANRun(generator, discriminator, [])
    result.history.append({"epoch": 0, **dict.fromkeys(MEASURES[:4]), **sample_measures(generator, noise, scorer)})
    if on_epoch is not None:
        on_epoch(init, result.history[0])
    started = time.perf_counter()
    for epoch in tqdm(range(gan.epochs), desc=f"train_gan ({init})", unit="epoch", disable=None):
        means = train_epoch(generator, discriminator, optimizer_g, optimizer_d, x_train, latent_dim=vae.arch.latent_dim,
                            batch_size=gan.batch_size, batches=batches, epoch=epoch, name=f"GAN ({init})")
        row = {"epoch": epoch + 1, **means, **sample_measures(generator, noise, scorer)}
        result.history.append(row)
        if epoch + 1 in keep:
            result.grids[epoch + 1] = image_grid(in_batches(generator, grid_noise)).cpu()
        log.info("%s epoch %d/%d  D(x) %.3f  D(G(z)) %.3f  FID-style %.2f  classes %d", init, epoch + 1, gan.epochs,
                 row["d_real"], row["d_fake"], row["fid"], row["classes"])
        if on_epoch is not None:
            on_epoch(init, row)
    result.seconds = time.perf_counter() - started
    result.generator, result.discriminator = generator.cpu().eval(), discriminator.cpu().eval()
    return result


def epochs_to_beat(history: list[dict], bar: float) -> int | None:
    """The first epoch (>= 1) whose FID-style score is below `bar`, or None if none is."""
    return next((row["epoch"] for row in history[1:] if row["fid"] < bar), None)


def summary(runs: dict[str, GANRun], vae_prior_fid: float) -> dict:
    """The stage's DVC metrics: the bar, and per GAN its final measures and when it beat the bar."""
    metrics: dict = {"vae_prior_fid": vae_prior_fid}
    for init, result in runs.items():
        best = min(result.history[1:], key=lambda row: row["fid"])
        metrics[init] = {**{k: v for k, v in result.final.items() if k != "epoch"},
                         "best_fid": best["fid"], "best_epoch": best["epoch"],
                         "epochs_to_beat_vae_prior": epochs_to_beat(result.history, vae_prior_fid)}
    return metrics


def wide_history(runs: dict[str, GANRun], vae_prior_fid: float) -> list[dict]:
    """One row per epoch with `<init>_<measure>` columns for both inits (empty where not trained)."""
    epochs = len(next(iter(runs.values())).history)
    rows = []
    for i in range(epochs):
        row: dict = {"epoch": i, "vae_prior_fid": vae_prior_fid}
        for init in ("decoder", "scratch"):
            values = runs[init].history[i] if init in runs else {}
            row |= {f"{init}_{name}": values.get(name) for name in MEASURES}
        rows.append(row)
    return rows


def run(config: Config, splits: Splits, vae: VAE, classifier, device: str,
        on_epoch: Callable[[str, dict], None] | None = None) -> tuple[dict[str, GANRun], float]:
    """Train the GANs `config` asks for; returns them by init and the VAE prior samples' score."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    vae = vae.to(device)
    x_train = to_unit_float(torch.from_numpy(splits.x_train)).to(device)
    x_test = to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    scorer = Scorer(classifier.to(device), x_test, seed=config.seed)
    noise = torch.randn(config.gan.fid_samples, config.latent_dim,
                        generator=torch.Generator().manual_seed(config.seed)).to(device)
    vae_prior_fid, _ = scorer.fid_and_labels(in_batches(vae.decoder, noise))
    runs = {init: train_one(init, config, vae, x_train, scorer, noise, on_epoch) for init in models_to_train(config.gan)}
    vae.cpu()
    classifier.cpu()
    return runs, vae_prior_fid


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_config(config: Config, arch: VAEArchitecture, init: str, data_hash: str) -> dict:
    return {"architecture": arch.to_dict(), "init": init, "gan": dataclasses.asdict(config.gan),
            "seed": config.seed, "data_hash": data_hash}


def load_gan(path: Path, latent_dim: int | None = None) -> tuple[Decoder, Discriminator, dict]:
    """Rebuild a GAN (generator and its discriminator) from its checkpoint alone; check `latent_dim` if given."""
    checkpoint = load_checkpoint(path, kind=CHECKPOINT_KIND, stage="train_gan")
    arch = VAEArchitecture.from_dict(checkpoint["config"]["architecture"])
    if latent_dim is not None and arch.latent_dim != latent_dim:
        raise CheckpointError(f"{path} has latent_dim {arch.latent_dim} but params.yaml says {latent_dim}; "
                              "rerun `dvc repro train_gan`")
    generator = Decoder(arch)
    generator.load_state_dict(checkpoint["state_dict"])
    discriminator = Discriminator(arch, checkpoint["config"]["gan"]["discriminator_hidden"])
    discriminator.load_state_dict(checkpoint["discriminator_state_dict"])
    return generator.eval(), discriminator.eval(), checkpoint


def load_gans(folder: Path = paths.GAN_GENERATORS,
              latent_dim: int | None = None) -> dict[str, tuple[Decoder, Discriminator]]:
    """Every GAN the GAN stage saved, by init: (generator, discriminator)."""
    found = {init: folder / f"{init}.pt" for init in ("decoder", "scratch") if (folder / f"{init}.pt").exists()}
    if not found:
        raise CheckpointError(f"{folder} holds no generator; run `dvc repro train_gan` first")
    return {init: load_gan(path, latent_dim)[:2] for init, path in found.items()}


def main() -> None:
    import mlflow

    from pipeline import tracking
    from pipeline.train_classifier import load_classifier
    from pipeline.train_vae import load_vae

    config = load_config()
    device = resolve_device(config.device)
    splits = load_splits()
    facts = dataset_facts(splits)
    vae, _ = load_vae(paths.VAE_CHECKPOINT, config.latent_dim)
    classifier = load_classifier(paths.CLASSIFIER_CHECKPOINT, facts["content_hash"])

    def log_epoch(init: str, row: dict) -> None:
        mlflow.log_metrics({f"gan/{init}/{k}": v for k, v in row.items() if k != "epoch" and v is not None},
                           step=row["epoch"])

    with tracking.stage_run("train_gan", config, experiment=config.experiment_name,
                            run_name=tracking.run_name(config),
                            upstream_run_id=tracking.read_run_file(paths.VAE_RUN)) as active:
        runs, vae_prior_fid = run(config, splits, vae, classifier, device, on_epoch=log_epoch)
        metrics = summary(runs, vae_prior_fid)
        mlflow.log_metric("gan/vae_prior_fid", vae_prior_fid)
        for init, result in runs.items():
            mlflow.log_metrics({f"gan/{init}/train_seconds": result.seconds,
                                f"gan/{init}/best_fid": metrics[init]["best_fid"]})
            if metrics[init]["epochs_to_beat_vae_prior"] is not None:
                mlflow.log_metric(f"gan/{init}/epochs_to_beat_vae_prior", metrics[init]["epochs_to_beat_vae_prior"])

        # Each folder is written aside and swapped in whole, so a failure leaves no mix of old and new.
        with atomic_dir(paths.GAN_GENERATORS) as generators, atomic_dir(paths.GAN_SAMPLES) as samples:
            for init, result in runs.items():
                save_checkpoint(generators / f"{init}.pt", kind=CHECKPOINT_KIND,
                                state_dict=result.generator.state_dict(),
                                discriminator_state_dict=result.discriminator.state_dict(),
                                config=checkpoint_config(config, vae.arch, init, facts["content_hash"]),
                                epoch=config.gan.epochs, metrics=metrics[init])
                save_png(samples / f"{init}.png", result.grids[config.gan.epochs])
        for init, result in runs.items():
            for epoch, grid in result.grids.items():
                mlflow.log_image(grid.permute(1, 2, 0).numpy(), artifact_file=f"gan/{init}/samples_epoch_{epoch:03d}.png")
        write_csv(paths.GAN_HISTORY, wide_history(runs, vae_prior_fid))
        write_json(paths.GAN_METRICS, metrics)
        mlflow.log_artifact(str(paths.GAN_HISTORY), artifact_path="gan")
        mlflow.log_artifacts(str(paths.GAN_GENERATORS), artifact_path="gan/generators")
        tracking.write_run_file(paths.GAN_RUN, active)
    for init in runs:
        beat = metrics[init]["epochs_to_beat_vae_prior"]
        log.info("done: %s GAN FID-style %.2f (VAE prior samples %.2f); %s", init, metrics[init]["fid"], vae_prior_fid,
                 f"beat the VAE after {beat} epoch(s)" if beat else "never beat the VAE's score")


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage("train_gan", main)
