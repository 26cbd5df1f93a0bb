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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from pipeline.core.checkpoints import GAN_KIND, gan_config, load_classifier, load_vae, save_checkpoint
from pipeline.core.config import GAN_INITS, Config, load_config, resolve_device
from pipeline.core.data import Splits, dataset_facts, load_splits
from pipeline.core.images import GRID_ROWS, image_grid, save_png
from pipeline.core.io import atomic_dir, staged, write_csv, write_json
from pipeline.core.metrics import Scorer, class_spread
from pipeline.core.models import VAE, Decoder, Discriminator
from pipeline.core.training import STEP_MEASURES, adam, gan_epoch, in_batches, make_generator, to_unit_float
from pipeline.stages import params_guard, paths

log = logging.getLogger(__name__)

ADAM_BETA2 = 0.999
MEASURES = (*STEP_MEASURES, "fid", "classes", "label_entropy")  # a history row's columns, per GAN


def snapshot_epochs(epochs: int, count: int) -> list[int]:
    """`count` epochs spread evenly before the last, at which a sample grid is kept."""
    return sorted({round(epochs * (i + 1) / (count + 1)) for i in range(count)} - {0, epochs})


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
    result.history.append({"epoch": 0, **dict.fromkeys(STEP_MEASURES), **sample_measures(generator, noise, scorer)})
    if on_epoch is not None:
        on_epoch(init, result.history[0])
    started = time.perf_counter()
    for epoch in tqdm(range(gan.epochs), desc=f"train_gan ({init})", unit="epoch", disable=None):
        means = gan_epoch(generator, discriminator, optimizer_g, optimizer_d, x_train, latent_dim=vae.arch.latent_dim,
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
        for init in GAN_INITS:
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
    runs = {init: train_one(init, config, vae, x_train, scorer, noise, on_epoch) for init in config.gan.trained_inits}
    vae.cpu()
    classifier.cpu()
    return runs, vae_prior_fid


def main() -> None:
    import mlflow

    from pipeline.tracking import names, provenance, record

    config = load_config()
    device = resolve_device(config.device)
    splits = load_splits(paths.SPLITS)
    facts = dataset_facts(splits)
    vae, _ = load_vae(paths.VAE_CHECKPOINT, config.latent_dim)
    classifier = load_classifier(paths.CLASSIFIER_CHECKPOINT, facts["content_hash"])

    def log_epoch(init: str, row: dict) -> None:
        mlflow.log_metrics({names.metric("train_gan", init, k): v for k, v in row.items()
                            if k != "epoch" and v is not None}, step=row["epoch"])
        params_guard.unchanged()  # a run hijacked by a params.yaml edit stops at once, not after training

    # The outputs are written aside and appear together once the row is recorded (pipeline.core.io).
    with atomic_dir(paths.GAN_DIR) as out, \
            record.stage_run("train_gan", config, run_name=provenance.run_name(config),
                             upstream_run_id=record.read_run_file(paths.VAE_RUN)) as active:
        runs, vae_prior_fid = run(config, splits, vae, classifier, device, on_epoch=log_epoch)
        metrics = summary(runs, vae_prior_fid)
        mlflow.log_metric(names.metric("train_gan", "vae_prior_fid"), vae_prior_fid)
        for init, result in runs.items():
            mlflow.log_metrics({names.metric("train_gan", init, "train_seconds"): result.seconds,
                                names.metric("train_gan", init, "best_fid"): metrics[init]["best_fid"]})
            if metrics[init]["epochs_to_beat_vae_prior"] is not None:
                mlflow.log_metric(names.metric("train_gan", init, "epochs_to_beat_vae_prior"),
                                  metrics[init]["epochs_to_beat_vae_prior"])

        generators, samples = staged(out, paths.GAN_GENERATORS), staged(out, paths.GAN_SAMPLES)
        for init, result in runs.items():
            save_checkpoint(generators / f"{init}.pt", kind=GAN_KIND,
                            state_dict=result.generator.state_dict(),
                            discriminator_state_dict=result.discriminator.state_dict(),
                            config=gan_config(config, vae.arch, init, facts["content_hash"]),
                            epoch=config.gan.epochs, metrics=metrics[init])
            save_png(samples / f"{init}.png", result.grids[config.gan.epochs])
        for init, result in runs.items():
            for epoch, grid in result.grids.items():
                mlflow.log_image(grid.permute(1, 2, 0).numpy(), artifact_file=f"gan/{init}/samples_epoch_{epoch:03d}.png")
        write_csv(staged(out, paths.GAN_HISTORY), wide_history(runs, vae_prior_fid))
        write_json(staged(out, paths.GAN_METRICS), metrics)
        mlflow.log_artifact(str(staged(out, paths.GAN_HISTORY)), artifact_path="gan")
        mlflow.log_artifacts(str(generators), artifact_path="gan/generators")
        record.write_run_file(staged(out, paths.GAN_RUN), active)
        params_guard.unchanged()  # before the row is finished and the outputs appear
    for init in runs:
        beat = metrics[init]["epochs_to_beat_vae_prior"]
        log.info("done: %s GAN FID-style %.2f (VAE prior samples %.2f); %s", init, metrics[init]["fid"], vae_prior_fid,
                 f"beat the VAE after {beat} epoch(s)" if beat else "never beat the VAE's score")


if __name__ == "__main__":
    from pipeline.stages.cli import run_stage

    run_stage("train_gan", main)
