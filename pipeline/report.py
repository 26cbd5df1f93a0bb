"""`python -m pipeline.report`: the written reflection report, built from the recorded runs.

It reads the complete result rows of the dataset's MLflow experiment (the one params.yaml records
into), picks the runs that share params.yaml's settings, and writes into `reports/`:

  reflection.md            the report: each lab question answered with a claim, then the evidence
  reflection.html          the same, for a browser, with the figures inline
  figures/*.png            its figures, drawn from the runs' metric histories and artifacts
  reflection.numbers.json  every number in the text: its run, metric (or param) and value

Which runs: among the complete rows whose params equal params.yaml's in everything but
`latent_dim` (and `device`, `tracking.experiment`, which change where, not what), the newest per
`latent_dim` form the latent_dim comparison; the one at params.yaml's `latent_dim` (else the
newest) is the main run. Rows that differ only in `vae.beta`, at the main run's `latent_dim`,
form the beta comparison. Rows recorded by older code that lack a metric the report needs are
left out, and the report says how many.

Numbers are never typed in: the text gets each one from `Numbers`, which formats it and keeps
where it came from; `tests/test_report.py` checks every entry against MLflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import tracking
from pipeline.compare import COMPLETE, open_experiment
from pipeline.config import flatten
from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, atomic_path

log = logging.getLogger(__name__)

REPORT_DIR = Path("reports")
MARKDOWN, HTML, NUMBERS, FIGURES = "reflection.md", "reflection.html", "reflection.numbers.json", "figures"
IGNORED_PARAMS = {"device", "tracking.experiment"}  # where a run ran and under which name, not what it did
# Metrics every run in the report must hold (older rows lack the later ones).
REQUIRED = (
    "vae/encoder_grad_reconstruction", "vae/encoder_grad_kl", "vae/test_neg_elbo",
    "gan/decoder/fid", "gan/scratch/fid", "gan/vae_prior_fid",
    "eval/vae/recon_mse_per_pixel", "eval/vae/kl", "eval/vae/neg_elbo", "eval/vae/iwae_nll", "eval/vae/active_units",
    "eval/scores/gan_decoder/fid", "eval/scores/gan_scratch/fid", "eval/scores/vae_prior/sharpness",
    "eval/reparameterisation/score_function", "eval/probes/encoder", "eval/discriminators/decoder/real_train",
)
SOURCES = {  # image sets of the evaluation, as the report names them
    "real_train": "real training images",
    "vae_reconstructions": "VAE reconstructions",
    "vae_prior": "VAE samples (prior)",
    "gan_decoder": "GAN from the decoder",
    "gan_scratch": "GAN from scratch",
    "noise": "uniform noise",
}


class ReportError(PipelineError):
    """The report cannot be built from the recorded runs."""


# ---------------------------------------------------------------------------------------------
# The runs


@dataclass
class RunRecord:
    """One complete result row, as MLflow holds it."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time: int

    @classmethod
    def from_mlflow(cls, run) -> RunRecord:
        return cls(run.info.run_id, run.data.tags.get("mlflow.runName", run.info.run_id), dict(run.data.params),
                   dict(run.data.metrics), dict(run.data.tags), run.info.start_time)

    @property
    def latent_dim(self) -> int:
        return int(self.params["latent_dim"])

    @property
    def beta(self) -> float:
        return float(self.params["vae.beta"])

    @property
    def commit(self) -> str:
        return self.tags.get("git.commit", "unknown")[:8]


def collect(client, experiment_id: str) -> tuple[list[RunRecord], list[RunRecord]]:
    """The experiment's complete rows: (those holding every REQUIRED metric, the older rest)."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=50_000)
    complete = [RunRecord.from_mlflow(r) for r in runs if r.data.tags.get(tracking.STAGES_TAG) == COMPLETE]
    usable = [r for r in complete if all(key in r.metrics for key in REQUIRED)]
    return usable, [r for r in complete if r not in usable]


@dataclass
class Study:
    experiment: str
    main: RunRecord
    by_latent_dim: list[RunRecord]  # one per latent_dim, ascending
    by_beta: list[RunRecord]  # one per beta at the main run's latent_dim, ascending
    outdated: list[RunRecord] = field(default_factory=list)

    @property
    def runs(self) -> list[RunRecord]:
        """Every run the report cites, each once, main run first."""
        seen = {}
        for run in [self.main, *self.by_latent_dim, *self.by_beta]:
            seen.setdefault(run.run_id, run)
        return list(seen.values())


def _matches(run: RunRecord, reference: dict[str, str], free: set[str]) -> bool:
    keys = (set(reference) | set(run.params)) - IGNORED_PARAMS - free
    return all(run.params.get(key) == reference.get(key) for key in keys)


def _newest_per(runs: list[RunRecord], key: Callable[[RunRecord], float]) -> list[RunRecord]:
    newest: dict[float, RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        newest[key(run)] = run
    return [newest[k] for k in sorted(newest)]


def select(records: list[RunRecord], reference: dict[str, str], experiment: str,
           outdated: list[RunRecord] | None = None) -> Study:
    """The runs the report is built from (see the module docstring). `reference` is params.yaml
    flattened as the stages log it ({"vae.beta": "1.0", ...})."""
    by_latent_dim = _newest_per([r for r in records if _matches(r, reference, {"latent_dim"})], lambda r: r.latent_dim)
    if not by_latent_dim:
        raise ReportError(f"experiment {experiment!r} holds no complete run with params.yaml's settings "
                          f"({len(records)} complete run(s) differ in other params, {len(outdated or [])} were "
                          "recorded by older code): run `make repro` (or `make sweep`) first")
    at_reference = [r for r in by_latent_dim if r.params["latent_dim"] == reference["latent_dim"]]
    main = at_reference[0] if at_reference else max(by_latent_dim, key=lambda r: r.start_time)
    reference_at_main = {**reference, "latent_dim": main.params["latent_dim"]}
    by_beta = _newest_per([r for r in records if _matches(r, reference_at_main, {"vae.beta"})], lambda r: r.beta)
    return Study(experiment, main, by_latent_dim, by_beta, list(outdated or []))


class Source:
    """Reads what the report needs from MLflow beyond a row's latest metrics: metric histories and
    artifacts (downloaded once into `workdir`)."""

    def __init__(self, client, workdir: Path):
        self.client = client
        self.workdir = workdir
        self._histories: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def history(self, run: RunRecord, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of `key`, by step."""
        if (run.run_id, key) not in self._histories:
            points = self.client.get_metric_history(run.run_id, key)
            if not points:
                raise ReportError(f"run {run.name} ({run.run_id}) has no history of metric {key}")
            self._histories[run.run_id, key] = sorted((p.step, p.value) for p in points)
        return self._histories[run.run_id, key]

    def artifact(self, run: RunRecord, path: str) -> Path:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        local = self.workdir / run.run_id / path
        if not local.exists():
            try:
                local.parent.mkdir(parents=True, exist_ok=True)  # a file lands in dst_path by its own name
                self.client.download_artifacts(run.run_id, path, str(local.parent))
            except Exception as error:  # MLflow raises its own and OS errors for a missing artifact
                raise ReportError(f"run {run.name} ({run.run_id}) has no artifact {path}: {error}") from None
        return local


# ---------------------------------------------------------------------------------------------
# Numbers and where they come from


def rises(values: list[float]) -> int:
    """How many times a sequence went up from one value to the next (a curve's setbacks)."""
    return sum(later > earlier for earlier, later in zip(values, values[1:]))


def readable(value: float, fmt: str | None = None) -> str:
    """`value` as the text shows it: with `fmt`, else four significant digits, and no exponent
    from 1000 up (119729, not 1.197e+05)."""
    if fmt is None:
        fmt = ".0f" if abs(value) >= 1000 else ".4g"
    return format(value, fmt)


class Numbers:
    """Formats each number the text uses and records its source, so it can be checked.

    Every method returns the text to put in the report. An entry's `kind` says how to recompute
    it: metric (a row's latest value, or the value at `step` of its history), param, count (of
    the runs listed), ratio (of two metrics), rises (of a metric's history, see `rises`).
    """

    def __init__(self, source: Source):
        self.source = source
        self.entries: list[dict] = []

    def _add(self, text: str, value, **where) -> str:
        self.entries.append({"text": text, "value": value, **where})
        return text

    def value(self, run: RunRecord, key: str, step: int | None = None) -> float:
        if step is None:
            return run.metrics[key]
        return dict(self.source.history(run, key))[step]

    def metric(self, run: RunRecord, key: str, fmt: str | None = None, step: int | None = None) -> str:
        value = self.value(run, key, step)
        return self._add(readable(value, fmt), value, kind="metric", run_id=run.run_id, key=key, step=step)

    def param(self, run: RunRecord, key: str) -> str:
        return self._add(run.params[key], run.params[key], kind="param", run_id=run.run_id, key=key)

    def count(self, runs: list[RunRecord]) -> str:
        return self._add(str(len(runs)), len(runs), kind="count", run_ids=[r.run_id for r in runs])

    def ratio(self, run: RunRecord, key: str, over: RunRecord, over_key: str) -> str:
        value = run.metrics[key] / over.metrics[over_key]
        return self._add(readable(value), value, kind="ratio", run_id=run.run_id, key=key,
                         over_run_id=over.run_id, over_key=over_key)

    def rises(self, run: RunRecord, key: str) -> str:
        value = rises([v for _, v in self.source.history(run, key)])
        return self._add(str(value), value, kind="rises", run_id=run.run_id, key=key)

    def steps(self, run: RunRecord, key: str) -> int:
        """The last step of a metric's history (an epoch count), to look values up at; not cited itself."""
        return self.source.history(run, key)[-1][0]


# ---------------------------------------------------------------------------------------------
# Figures


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


def figure_gradients(source: Source, run: RunRecord, path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for key, label in (("vae/encoder_grad_reconstruction", "reconstruction term (through z = mu + sigma * eps)"),
                       ("vae/encoder_grad_kl", "KL term (closed form in mu, logvar)")):
        steps, values = zip(*source.history(run, key))
        axes.plot(steps, values, marker="o", label=label)
    axes.set(xlabel="epoch", ylabel="gradient norm on encoder weights", yscale="log",
             title=f"Encoder gradients, {run.name}")
    axes.legend(fontsize=8)
    _save(figure, path)


def figure_kl_per_dim(source: Source, runs: list[RunRecord], path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for run in runs:
        kl = sorted((v for _, v in source.history(run, "eval/vae/kl_per_dim")), reverse=True)
        axes.plot(range(1, len(kl) + 1), kl, marker=".", label=f"latent_dim {run.latent_dim}")
    axes.set(xlabel="latent dimension, by KL (largest first)", ylabel="KL to N(0, 1), nats", yscale="log",
             xscale="log", title="KL per latent dimension, test split")
    axes.legend(fontsize=8)
    _save(figure, path)


def figure_latent_dim(runs: list[RunRecord], path: Path) -> None:
    plt = _pyplot()
    dims = [r.latent_dim for r in runs]
    figure, panels = plt.subplots(2, 2, figsize=(9, 6.5))
    plots = [
        (panels[0, 0], "reconstruction MSE per pixel", {"VAE": "eval/vae/recon_mse_per_pixel"}),
        (panels[0, 1], "KL (nats)", {"VAE": "eval/vae/kl"}),
        (panels[1, 0], "nats per image", {"negative ELBO": "eval/vae/neg_elbo", "IWAE NLL": "eval/vae/iwae_nll"}),
        (panels[1, 1], "FID-style score (lower is better)",
         {SOURCES[name]: f"eval/scores/{name}/fid" for name in
          ("vae_reconstructions", "vae_prior", "gan_decoder", "gan_scratch", "real_train")}),
    ]
    for axes, label, series in plots:
        for name, key in series.items():
            axes.plot(dims, [r.metrics[key] for r in runs], marker="o", label=name)
        axes.set(xlabel="latent_dim", ylabel=label)
        axes.set_xscale("log", base=2)
        axes.minorticks_off()
        axes.set_xticks(dims, [str(d) for d in dims])
        axes.legend(fontsize=7)
    _save(figure, path)


def _first_row(grid):
    """The first row of images of a saved grid (8 images a row, 2-pixel gaps)."""
    side = (grid.shape[1] - 2) // 8 - 2  # width = 8 * (side + 2) + 2
    return grid[: side + 4]


def figure_reconstructions(source: Source, runs: list[RunRecord], path: Path) -> None:
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


def figure_gan_curves(source: Source, run: RunRecord, path: Path) -> None:
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for init, colour in (("decoder", "C0"), ("scratch", "C1")):
        steps, values = zip(*source.history(run, f"gan/{init}/fid"))
        left.plot(steps, values, marker="o", color=colour, label=SOURCES[f"gan_{init}"])
        for measure, style, name in (("d_real", "-", "D(x), real"), ("d_fake", "--", "D(G(z)), generated")):
            steps, values = zip(*source.history(run, f"gan/{init}/{measure}"))
            right.plot(steps, values, style, color=colour, label=f"{name}: {SOURCES[f'gan_{init}']}")
    left.axhline(run.metrics["gan/vae_prior_fid"], color="grey", linestyle=":", label="VAE samples")
    left.set(xlabel="epoch (0 = before training)", ylabel="FID-style score", yscale="log",
             title="Sample quality while training")
    right.set(xlabel="epoch", ylabel="mean discriminator output", ylim=(0, 1), title="The discriminators")
    left.legend(fontsize=8)
    right.legend(fontsize=7)
    _save(figure, path)


def figure_panels(source: Source, run: RunRecord, names: dict[str, str], path: Path) -> None:
    """Evaluation figures of one run side by side, titled."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.6), squeeze=False)
    for ax, (name, title) in zip(axes[0], names.items()):
        ax.imshow(_image(source.artifact(run, f"eval/{name}.png")))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    _save(figure, path)


def figure_scores(run: RunRecord, path: Path) -> None:
    plt = _pyplot()
    names = [n for n in SOURCES if n != "noise"]
    figure, axes = plt.subplots(figsize=(5.5, 4))
    for name in names:
        precision, recall = (run.metrics[f"eval/scores/{name}/{m}"] for m in ("precision", "recall"))
        axes.scatter(recall, precision, s=40)
        axes.annotate(SOURCES[name], (recall, precision), fontsize=8, xytext=(4, 4), textcoords="offset points")
    axes.set(xlabel="recall (variety of the data covered)", ylabel="precision (samples that look real)",
             xlim=(0, 1.05), ylim=(0, 1.05), title=f"Precision and recall, {run.name}")
    _save(figure, path)


# ---------------------------------------------------------------------------------------------
# The text


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _argmin(runs: list[RunRecord], key: str) -> RunRecord:
    return min(runs, key=lambda r: r.metrics[key])


def section_runs(study: Study, n: Numbers) -> str:
    rows = [[f"`{r.name}`", n.param(r, "latent_dim"), n.param(r, "vae.beta"), f"`{r.commit}`",
             f"`{r.tags.get('dvc.exp_name', '')}`", f"`{r.run_id}`"] for r in study.runs]
    text = [
        "## The runs",
        f"Built from {n.count(study.runs)} complete run{'s' if len(study.runs) > 1 else ''} of the MLflow "
        f"experiment `{study.experiment}`, those that "
        "share the settings of `params.yaml` apart from `latent_dim` (and `vae.beta` for the beta comparison). "
        f"The main run, used where one run answers, is `{study.main.name}`.",
        _table(["run", "latent_dim", "beta", "commit", "DVC experiment", "MLflow run id"], rows),
    ]
    if study.outdated:
        text.append(f"Left out: {n.count(study.outdated)} complete run(s) in the experiment recorded by older code "
                    "that did not measure everything this report cites.")
    return "\n\n".join(text)


def section_reparameterisation(study: Study, n: Numbers, fig: Callable[[str], str]) -> str:
    m = study.main
    g = "eval/reparameterisation"
    epochs = n.steps(m, "vae/encoder_grad_reconstruction")
    ratio_plain = m.metrics[f"{g}/score_function"] / m.metrics[f"{g}/reparameterised"]
    return "\n\n".join([
        "## 1. Why the reparameterisation trick",
        "**Claim.** The reconstruction term needs the gradient of an expectation over `z ~ q(z|x)`, whose "
        "distribution depends on the encoder's weights `phi`. A sampled `z` carries no gradient back to `phi`. "
        "Writing the sample as a deterministic function of `phi` and of noise that does not depend on `phi` "
        "moves the randomness out of the way, and the gradient flows through `mu` and `sigma` into the encoder:",
        "```\n"
        "z = mu_phi(x) + sigma_phi(x) * eps,   eps ~ N(0, I)\n"
        "d/dphi E_q[log p(x|z)] = E_eps[ d log p(x|z)/dz * d(mu_phi(x) + sigma_phi(x) * eps)/dphi ]\n"
        "without it (score function, REINFORCE):  d/dphi E_q[f(z)] = E_q[ f(z) * d log q_phi(z|x)/dphi ]\n"
        "```",
        f"**Evidence: the path carries gradient.** In `{m.name}` the reconstruction term's gradient on the encoder's "
        f"weights, measured on the same training images after every epoch, had norm "
        f"{n.metric(m, 'vae/encoder_grad_reconstruction', step=1)} after the first epoch and "
        f"{n.metric(m, 'vae/encoder_grad_reconstruction', step=epochs)} after the last, epoch "
        f"{n.param(m, 'vae.epochs')}; the KL term's, which "
        f"reaches the encoder directly in closed form, {n.metric(m, 'vae/encoder_grad_kl', step=1)} and "
        f"{n.metric(m, 'vae/encoder_grad_kl', step=epochs)}. With the sample cut from the graph (`z.detach()`) "
        "the reconstruction gradient on the encoder is exactly zero: `tests/test_train_vae.py` checks both.",
        fig("gradients.png", "Encoder gradient norms per epoch"),
        f"**Evidence: why this path and not the score function.** Both estimators are unbiased for the gradient "
        f"of the reconstruction term with respect to `mu`. On {n.metric(m, f'{g}/images', '.0f')} test images with "
        f"{n.metric(m, f'{g}/samples', '.0f')} draws each, a single reparameterised estimate has variance "
        f"{n.metric(m, f'{g}/reparameterised')} per coordinate; the score-function estimate "
        f"{n.metric(m, f'{g}/score_function')}, {n.ratio(m, f'{g}/score_function', m, f'{g}/reparameterised')} "
        f"times more, and {n.metric(m, f'{g}/score_function_baseline')} with a mean baseline subtracted "
        f"({n.ratio(m, f'{g}/score_function_baseline', m, f'{g}/reparameterised')} times more). The squared mean "
        f"gradient, the signal being estimated, is {n.metric(m, f'{g}/signal')}. "
        + ("As the textbook says, the reparameterised estimator is the far less noisy one here."
           if ratio_plain > 1 else "Here, against the textbook claim, the score-function estimator was not noisier."),
    ])


def latent_plane_run(study: Study) -> RunRecord | None:
    """The run with latent_dim 2, whose latent plane the report shows, if there is one."""
    return next((r for r in study.by_latent_dim if r.latent_dim == 2), None)


def section_kl(study: Study, n: Numbers, source: Source, fig: Callable[[str, str], str]) -> str:
    m = study.main
    kl = source.history(m, "eval/vae/kl_per_dim")
    strongest, weakest = max(kl, key=lambda p: p[1]), min(kl, key=lambda p: p[1])
    text = [
        "## 2. How the KL term shapes the latent space",
        "**Claim.** The KL term pulls every posterior `q(z|x)` towards `N(0, I)`. A dimension is worth its KL cost "
        "only if it helps reconstruction, so information concentrates in a few dimensions and the rest stay "
        "close to the prior; `beta` sets the price.",
        f"**Evidence.** In `{m.name}` the KL of the test split is {n.metric(m, 'eval/vae/kl')} nats per image, "
        f"spread unevenly over its {n.param(m, 'latent_dim')} dimensions: the strongest carries "
        f"{n.metric(m, 'eval/vae/kl_per_dim', step=strongest[0])} nats, the weakest "
        f"{n.metric(m, 'eval/vae/kl_per_dim', step=weakest[0])}. {n.metric(m, 'eval/vae/active_units', '.0f')} of "
        f"{n.param(m, 'latent_dim')} dimensions are active (the variance over test images of their posterior mean "
        "is above `0.01`, Burda et al.).",
    ]
    if len(study.by_latent_dim) > 1:
        rows = [[n.param(r, "latent_dim"), n.metric(r, "eval/vae/kl"), n.metric(r, "eval/vae/active_units", ".0f"),
                 n.metric(r, "eval/vae/kl_per_dim", step=min(source.history(r, "eval/vae/kl_per_dim"),
                                                              key=lambda p: p[1])[0])]
                for r in study.by_latent_dim]
        widest = study.by_latent_dim[-1]
        widest_kl = source.history(widest, "eval/vae/kl_per_dim")
        all_active = all(r.metrics["eval/vae/active_units"] == r.latent_dim for r in study.by_latent_dim)
        spread = (f"At latent_dim {n.param(widest, 'latent_dim')} the weakest dimension carries "
                  f"{n.metric(widest, 'eval/vae/kl_per_dim', step=min(widest_kl, key=lambda p: p[1])[0])} nats and "
                  f"the strongest {n.metric(widest, 'eval/vae/kl_per_dim', step=max(widest_kl, key=lambda p: p[1])[0])}"
                  f", for a total of {n.metric(widest, 'eval/vae/kl')} nats.")
        text += [_table(["latent_dim", "KL (nats)", "active units", "weakest dimension's KL (nats)"], rows),
                 ("Every dimension passes the active-unit threshold in every run: the count alone shows no "
                  "collapse here. " if all_active else
                  "In the wider runs some dimensions are inactive: the KL term has pushed them back to the prior. ")
                 + spread]
    text.append(fig("kl_per_dim.png", "KL per latent dimension, largest first"))
    two = latent_plane_run(study)
    if two is not None:
        text += [f"With latent_dim {n.param(two, 'latent_dim')} (`{two.name}`) the latent space can be seen "
                 "whole: the test images' posterior means, coloured by class, and the decoder's images of a lattice "
                 "over the prior's central region. The KL term keeps the cloud within a few units of the origin; "
                 "which classes stand apart and which overlap shows how much of a digit's identity two "
                 "dimensions can hold, and the lattice shows what the decoder draws between them.",
                 fig("latent_scatter.png", "Test set in the latent plane") + " "
                 + fig("latent_lattice.png", "Decoded lattice over the plane")]
    else:
        text.append("No run with latent_dim `2` is among these; `dvc exp run -S latent_dim=2` adds the latent "
                    "scatter and the decoded lattice to this section.")
    text.append(section_beta(study, n))
    return "\n\n".join(text)


def section_beta(study: Study, n: Numbers) -> str:
    runs = study.by_beta
    if len(runs) < 2:
        return (f"**Beta.** Every run here has beta {n.param(study.main, 'vae.beta')}. Runs with another beta at the "
                "same latent_dim (`dvc exp run -S vae.beta=4`, `-S vae.beta=0.25`) would show the trade here: a larger "
                "beta buys a latent space closer to the prior with worse reconstructions.")
    rows = [[n.param(r, "vae.beta"), n.metric(r, "eval/vae/recon_mse_per_pixel"), n.metric(r, "eval/vae/kl"),
             n.metric(r, "eval/vae/active_units", ".0f"), n.metric(r, "eval/scores/vae_prior/fid"),
             n.metric(r, "eval/scores/vae_prior/sharpness", ".3g")] for r in runs]
    low, high = runs[0], runs[-1]
    mse_up = high.metrics["eval/vae/recon_mse_per_pixel"] > low.metrics["eval/vae/recon_mse_per_pixel"]
    fid_key = "eval/scores/vae_prior/fid"
    best = _argmin(runs, fid_key)
    kl_low_units = high.metrics["eval/vae/active_units"] == high.latent_dim
    return "\n\n".join([
        f"**Beta.** At latent_dim {n.param(study.main, 'latent_dim')}, raising beta from {n.param(low, 'vae.beta')} "
        f"to {n.param(high, 'vae.beta')} took the KL from {n.metric(low, 'eval/vae/kl')} to "
        f"{n.metric(high, 'eval/vae/kl')} nats and the reconstruction MSE from "
        f"{n.metric(low, 'eval/vae/recon_mse_per_pixel')} to {n.metric(high, 'eval/vae/recon_mse_per_pixel')}"
        + (", the expected trade" if mse_up else ", against the expected trade")
        + f"; the prior samples' FID-style score went from {n.metric(low, fid_key)} to {n.metric(high, fid_key)}, "
        f"and was best at beta {n.param(best, 'vae.beta')} ({n.metric(best, fid_key)})"
        + (", between the ends. That is the textbook's trade-off: weak KL pressure leaves gaps between the "
           "posteriors where prior samples land, strong pressure blurs what the decoder draws (see the sharpness "
           "column)." if best not in (low, high) else ".")
        + (f" At beta {n.param(high, 'vae.beta')} every dimension still counts as active, with only "
           f"{n.metric(high, 'eval/vae/kl')} nats of KL between them: the active-unit threshold does not register "
           "this squeeze." if kl_low_units else ""),
        _table(["beta", "recon MSE/pixel", "KL (nats)", "active units", "FID-style, VAE samples",
                "sharpness, VAE samples"], rows),
    ])


def section_latent_dim(study: Study, n: Numbers, fig: Callable[[str, str], str]) -> str:
    runs = study.by_latent_dim
    head = "## 3. How latent_dim affects reconstruction and samples"
    if len(runs) < 2:
        m = study.main
        return "\n\n".join([head, (
            f"Only latent_dim {n.param(m, 'latent_dim')} has been run with these settings (reconstruction MSE "
            f"{n.metric(m, 'eval/vae/recon_mse_per_pixel')}, negative ELBO {n.metric(m, 'eval/vae/neg_elbo')} nats). "
            "A sweep (`make sweep`, or `dvc exp run --queue -S latent_dim=2,8,32` and `dvc queue start`) would add "
            "a table and plots of each measure against latent_dim, reconstructions side by side, and the point "
            "where more capacity stops giving better samples.")])
    keys = ["eval/vae/recon_mse_per_pixel", "eval/vae/kl", "eval/vae/neg_elbo", "eval/vae/iwae_nll",
            "eval/scores/vae_reconstructions/fid", "eval/scores/vae_prior/fid", "eval/scores/gan_decoder/fid"]
    rows = [[n.param(r, "latent_dim")] + [n.metric(r, k) for k in keys] for r in runs]
    best_mse, best_elbo = _argmin(runs, keys[0]), _argmin(runs, "eval/vae/neg_elbo")
    best_prior = _argmin(runs, "eval/scores/vae_prior/fid")
    smallest, largest = runs[0], runs[-1]
    turn = (f"Beyond latent_dim {n.param(best_prior, 'latent_dim')} the extra capacity gives no better samples: the "
            f"VAE samples' score rises to {n.metric(largest, 'eval/scores/vae_prior/fid')} at latent_dim "
            f"{n.param(largest, 'latent_dim')}." if best_prior is not largest else
            "The samples improved up to the largest latent_dim run, so the turn lies beyond this sweep.")
    return "\n\n".join([
        head,
        "**Claim.** More latent dimensions let the VAE reconstruct better, but samples from the prior stop "
        "improving " + ("before reconstructions do. " if best_prior.latent_dim < best_mse.latent_dim else
                        "only where reconstructions stop too (in these runs they turn together). ")
        + f"Reconstruction MSE falls from "
        f"{n.metric(smallest, keys[0])} at latent_dim {n.param(smallest, 'latent_dim')} to its lowest, "
        f"{n.metric(best_mse, keys[0])}, at latent_dim {n.param(best_mse, 'latent_dim')}; the negative ELBO is lowest "
        f"({n.metric(best_elbo, 'eval/vae/neg_elbo')} nats) at latent_dim {n.param(best_elbo, 'latent_dim')}; the "
        f"prior samples score best ({n.metric(best_prior, 'eval/scores/vae_prior/fid')}) at latent_dim "
        f"{n.param(best_prior, 'latent_dim')}. {turn}",
        _table(["latent_dim", "recon MSE/pixel", "KL (nats)", "neg. ELBO (nats)", "IWAE NLL (nats)",
                "FID-style, reconstructions", "FID-style, VAE samples", "FID-style, GAN from decoder"], rows),
        fig("latent_dim.png", "Each measure against latent_dim"),
        "The same test images and their reconstructions (from the posterior mean) at each latent_dim:",
        fig("reconstructions.png", "Reconstructions side by side"),
    ])


def section_gan(study: Study, n: Numbers, fig: Callable[[str, str], str]) -> str:
    m = study.main
    final = n.steps(m, "gan/decoder/fid")
    d_final, s_final = m.metrics["eval/scores/gan_decoder/fid"], m.metrics["eval/scores/gan_scratch/fid"]
    text = [
        "## 4. The VAE decoder as a GAN generator",
        "**Claim.** The decoder already maps `N(0, I)` to digit-like images, so as a generator it starts where a "
        "GAN from scratch has to get to; adversarial training then sharpens it. "
        + ("In the main run it ends ahead of the same GAN trained from scratch." if d_final < s_final else
           "In the main run, though, the GAN from scratch ends ahead: the head start did not last."),
        f"**Evidence.** In `{m.name}` (FID-style score of {n.param(m, 'gan.fid_samples')} samples from one fixed "
        f"noise, against the test split) the decoder-started generator scores "
        f"{n.metric(m, 'gan/decoder/fid', step=0)} before any GAN training (these are the VAE's own samples), "
        f"against {n.metric(m, 'gan/scratch/fid', step=0)} for the random generator. After "
        f"{n.param(m, 'gan.epochs')} epochs they score {n.metric(m, 'gan/decoder/fid', step=final)} and "
        f"{n.metric(m, 'gan/scratch/fid', step=final)}. On the evaluation's samples the GAN from the decoder scores "
        f"{n.metric(m, 'eval/scores/gan_decoder/fid')} and the GAN from scratch "
        f"{n.metric(m, 'eval/scores/gan_scratch/fid')}, "
        f"against {n.metric(m, 'eval/scores/vae_prior/fid')} for the VAE's samples and "
        f"{n.metric(m, 'eval/scores/real_train/fid')} for real training images (the floor).",
        fig("gan_training.png", "FID-style score and discriminator outputs per epoch"),
        fig("samples.png", "VAE samples, GAN from the decoder and GAN from scratch, from the same noise"),
    ]
    if len(study.by_latent_dim) > 1:
        runs = study.by_latent_dim
        wins = [r for r in runs if r.metrics["eval/scores/gan_decoder/fid"] < r.metrics["eval/scores/gan_scratch/fid"]]
        rows = [[n.param(r, "latent_dim"), n.metric(r, "eval/scores/vae_prior/fid"),
                 n.metric(r, "eval/scores/gan_decoder/fid"), n.metric(r, "eval/scores/gan_scratch/fid")] for r in runs]
        improves = [r for r in runs
                    if r.metrics["eval/scores/gan_decoder/fid"] < r.metrics["eval/scores/vae_prior/fid"]]
        text += [f"Across the sweep, the GAN from the decoder beats the GAN from scratch at {n.count(wins)} of "
                 f"{n.count(runs)} latent_dims, and improves on the VAE's own samples at {n.count(improves)}:",
                 _table(["latent_dim", "FID-style, VAE samples", "GAN from decoder", "GAN from scratch"], rows)]
    return "\n\n".join(text)


def section_encoder_discriminator(study: Study, n: Numbers, fig: Callable[[str, str], str]) -> str:
    m = study.main
    p = "eval/probes"
    encoder, pixels = m.metrics[f"{p}/encoder"], m.metrics[f"{p}/pixels"]
    best_d = max(m.metrics[f"{p}/discriminator_decoder"], m.metrics[f"{p}/discriminator_scratch"])
    least_sharp = min((s for s in SOURCES if s != "noise"), key=lambda s: m.metrics[f"eval/scores/{s}/sharpness"])
    verdict = {name: [n.metric(m, f"eval/discriminators/{init}/{name}", ".3g") for init in ("decoder", "scratch")]
               for name in SOURCES}
    return "\n\n".join([
        "## 5. The VAE encoder and the GAN discriminator",
        "**Claim.** Both read images with similar networks, but they learn different things. The encoder "
        "is trained to explain each image: its code keeps what tells one digit from another. The discriminator is "
        "trained to tell data from the generator's output: it keeps what separates real from generated, and "
        "digit identity only as far as that helps.",
        f"**Evidence: what the features keep.** A `k`-nearest-neighbour vote (`k = 5`) over the training images "
        f"reads the test images' class correctly for {n.metric(m, f'{p}/encoder', '.3f')} of them from the encoder's "
        f"{n.param(m, 'latent_dim')}-dimensional posterior means, {n.metric(m, f'{p}/pixels', '.3f')} from the raw "
        f"pixels, and {n.metric(m, f'{p}/discriminator_decoder', '.3f')} and "
        f"{n.metric(m, f'{p}/discriminator_scratch', '.3f')} from the last hidden layer of the two discriminators "
        f"({n.param(m, 'gan.discriminator_hidden')} units). "
        + ("The encoder's small code keeps class at least as well as the pixels, " if encoder >= pixels else
           "The encoder's small code keeps slightly less class information than the pixels, ")
        + ("and the discriminators' features keep less." if best_d < min(encoder, pixels) else
           "and the discriminators' features keep as much, against the claim above."),
        "**Evidence: what the discriminator judges.** Mean `D(x)` of each trained discriminator on each set of images "
        "(`1` = sure it is real):",
        _table(["images", "discriminator vs. GAN from decoder", "discriminator vs. GAN from scratch"],
               [[SOURCES[name], *verdict[name]] for name in SOURCES]),
        f"The discriminator trained against the decoder-started generator gives real images "
        f"{n.metric(m, 'eval/discriminators/decoder/real_train', '.3f')} and the VAE's samples "
        f"{n.metric(m, 'eval/discriminators/decoder/vae_prior', '.3f')}: it has learned to spot what the VAE "
        + ("gets wrong (its samples are the least sharp, see the last section), which no term of the VAE's loss "
           "measures. " if least_sharp == "vae_prior" else "gets wrong. ")
        + "What the encoder's code stands for shows "
        "when its most active dimensions are swept one at a time (one row each, from `-3` to `3` around one test "
        "image's code): what changes along a row, the digit's identity, slant or thickness, is what that dimension "
        "encodes.",
        fig("traversal.png", "Latent traversal of the most active dimensions"),
    ])


def section_strengths(study: Study, n: Numbers) -> str:
    m = study.main
    names = ["real_train", "vae_reconstructions", "vae_prior", "gan_decoder", "gan_scratch"]

    def score(name: str, measure: str, fmt: str = ".3g") -> str:
        return n.metric(m, f"eval/scores/{name}/{measure}", fmt)

    rows = [[SOURCES[name], score(name, "fid", ".4g"), score(name, "precision"), score(name, "recall"),
             score(name, "classes", ".0f"), score(name, "label_entropy"), score(name, "sharpness")] for name in names]
    sharp = {name: m.metrics[f"eval/scores/{name}/sharpness"] for name in names}
    recall = {name: m.metrics[f"eval/scores/{name}/recall"] for name in names}
    gans_sharper = min(sharp["gan_decoder"], sharp["gan_scratch"]) > sharp["vae_prior"]
    vae_covers_more = recall["vae_prior"] > max(recall["gan_decoder"], recall["gan_scratch"])
    return "\n\n".join([
        "## 6. Strengths and weaknesses, as these runs show them",
        "**Claim (the textbook's).** VAEs train stably and cover the data but give blurry samples; GANs give sharp "
        "samples but train unstably and drop modes. Here is what the main run says about each part.",
        _table(["images", "FID-style", "precision", "recall", "classes", "label entropy (nats)", "sharpness"], rows),
        f"**Blur against sharpness.** Sharpness is the variance of the image Laplacian: real training images "
        f"{score('real_train', 'sharpness')}, VAE samples {score('vae_prior', 'sharpness')}, VAE reconstructions "
        f"{score('vae_reconstructions', 'sharpness')}, GAN samples {score('gan_decoder', 'sharpness')} (from the "
        f"decoder) and {score('gan_scratch', 'sharpness')} (from scratch). "
        + ("The VAE blurs and the GANs do not, as the textbook says." if gans_sharper else
           "Against the textbook, the GAN samples are not sharper than the VAE's here."),
        f"**Mode coverage.** Recall, the share of real images whose neighbourhood the samples reach, is "
        f"{score('vae_prior', 'recall')} for the VAE's samples, {score('gan_decoder', 'recall')} for the GAN from "
        f"the decoder and {score('gan_scratch', 'recall')} for the GAN from scratch; the samples fall into "
        f"{score('vae_prior', 'classes', '.0f')}, {score('gan_decoder', 'classes', '.0f')} and "
        f"{score('gan_scratch', 'classes', '.0f')} classes. "
        + ("The VAE covers more of the data, as the textbook says." if vae_covers_more else
           "Against the textbook, a GAN covers more of the data than the VAE's samples do here; the VAE's samples "
           f"also have the lower precision ({score('vae_prior', 'precision')}): many fall between the data's "
           "modes rather than on them."),
        f"**Stability.** Over the {n.param(m, 'vae.epochs')} epochs of the VAE's training the test negative "
        f"ELBO went up from one epoch to the next {n.rises(m, 'vae/test_neg_elbo')} times; over the GANs' "
        f"{n.param(m, 'gan.epochs')} epochs the FID-style score went up {n.rises(m, 'gan/decoder/fid')} times (from "
        f"the decoder) and {n.rises(m, 'gan/scratch/fid')} times (from scratch). The VAE's loss is a bound that each step "
        "lowers on average; the GAN's two players chase each other, and a better discriminator can make the samples "
        "worse for a while.",
    ])


def build(study: Study, source: Source, figures: Path) -> tuple[str, list[dict]]:
    """Write the figures into `figures`; return the Markdown text and its numbers' sources."""
    n = Numbers(source)
    m = study.main

    def fig(name: str, alt: str) -> str:
        if not (figures / name).exists():
            raise ReportError(f"figure {name} was not drawn")  # a bug here, not a user error
        return f"![{alt}]({FIGURES}/{name})"

    figure_gradients(source, m, figures / "gradients.png")
    figure_kl_per_dim(source, study.by_latent_dim, figures / "kl_per_dim.png")
    figure_gan_curves(source, m, figures / "gan_training.png")
    figure_panels(source, m, {"vae_prior": "VAE samples", "gan_decoder": "GAN from the decoder",
                              "gan_scratch": "GAN from scratch"}, figures / "samples.png")
    shutil.copy(source.artifact(m, "eval/traversal.png"), figures / "traversal.png")
    two = latent_plane_run(study)
    if two is not None:
        for name in ("latent_scatter.png", "latent_lattice.png"):
            shutil.copy(source.artifact(two, f"eval/{name}"), figures / name)
    if len(study.by_latent_dim) > 1:
        figure_latent_dim(study.by_latent_dim, figures / "latent_dim.png")
        figure_reconstructions(source, study.by_latent_dim, figures / "reconstructions.png")
    figure_scores(m, figures / "precision_recall.png")

    sections = [
        f"# Reflection: a VAE and a GAN on `{m.params['data.name']}`",
        "Written by `python -m pipeline.report` from the recorded runs; do not edit by hand. Every number in the "
        f"text is read from the run it names; `{NUMBERS}` lists each one with its run and metric. FID-style scores "
        "are Fréchet distances in the feature space of the project's own digit classifier: comparable between "
        "these runs, not with published FIDs. Lower is better.",
        section_runs(study, n),
        section_reparameterisation(study, n, fig),
        section_kl(study, n, source, fig),
        section_latent_dim(study, n, fig),
        section_gan(study, n, fig),
        section_encoder_discriminator(study, n, fig),
        section_strengths(study, n) + "\n\n" + fig("precision_recall.png", "Precision against recall per image set"),
    ]
    return "\n\n".join(sections) + "\n", n.entries


def to_html(markdown_text: str) -> str:
    """The report as one HTML page; images stay files beside it (figures/), shown inline."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Reflection report</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.45;padding:0 1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
            "img{max-width:100%}code,pre{background:#f4f4f4}</style></head><body>\n" + body + "\n</body></html>\n")


def main(argv: list[str] | None = None) -> None:
    from pipeline.config import load_config

    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="MLflow experiment (default: the one params.yaml records into)")
    parser.add_argument("--output", type=Path, default=REPORT_DIR, help=f"folder to write into (default {REPORT_DIR})")
    args = parser.parse_args(argv)

    config = load_config()
    experiment = args.experiment or config.experiment_name
    tracking.check_server()
    client, experiment_id = open_experiment(experiment)
    usable, outdated = collect(client, experiment_id)
    reference = {key: str(value) for key, value in flatten(config).items()}
    study = select(usable, reference, experiment, outdated)
    with tempfile.TemporaryDirectory() as downloads, atomic_dir(args.output / FIGURES) as figures:
        text, numbers = build(study, Source(client, Path(downloads)), figures)
        for name, content in ((MARKDOWN, text), (HTML, to_html(text)),
                              (NUMBERS, json.dumps(numbers, indent=1) + "\n")):
            with atomic_path(args.output / name) as tmp:
                tmp.write_text(content)
    log.info("report from %d runs (main run %s) written to %s", len(study.runs), study.main.name,
             args.output / MARKDOWN)


if __name__ == "__main__":
    from pipeline.cli import run_command

    run_command("report", main)
