"""Stage `evaluate`: the numbers every run is judged by, on the test split, with their scale.

VAE: reconstruction MSE per pixel, KL per image, negative ELBO, the importance-weighted NLL
estimate, KL per latent dimension and active units.

Sample quality: FID-style score, KID, precision/recall and class spread, in the feature space of
the `train_classifier` CNN, of equally many images (`evaluate.num_samples`) from each source:
  real_train           real training images: the floor, what a perfect generator would score
  noise                uniform noise: far off the scale's useful end
  vae_reconstructions  the VAE's reconstructions of test images (from the posterior mean)
  vae_prior            the VAE decoder on z ~ N(0, I)
  vae_posterior        the VAE decoder on z ~ q(z|x) of the same test images (the aggregate posterior)
  gan_decoder / gan_scratch   the GAN generators on the same z
each against the whole test split, with each set's sharpness (blur shows as a low value). The
prior hole, vae/prior_hole_fid, is the prior samples' FID-style score minus the aggregate
posterior's: how much worse the decoder draws from codes of the prior than from the codes it was
trained on (large where the aggregate posterior leaves parts of N(0, I) empty).

What the networks learned, for the report:
  reparameterisation   variance of the reparameterised and the score-function (REINFORCE)
                       gradient estimators of the reconstruction term, on the same test images
  probes               k-NN class accuracy on the test split read off raw pixels, the encoder's
                       posterior means and each discriminator's last hidden layer
  probe_tests          McNemar's exact p-value of the encoder's probe against each other one, on
                       the same test images (is the difference more than the test set's noise?)
  discriminators       each discriminator's mean D(x) on every image set above
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from pipeline.core import latent
from pipeline.core.checkpoints import classifier_config, load_classifier, load_seed_gans, load_seed_vae, seed_name
from pipeline.core.config import Config, check_data_sizes, load_config, resolve_device, seed_params
from pipeline.core.data import Splits, dataset_facts, load_splits
from pipeline.core.images import GRID_ROWS, image_grid, save_png
from pipeline.core.io import atomic_dir, atomic_path, csv_text, read_stage_json, staged, write_csv, write_json
from pipeline.core.losses import reconstruction_loss
from pipeline.core.metrics import (
    ACTIVE_UNIT_THRESHOLD,
    Scorer,
    gradient_estimator_variance,
    knn_correct,
    mcnemar_p,
    vae_test_metrics,
)
from pipeline.core.models import VAE
from pipeline.core.replicas import stream_seed
from pipeline.core.stats import mean_interval
from pipeline.core.training import in_batches, to_unit_float
from pipeline.stages import params_guard, paths
from pipeline.tracking import names

log = logging.getLogger(__name__)

TRAVERSED_DIMS = 5  # the most active latent dimensions shown in the traversal
TRAVERSAL_STEPS = 9  # values from -3 to 3 per dimension
INTERPOLATION_STEPS = 10
LATTICE_SIDE = 15  # latent_dim 2: decode a 15 x 15 lattice over the plane
GRADIENT_IMAGES = 64  # test images the gradient estimators are compared on
GRADIENT_SAMPLES = 256  # draws of z per image for each estimator's variance
PROBE_NEIGHBOURS = 5  # k of the k-NN class probes


@dataclass
class Evaluation:
    metrics: dict
    kl_per_dim: list[dict]  # one row per latent dimension: dim, kl, mean_variance, active
    grids: dict[str, torch.Tensor] = field(default_factory=dict)  # figure name -> (3, H, W) image
    latent_means: torch.Tensor | None = None  # (N, 2) test-set posterior means, when latent_dim is 2


def check_sizes(config: Config, splits: Splits) -> None:
    """Stop before any work if the evaluation params do not fit the data."""
    check_data_sizes(config, len(splits.y_train), len(splits.y_test))


def interpolation_grid(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """Rows that walk linearly between the latent means of two test images (x[2i], x[2i+1])."""
    with torch.inference_mode():
        mu = vae.encoder(x[: 2 * GRID_ROWS])[0]  # (2R, D)
    return image_grid(latent.interpolate(vae.decoder, mu[0::2], mu[1::2], INTERPOLATION_STEPS),
                      rows=INTERPOLATION_STEPS)


def traversal_grid(vae: VAE, image: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """One row per latent dimension in `dims`: that dimension swept from -3 to 3 around the latent
    mean of `image` (1, C, H, W), the others held."""
    with torch.inference_mode():
        base = vae.encoder(image)[0][0]  # (D,)
    values = torch.linspace(-3, 3, TRAVERSAL_STEPS, device=image.device)
    return image_grid(latent.traverse(vae.decoder, base, dims, values), rows=TRAVERSAL_STEPS)


def lattice_grid(decoder, device: str) -> torch.Tensor:
    """latent_dim 2: decode a regular lattice over the plane at the prior's 5%..95% quantiles."""
    return image_grid(latent.lattice(decoder, LATTICE_SIDE, device), rows=LATTICE_SIDE)


def gradient_variances(vae: VAE, x: torch.Tensor, likelihood: str, seed: int) -> dict[str, float]:
    """The reparameterised vs score-function estimators of the reconstruction term's gradient
    with respect to the posterior mean, on the images `x` (see metrics.gradient_estimator_variance)."""
    with torch.inference_mode():
        mu, logvar = vae.encoder(x)

    def log_likelihood(z: torch.Tensor) -> torch.Tensor:  # (S, B, D) -> (S, B)
        logits = vae.decoder.logits(z.flatten(0, 1))
        return -reconstruction_loss(logits, x.repeat(len(z), 1, 1, 1), likelihood).view(len(z), -1)

    generator = torch.Generator(device=x.device).manual_seed(seed)
    return {**gradient_estimator_variance(log_likelihood, mu.clone(), logvar.clone(), GRADIENT_SAMPLES, generator),
            "images": len(x), "samples": GRADIENT_SAMPLES}


@torch.inference_mode()
def class_probes(vae: VAE, discriminators: dict, x_train, y_train, x_test, y_test) -> tuple[dict, dict]:
    """k-NN class accuracy on `x_test` from pixels, the encoder's means and each discriminator's
    features; and McNemar's exact p-value of the encoder against each other space on the same test
    images (metrics.mcnemar_p)."""
    spaces = {"pixels": lambda x: x.flatten(1), "encoder": lambda x: vae.encoder(x)[0]}
    spaces |= {f"discriminator_{init}": d.features for init, d in discriminators.items()}
    correct = {name: knn_correct(in_batches(features, x_train), y_train, in_batches(features, x_test), y_test,
                                 k=PROBE_NEIGHBOURS)
               for name, features in spaces.items()}
    accuracies = {name: hits.float().mean().item() for name, hits in correct.items()}
    tests = {f"encoder_vs_{name}": mcnemar_p(correct["encoder"], hits) for name, hits in correct.items()
             if name != "encoder"}
    return accuracies, tests


RULER_SETS = ("real_train", "noise")  # scored sets that are the ruler's, the same for every model seed


@dataclass
class Ruler:
    """What every model seed is measured against, drawn from `data.seed` and computed once: the
    splits on the device, which test images are scored, the ruler's own image sets (RULER_SETS),
    the scorer over the test split, and those sets' scores."""

    x_test: torch.Tensor
    x_train: torch.Tensor
    test_pick: torch.Tensor
    sets: dict[str, torch.Tensor]
    scorer: Scorer
    scores: dict[str, dict]


def ruler(config: Config, splits: Splits, classifier, device: str) -> Ruler:
    """The evaluation's ruler for `config` (see Ruler)."""
    ev = config.evaluate
    n = ev.num_samples
    classifier = classifier.to(device).eval()
    x_test = to_unit_float(torch.from_numpy(splits.x_test)).to(device)
    x_train = to_unit_float(torch.from_numpy(splits.x_train)).to(device)
    draws = torch.Generator().manual_seed(config.data.seed)
    test_pick = torch.randperm(len(x_test), generator=draws)[:n].to(device)
    train_pick = torch.randperm(len(x_train), generator=draws)[:n].to(device)
    noise_images = torch.rand((n, *splits.image_shape), generator=draws).to(device)
    scorer = Scorer(classifier, x_test, seed=config.data.seed, kid_subset_size=ev.kid_subset_size,
                    pr_neighbours=ev.pr_neighbours)
    sets = dict(zip(RULER_SETS, (x_train[train_pick], noise_images)))
    return Ruler(x_test, x_train, test_pick, sets, scorer, {name: scorer.score(images) for name, images in sets.items()})


def run(config: Config, splits: Splits, vae: VAE, classifier, gans: dict, device: str,
        likelihood: str, seed: int, measure: Ruler | None = None) -> Evaluation:
    """Measure model seed `seed`'s VAE and every model's samples.

    The ruler's draws (which test and training images are scored, the uniform-noise set, KID's
    subsets) come from `data.seed`, so they are the same for every model seed (`measure`, made
    once for all of them, or here); the models' draws (the codes every generator decodes, the IWAE
    and gradient samples) come from the seed's "samples" stream (pipeline.core.replicas).

    `gans` maps each GAN's init to its (generator, discriminator). `likelihood` is the
    reconstruction term the VAE was trained with (bce or mse), from its checkpoint.
    """
    check_sizes(config, splits)
    ev = config.evaluate
    n = ev.num_samples
    measure = measure or ruler(config, splits, classifier, device)
    x_test, x_train, test_pick, scorer = measure.x_test, measure.x_train, measure.test_pick, measure.scorer
    vae = vae.to(device).eval()
    draws = stream_seed(seed, "samples")
    codes = torch.Generator().manual_seed(draws)
    z = torch.randn(n, config.latent_dim, generator=codes).to(device)  # the same codes for every generator
    eps = torch.randn(n, config.latent_dim, generator=codes).to(device)  # drawn after z: z stays as it was

    vae_numbers = vae_test_metrics(vae, x_test, kind=likelihood, iwae_samples=ev.iwae_samples, seed=draws)
    reconstructions = latent.reconstruct(vae, x_test[test_pick])
    sets = {**measure.sets, "vae_reconstructions": reconstructions, "vae_prior": in_batches(vae.decoder, z),
            "vae_posterior": latent.posterior_samples(vae, x_test[test_pick], eps)}
    generators = {init: generator.to(device).eval() for init, (generator, _) in gans.items()}
    discriminators = {init: discriminator.to(device).eval() for init, (_, discriminator) in gans.items()}
    sets |= {f"gan_{init}": in_batches(generator, z) for init, generator in generators.items()}

    scores = {}
    for name, images in sets.items():
        scores[name] = measure.scores[name] if name in measure.scores else scorer.score(images)
        log.info("%-20s FID-style %8.2f  KID %.4f  precision %.3f  recall %.3f  classes %d", name,
                 scores[name]["fid"], scores[name]["kid"], scores[name]["precision"], scores[name]["recall"],
                 scores[name]["classes"])

    vae_numbers["prior_hole_fid"] = scores["vae_prior"]["fid"] - scores["vae_posterior"]["fid"]
    per_dim, variance = vae_numbers.pop("kl_per_dim"), vae_numbers.pop("latent_mean_variance")
    means = vae_numbers.pop("latent_means")
    kl_rows = [{"dim": d, "kl": kl, "mean_variance": var, "active": int(var > ACTIVE_UNIT_THRESHOLD)}
               for d, (kl, var) in enumerate(zip(per_dim, variance))]
    y_train = torch.from_numpy(splits.y_train).to(device)
    y_test = torch.from_numpy(splits.y_test).to(device)
    probes, probe_tests = class_probes(vae, discriminators, x_train, y_train, x_test[test_pick], y_test[test_pick])
    metrics = {"num_samples": n, "vae": vae_numbers, "scores": scores,
               "reparameterisation": gradient_variances(vae, x_test[test_pick[:GRADIENT_IMAGES]], likelihood, draws),
               "probes": probes, "probe_tests": probe_tests,
               "discriminators": {init: {name: torch.sigmoid(in_batches(d, images)).mean().item()
                                         for name, images in sets.items()}
                                  for init, d in discriminators.items()}}

    grids = {"test_images": image_grid(x_test[test_pick[: GRID_ROWS * GRID_ROWS]]),
             "reconstructions": image_grid(reconstructions[: GRID_ROWS * GRID_ROWS])}
    grids |= {name: image_grid(images[: GRID_ROWS * GRID_ROWS]) for name, images in sets.items()
              if name in ("vae_prior",) or name.startswith("gan_")}
    grids["interpolation"] = interpolation_grid(vae, x_test[test_pick])
    most_active = sorted(range(len(variance)), key=lambda d: -variance[d])[:TRAVERSED_DIMS]
    grids["traversal"] = traversal_grid(vae, x_test[test_pick[:1]], most_active)
    latent_means = None
    if config.latent_dim == 2:
        grids["latent_lattice"] = lattice_grid(vae.decoder, device)
        latent_means = means.cpu()
    return Evaluation(metrics, kl_rows, {k: v.cpu() for k, v in grids.items()}, latent_means)


def save_latent_scatter(path, means: torch.Tensor, labels) -> None:
    """latent_dim 2: the test set's posterior means, coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 6), dpi=100)
    points = axes.scatter(means[:, 0], means[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
    figure.colorbar(points, ax=axes, ticks=range(10), label="class")
    axes.set(xlabel="z1 (posterior mean)", ylabel="z2 (posterior mean)", title="Test set in the latent plane")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", metadata={"Software": None})  # no version stamp: reproducible bytes
    plt.close(figure)


def flat_metrics(metrics: dict, prefix: str) -> dict[str, float]:
    """Nested metrics as MLflow keys: eval/vae/kl, eval/scores/gan_decoder/fid, ..."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat |= flat_metrics(value, f"{prefix}/{key}")
        else:
            flat[f"{prefix}/{key}"] = value
    return flat


def aggregate(headline: dict[int, dict[str, float]]) -> dict[str, float | None]:
    """DVC's metrics (names.DVC_METRICS): the number of seeds `n`, each headline number's mean over
    the seeds, then the half-width of each one's 95% t-interval (None, shown as `-`, with one seed:
    written all the same, so that every experiment has the same columns)."""
    intervals = {name: mean_interval([numbers[name] for numbers in headline.values()]) for name in names.SHOWN_FIRST}
    shown: dict[str, float | None] = {"n": len(headline)}
    shown |= {name: interval.mean for name, interval in intervals.items()}
    shown |= {f"{name}{names.CI_SUFFIX}": interval.half_width if interval.has_interval else None
              for name, interval in intervals.items()}
    return shown


def main() -> None:
    import mlflow

    from pipeline.tracking import record, summaries

    config = load_config()
    device = resolve_device(config.device)
    splits = load_splits(paths.SPLITS)
    check_sizes(config, splits)
    facts = dataset_facts(splits)
    data_hash = facts["content_hash"]
    classifier = load_classifier(paths.CLASSIFIER_CHECKPOINT,
                                 classifier_config(config, splits.image_shape, splits.num_classes, data_hash))
    classifier_accuracy = read_stage_json(paths.CLASSIFIER_METRICS, "train_classifier",
                                          {"test_accuracy": (int, float)})["test_accuracy"]
    models = {}
    for seed in config.seeds:
        vae, vae_checkpoint = load_seed_vae(paths.VAE_CHECKPOINTS, config, seed, splits.image_shape, data_hash)
        gans = load_seed_gans(paths.GAN_GENERATORS, config, seed, splits.image_shape, data_hash)
        models[seed] = (vae, vae_checkpoint["config"]["vae"]["reconstruction"], gans)
    upstream = record.upstream_rows(config, paths.GAN_RUN, "train_gan")  # a damaged or stale record: refused now

    started = time.perf_counter()
    measure = ruler(config, splits, classifier, device)  # the same for every seed: computed once
    results = {seed: run(config, splits, vae, classifier, gans, device, likelihood, seed, measure)
               for seed, (vae, likelihood, gans) in models.items()}
    seconds = time.perf_counter() - started
    details = {seed: {"classifier_test_accuracy": classifier_accuracy, **result.metrics} for seed, result in results.items()}
    flats = {seed: flat_metrics(metrics, names.STAGE_METRIC_PREFIX["evaluate"]) for seed, metrics in details.items()}
    headline = {seed: names.shown_first(flat) for seed, flat in flats.items()}
    shown = aggregate(headline)

    # The outputs are written aside and appear together once the rows are recorded (pipeline.core.io).
    with atomic_dir(paths.EVAL_DIR) as out:
        figures, run_file = staged(out, paths.EVAL_FIGURES), staged(out, paths.EVAL_RUN)
        with record.seed_runs("evaluate", config, upstream=upstream) as rows:
            for seed, result in results.items():
                folder = figures / seed_name(seed)
                for name, grid in result.grids.items():
                    save_png(folder / f"{name}.png", grid)
                if result.latent_means is not None:
                    save_latent_scatter(folder / "latent_scatter.png", result.latent_means, splits.y_test)
                with rows.seed(seed):
                    mlflow.log_metrics(flats[seed] | {names.metric("evaluate", "seconds"): seconds / len(results)})
                    for row in result.kl_per_dim:
                        mlflow.log_metric(names.metric("evaluate", "vae", "kl_per_dim"), row["kl"], step=row["dim"])
                    mlflow.log_artifacts(str(folder), artifact_path="eval")
                    mlflow.log_text(csv_text(result.kl_per_dim), "eval/kl_per_dim.csv")
            write_csv(staged(out, paths.EVAL_KL_PER_DIM), results[config.seeds[0]].kl_per_dim)
            write_csv(staged(out, paths.EVAL_SEED_METRICS), [{"seed": seed, **numbers}
                                                             for seed, numbers in headline.items()])
            write_json(staged(out, paths.EVAL_DETAILS), {str(seed): metrics for seed, metrics in details.items()})
            write_json(staged(out, paths.EVAL_METRICS), shown, sort_keys=False)  # DVC shows this order
            record.write_run_file(run_file, rows)
            params_guard.unchanged()  # before the rows are finished and the outputs appear
        # The configuration's summary run: the parent of the seeds' rows, holding their means and
        # intervals, pooled with the rows of earlier runs of the same configuration. A view of the
        # rows, rebuilt by `make compare`: a store fault here is a warning, not a lost result.
        summary_id = summaries.record_configuration_or_warn(
            config.experiment_name, names.configuration_id(seed_params(config, config.seeds[0])))
        record.write_run_file(run_file, rows, summary_id)
    scratch = f"{shown['fid_scratch']:.2f}" if shown.get("fid_scratch") is not None else "-"
    log.info("done in %.1f s, %d seeds: FID-style real_train %.2f, vae_prior %.2f, gan_decoder %.2f, gan_scratch %s "
             "(means)", seconds, len(results), shown["fid_real"], shown["fid_vae"], shown["fid_decoder"], scratch)


if __name__ == "__main__":
    from pipeline.stages.cli import run_stage

    run_stage("evaluate", main)
