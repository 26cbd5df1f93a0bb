"""The report's figures, drawn with matplotlib from the runs' metrics, histories and artifacts."""

from __future__ import annotations

from pathlib import Path

from pipeline.tools.report.numbers import Source
from pipeline.tracking.names import (
    ENCODER_GRAD_KL,
    ENCODER_GRAD_RECONSTRUCTION,
    GAN_VAE_PRIOR_FID,
    KL_PER_DIM,
    gan_measure,
    score,
)
from pipeline.tracking.names import HEADLINE_METRICS as HEADLINE
from pipeline.tracking.rows import Configuration, Row

SOURCES = {  # image sets of the evaluation, as the report names them
    "real_train": "real training images",
    "vae_reconstructions": "VAE reconstructions",
    "vae_prior": "VAE samples (prior)",
    "vae_posterior": "VAE samples (aggregate posterior)",
    "gan_decoder": "GAN from the decoder",
    "gan_scratch": "GAN from scratch",
    "noise": "uniform noise",
}
# One colour per model (image set) in every figure; the VAE's measures (MSE, KL, bounds) take the VAE's.
COLOURS = {"real_train": "tab:gray", "vae_reconstructions": "tab:cyan", "vae_prior": "tab:blue",
           "vae_posterior": "tab:purple", "gan_decoder": "tab:orange", "gan_scratch": "tab:red", "noise": "tab:olive"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path, tight: bool = True) -> None:
    if tight:
        figure.tight_layout()
    figure.savefig(path, format="png", dpi=100, metadata={"Software": None})
    _pyplot().close(figure)


def _image(path: Path):
    import matplotlib.image

    return matplotlib.image.imread(path)


def figure_gradients(source: Source, run: Row, path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for key, label in ((ENCODER_GRAD_RECONSTRUCTION, "reconstruction term (through z = mu + sigma * eps)"),
                       (ENCODER_GRAD_KL, "KL term (closed form in mu, logvar)")):
        steps, values = zip(*source.history(run, key))
        axes.plot(steps, values, marker="o", label=label)
    axes.set(xlabel="epoch", ylabel="gradient norm on encoder weights", yscale="log",
             title=f"Encoder gradients, {run.name}".replace("$", r"\$"))  # no mathtext from a run name
    axes.legend(fontsize=8)
    _save(figure, path)


def figure_kl_per_dim(source: Source, runs: list[Row], path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for run in runs:
        kl = sorted((v for _, v in source.history(run, KL_PER_DIM)), reverse=True)
        axes.plot(range(1, len(kl) + 1), kl, marker=".", label=f"latent_dim {run.latent_dim}")
    axes.set(xlabel="latent dimension, by KL (largest first)", ylabel="KL to N(0, 1), nats", yscale="log",
             xscale="log", title="KL per latent dimension, test split")
    axes.legend(fontsize=8)
    _save(figure, path)


def _mean_and_error(configurations: list[Configuration], key: str) -> tuple[list[float], list[float]]:
    """Each configuration's mean of `key` and the half-width of its 95% interval (0 with one seed)."""
    intervals = [c.interval(key) for c in configurations]
    return ([i.mean for i in intervals], [i.half_width if i.has_interval else 0.0 for i in intervals])


def figure_latent_dim(configurations: list[Configuration], path: Path) -> None:
    """Each measure against latent_dim: every seed a dot, the mean over the seeds a line, error bars
    the 95% interval (none drawn with one seed)."""
    plt = _pyplot()
    dims = [c.latent_dim for c in configurations]
    figure, panels = plt.subplots(2, 2, figsize=(9, 6.5))
    plots = [
        (panels[0, 0], "reconstruction MSE per pixel", {"VAE": ("vae_prior", HEADLINE["recon_mse"])}),
        (panels[0, 1], "KL (nats)", {"VAE": ("vae_prior", HEADLINE["kl"])}),
        (panels[1, 0], "nats per image", {"negative ELBO": ("vae_prior", HEADLINE["neg_elbo"]),
                                          "IWAE NLL": ("vae_reconstructions", HEADLINE["iwae_nll"])}),
        (panels[1, 1], "FID-style score (lower is better)",
         {SOURCES[name]: (name, score(name, "fid")) for name in
          ("vae_reconstructions", "vae_prior", "gan_decoder", "gan_scratch", "real_train")}),
    ]
    seeds = sorted({c.n for c in configurations})
    for axes, label, series in plots:
        for name, (colour_of, key) in series.items():
            means, errors = _mean_and_error(configurations, key)
            colour = COLOURS[colour_of]
            for dim, configuration in zip(dims, configurations):
                values = list(configuration.values(key).values())
                axes.scatter([dim] * len(values), values, s=9, color=colour, alpha=0.45, linewidths=0)
            axes.errorbar(dims, means, yerr=errors if seeds[-1] > 1 else None, marker="o", capsize=3, label=name,
                          color=colour)
        axes.set(xlabel="latent_dim", ylabel=label)
        axes.set_xscale("log", base=2)
        axes.minorticks_off()
        # Each latent_dim a tick; with many, the powers of two between them (labels that do not overlap).
        ticks = dims if len(dims) <= 12 else [2**k for k in range(12) if dims[0] <= 2**k <= dims[-1]]
        axes.set_xticks(ticks, [str(d) for d in ticks])
        axes.legend(fontsize=7)
    if seeds[-1] == 1:
        title = "one seed per latent_dim: each dot one run, no interval to draw"
    else:
        counts = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}"
        title = f"dots: each seed; line: mean over {counts} seeds per latent_dim; error bars: 95% t-interval"
    figure.suptitle(title, fontsize=9)
    _save(figure, path)


def _first_row(grid):
    """The first row of images of a saved grid (8 images a row, 2-pixel gaps)."""
    side = (grid.shape[1] - 2) // 8 - 2  # width = 8 * (side + 2) + 2
    return grid[: side + 4]


def figure_reconstructions(source: Source, runs: list[Row], path: Path) -> None:
    plt = _pyplot()
    rows = [("test images", _first_row(_image(source.artifact(runs[0], "eval/test_images.png"))))]
    rows += [(f"latent_dim {r.latent_dim}", _first_row(_image(source.artifact(r, "eval/reconstructions.png"))))
             for r in runs]
    figure, axes = plt.subplots(len(rows), 1, figsize=(6, 0.8 * len(rows) + 0.3), squeeze=False)
    for ax, (label, image) in zip(axes[:, 0], rows):
        ax.imshow(image)
        ax.axis("off")
        ax.text(-0.02, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=8)
    figure.subplots_adjust(left=0.2, right=0.98, top=0.98, bottom=0.02, hspace=0.1)
    _save(figure, path, tight=False)


def figure_gan_curves(source: Source, runs: list[Row], path: Path) -> None:
    """The GANs' FID-style score per epoch, each seed a thin line and their mean a thick one, and
    the discriminators' mean outputs (means over the seeds)."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for init in ("decoder", "scratch"):
        colour = COLOURS[f"gan_{init}"]
        curves = [source.history(run, gan_measure(init, "fid")) for run in runs]
        for curve in curves:
            left.plot(*zip(*curve), color=colour, alpha=0.3, linewidth=0.8)
        steps = [step for step, _ in curves[0]]
        left.plot(steps, [sum(c[i][1] for c in curves) / len(curves) for i in range(len(steps))], marker="o",
                  color=colour, label=f"{SOURCES[f'gan_{init}']} (mean of {len(runs)})")
        for measure, style, name in (("d_real", "-", "D(x), real"), ("d_fake", "--", "D(G(z)), generated")):
            curves = [source.history(run, gan_measure(init, measure)) for run in runs]
            steps = [step for step, _ in curves[0]]
            right.plot(steps, [sum(c[i][1] for c in curves) / len(curves) for i in range(len(steps))], style,
                       color=colour, label=f"{name}: {SOURCES[f'gan_{init}']}")
    left.axhline(sum(run.metrics[GAN_VAE_PRIOR_FID] for run in runs) / len(runs), color=COLOURS["vae_prior"],
                 linestyle=":", label="VAE samples (mean)")
    left.set(xlabel="epoch (0 = before training)", ylabel="FID-style score", yscale="log",
             title="Sample quality while training, each seed")
    right.set(xlabel="epoch", ylabel="mean discriminator output", ylim=(0, 1), title="The discriminators")
    left.legend(fontsize=8)
    right.legend(fontsize=7)
    _save(figure, path)


def figure_panels(source: Source, run: Row, names: dict[str, str], path: Path) -> None:
    """Evaluation figures of one run side by side, titled."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.6), squeeze=False)
    for ax, (name, title) in zip(axes[0], names.items()):
        ax.imshow(_image(source.artifact(run, f"eval/{name}.png")))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    _save(figure, path)


def figure_scores(configuration: Configuration, path: Path) -> None:
    """Precision against recall of each image set: the mean over the seeds, error bars the 95% interval."""
    plt = _pyplot()
    names = [n for n in SOURCES if n != "noise"]
    figure, axes = plt.subplots(figsize=(5.5, 4))
    for name in names:
        (precision,), (precision_error,) = _mean_and_error([configuration], score(name, "precision"))
        (recall,), (recall_error,) = _mean_and_error([configuration], score(name, "recall"))
        axes.errorbar(recall, precision, xerr=recall_error, yerr=precision_error, marker="o", capsize=3,
                      color=COLOURS[name])
        axes.annotate(SOURCES[name], (recall, precision), fontsize=8, xytext=(4, 4), textcoords="offset points")
    axes.set(xlabel="recall (variety of the data covered)", ylabel="precision (samples that look real)",
             xlim=(0, 1.05), ylim=(0, 1.05),
             title=f"Precision and recall, latent_dim {configuration.latent_dim}, {configuration.n} seed(s)")
    _save(figure, path)
