"""Stage `train_gan`: a GAN whose generator starts as the trained VAE decoder, and the same GAN
from scratch beside it.

The generator is a `Decoder` (z ~ N(0, I) of size latent_dim -> image in [0, 1]). With
`gan.init: decoder` it starts from the VAE decoder's trained weights; with `scratch` from random
ones. The discriminator is new in both cases. Both GANs share the seed, so they start from the
same discriminator, see the same batches and noise, and differ only in the generator's start.
Every model seed of `seeds` trains its GANs, all seeds at once (pipeline.core.replicas).

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

from pipeline.core.checkpoints import (
    GAN_KIND,
    classifier_config,
    gan_config,
    load_classifier,
    load_seed_vae,
    save_checkpoint,
    seed_name,
)
from pipeline.core.config import GAN_INITS, Config, load_config, resolve_device
from pipeline.core.data import Splits, dataset_facts, load_splits
from pipeline.core.images import GRID_ROWS, image_grid, save_png
from pipeline.core.io import atomic_dir, staged, write_csv, write_json
from pipeline.core.metrics import Scorer, class_spread
from pipeline.core.models import VAE, Decoder, Discriminator
from pipeline.core.replicas import Stack, build_seeded, stream
from pipeline.core.stats import mean_rows
from pipeline.core.training import (
    STEP_MEASURES,
    adam,
    gan_epoch,
    in_batches,
    make_generator,
    stack_in_batches,
    to_unit_float,
)
from pipeline.stages import params_guard, paths

log = logging.getLogger(__name__)

ADAM_BETA2 = 0.999
MEASURES = (*STEP_MEASURES, "fid", "classes", "label_entropy")  # a history row's columns, per GAN


def snapshot_epochs(epochs: int, count: int) -> list[int]:
    """`count` epochs spread evenly before the last, at which a sample grid is kept."""
    return sorted({round(epochs * (i + 1) / (count + 1)) for i in range(count)} - {0, epochs})


def sample_measures(scorer: Scorer, images: torch.Tensor) -> list[dict[str, float]]:
    """FID-style score and class spread of each seed's samples, images (S, N, C, H, W)."""
    return [{"fid": fid, **class_spread(labels, scorer.classifier.num_classes)}
            for fid, labels in scorer.fids_and_labels(images)]


@dataclass
class GANRun:
    """One seed's trained GAN: its networks, one history row per epoch (row 0 = before training),
    the sample grids kept on the way ({epoch: grid}) and the training time (of all seeds together)."""

    generator: Decoder
    discriminator: Discriminator
    history: list[dict[str, float | None]]
    grids: dict[int, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def final(self) -> dict:
        return self.history[-1]


def train_init(init: str, config: Config, vaes: list[VAE], x_train: torch.Tensor, scorer: Scorer,
               noise: torch.Tensor, on_epoch: Callable[[str, list[dict]], None] | None = None,
               start: list[dict[str, float]] | None = None) -> list[GANRun]:
    """Train one GAN per seed whose generator starts as `init`, all seeds at once; everything else
    is the same for every init: each seed's discriminator starts from the same weights, sees the
    same batches and noise. `noise` (S, N, latent_dim) is each seed's fixed scoring noise."""
    gan = config.gan
    device = x_train.device

    def networks(vae: VAE) -> tuple[Decoder, Discriminator]:
        return make_generator(vae, init), Discriminator(vae.arch, gan.discriminator_hidden)

    pairs = [build_seeded(lambda vae=vae: networks(vae), seed, "gan/weights")
             for seed, vae in zip(config.seeds, vaes)]
    generators = Stack([generator.to(device) for generator, _ in pairs])
    discriminators = Stack([discriminator.to(device) for _, discriminator in pairs])
    options = {"lr": gan.learning_rate, "betas": (gan.adam_beta1, ADAM_BETA2)}
    optimizer_g = adam(generators.parameters(), **options)
    optimizer_d = adam(discriminators.parameters(), **options)
    orders = [stream(seed, "gan/batches", device) for seed in config.seeds]
    noises = [stream(seed, "gan/noise", device) for seed in config.seeds]
    grid_noise = noise[:, : GRID_ROWS * GRID_ROWS]
    keep = set(snapshot_epochs(gan.epochs, gan.snapshots)) | {gan.epochs}

    runs = [GANRun(generator, discriminator, []) for generator, discriminator in pairs]
    # Before the first step: `start` where the caller has scored these very generators already
    # (the decoder GAN's are the VAE decoders, on the same noise: the bar's scores).
    first = start or sample_measures(scorer, stack_in_batches(generators, noise))
    for result, measures in zip(runs, first):
        result.history.append({"epoch": 0, **dict.fromkeys(STEP_MEASURES), **measures})
    if on_epoch is not None:
        on_epoch(init, [result.history[0] for result in runs])
    started = time.perf_counter()
    for epoch in tqdm(range(gan.epochs), desc=f"train_gan ({init})", unit="epoch", disable=None):
        means = gan_epoch(generators, discriminators, optimizer_g, optimizer_d, x_train,
                          latent_dim=config.latent_dim, batch_size=gan.batch_size, orders=orders, noises=noises,
                          epoch=epoch, name=f"GAN ({init})")
        measures = sample_measures(scorer, stack_in_batches(generators, noise))
        grids = stack_in_batches(generators, grid_noise) if epoch + 1 in keep else None
        for i, result in enumerate(runs):
            result.history.append({"epoch": epoch + 1, **means[i], **measures[i]})
            if grids is not None:
                result.grids[epoch + 1] = image_grid(grids[i]).cpu()
        log.info("%s epoch %d/%d  D(x) %.3f  D(G(z)) %.3f  FID-style %.2f  classes %.1f (means of %d seeds)", init,
                 epoch + 1, gan.epochs, *(sum(r.history[-1][k] for r in runs) / len(runs)
                                          for k in ("d_real", "d_fake", "fid", "classes")), len(runs))
        if on_epoch is not None:
            on_epoch(init, [result.history[-1] for result in runs])
    seconds = time.perf_counter() - started
    for i, result in enumerate(runs):
        generators.load_into(i, result.generator).cpu().eval()
        discriminators.load_into(i, result.discriminator).cpu().eval()
        result.seconds = seconds
    return runs


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


@dataclass
class SeedGANs:
    """One seed's GANs by init, and the score of its VAE's prior samples (the bar)."""

    seed: int
    runs: dict[str, GANRun]
    vae_prior_fid: float


def run(config: Config, splits: Splits, vaes: list[VAE], classifier, device: str,
        on_epoch: Callable[[str, list[dict]], None] | None = None) -> list[SeedGANs]:
    """Train the GANs `config` asks for, for every seed (`vaes`: each seed's trained VAE, in the
    order of `config.seeds`); returns each seed's GANs and its VAE prior samples' score."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    vaes = [vae.to(device) for vae in vaes]
    x_train = to_unit_float(torch.from_numpy(splits.x_train)).to(device)
    x_test = to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    scorer = Scorer(classifier.to(device), x_test, seed=config.data.seed)
    noise = torch.stack([torch.randn(config.gan.fid_samples, config.latent_dim, generator=stream(seed, "samples"))
                         for seed in config.seeds]).to(device)  # (S, N, latent_dim): each seed's fixed noise
    priors = sample_measures(scorer, torch.stack([in_batches(vae.decoder, z) for vae, z in zip(vaes, noise)]))
    bars = [measures["fid"] for measures in priors]
    by_init = {init: train_init(init, config, vaes, x_train, scorer, noise, on_epoch,
                                start=priors if init == "decoder" else None)
               for init in config.gan.trained_inits}
    for vae in vaes:
        vae.cpu()
    classifier.cpu()
    return [SeedGANs(seed, {init: runs[i] for init, runs in by_init.items()}, bars[i])
            for i, seed in enumerate(config.seeds)]


def main() -> None:

    from pipeline.tracking import record

    config = load_config()
    device = resolve_device(config.device)
    splits = load_splits(paths.SPLITS)
    facts = dataset_facts(splits)
    data_hash = facts["content_hash"]
    vaes = [load_seed_vae(paths.VAE_CHECKPOINTS, config, seed, splits.image_shape, data_hash)[0]
            for seed in config.seeds]
    classifier = load_classifier(paths.CLASSIFIER_CHECKPOINT,
                                 classifier_config(config, splits.image_shape, splits.num_classes, data_hash))
    upstream = record.upstream_rows(config, paths.VAE_RUN, "train_vae")  # a damaged or stale record: refused now

    def check_params(init: str, rows: list[dict]) -> None:
        params_guard.unchanged()  # a run hijacked by a params.yaml edit stops at once, not after training

    seeds = run(config, splits, vaes, classifier, device, on_epoch=check_params)
    # The outputs are written aside and appear together once the rows are recorded (pipeline.core.io).
    with atomic_dir(paths.GAN_DIR) as out, \
            record.seed_runs("train_gan", config, upstream=upstream) as rows:
        generators, samples = staged(out, paths.GAN_GENERATORS), staged(out, paths.GAN_SAMPLES)
        generators.mkdir(parents=True, exist_ok=True)
        samples.mkdir(parents=True, exist_ok=True)
        metrics, histories = {}, {}
        for result in seeds:
            metrics[result.seed] = summary(result.runs, result.vae_prior_fid)
            histories[result.seed] = wide_history(result.runs, result.vae_prior_fid)
            folder = generators / seed_name(result.seed)
            folder.mkdir()
            for init, gan in result.runs.items():
                save_checkpoint(folder / f"{init}.pt", kind=GAN_KIND, state_dict=gan.generator.state_dict(),
                                discriminator_state_dict=gan.discriminator.state_dict(),
                                config=gan_config(config, vaes[0].arch, init, result.seed, facts["content_hash"]),
                                epoch=config.gan.epochs, metrics=metrics[result.seed][init])
            with rows.seed(result.seed):
                log_seed(result, metrics[result.seed], histories[result.seed], folder)
        for init, gan in seeds[0].runs.items():
            save_png(samples / f"{init}.png", gan.grids[config.gan.epochs])
        write_csv(staged(out, paths.GAN_HISTORY), mean_rows(list(histories.values())))
        write_csv(staged(out, paths.GAN_SEED_HISTORY), [{"seed": seed, **row} for seed, rows_ in histories.items()
                                                         for row in rows_])
        write_json(staged(out, paths.GAN_METRICS), {str(seed): m for seed, m in metrics.items()})
        record.write_run_file(staged(out, paths.GAN_RUN), rows)
        params_guard.unchanged()  # before the rows are finished and the outputs appear
    for result in seeds:
        for init in result.runs:
            beat = metrics[result.seed][init]["epochs_to_beat_vae_prior"]
            log.info("done: seed %d: %s GAN FID-style %.2f (VAE prior samples %.2f); %s", result.seed, init,
                     metrics[result.seed][init]["fid"], result.vae_prior_fid,
                     f"beat the VAE after {beat} epoch(s)" if beat else "never beat the VAE's score")


def log_seed(result: SeedGANs, metrics: dict, history: list[dict], generators) -> None:
    """Record one seed's GANs in its active MLflow row: per-epoch measures, summary numbers, the
    sample grids kept, its history and its checkpoints."""
    import mlflow

    from pipeline.core.io import csv_text
    from pipeline.tracking import names, record

    record.log_steps([(names.metric("train_gan", init, k), v, row["epoch"]) for init, gan in result.runs.items()
                      for row in gan.history for k, v in row.items() if k != "epoch" and v is not None])
    mlflow.log_metric(names.metric("train_gan", "vae_prior_fid"), result.vae_prior_fid)
    for init, gan in result.runs.items():
        mlflow.log_metrics({names.metric("train_gan", init, "train_seconds"): gan.seconds,
                            names.metric("train_gan", init, "best_fid"): metrics[init]["best_fid"]})
        if metrics[init]["epochs_to_beat_vae_prior"] is not None:
            mlflow.log_metric(names.metric("train_gan", init, "epochs_to_beat_vae_prior"),
                              metrics[init]["epochs_to_beat_vae_prior"])
        for epoch, grid in gan.grids.items():
            mlflow.log_image(grid.permute(1, 2, 0).numpy(), artifact_file=f"gan/{init}/samples_epoch_{epoch:03d}.png")
    mlflow.log_text(csv_text(history), "gan/history.csv")
    mlflow.log_artifacts(str(generators), artifact_path="gan/generators")


if __name__ == "__main__":
    from pipeline.stages.cli import run_stage

    run_stage("train_gan", main)
