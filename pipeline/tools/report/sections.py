"""The report's text: one section per lab question, each a claim and its evidence, every number
through `Numbers`; `build` draws the figures and assembles the Markdown."""

from __future__ import annotations

import html
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.tools.report.claims import CANNOT_TELL, CONTRADICTED, HELD, Best, Cell, Claim, best, trend
from pipeline.tools.report.figures import (
    SOURCES,
    figure_gan_curves,
    figure_gradients,
    figure_kl_per_dim,
    figure_latent_dim,
    figure_panels,
    figure_reconstructions,
    figure_scores,
)
from pipeline.tools.report.numbers import Numbers, Source
from pipeline.tools.report.runs import ReportError, Study
from pipeline.tracking.names import (
    ENCODER_GRAD_KL,
    ENCODER_GRAD_RECONSTRUCTION,
    KL_PER_DIM,
    PRIOR_HOLE,
    discriminator_verdict,
    gan_measure,
    probe,
    probe_test,
    reparameterisation,
    score,
)
from pipeline.tracking.names import HEADLINE_METRICS as HEADLINE
from pipeline.tracking.rows import Configuration, Row, left_out

FIGURES, NUMBERS = "figures", "reflection.numbers.json"

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|])")  # what Markdown reads as markup in the middle of a line


def literal(text: str) -> str:
    """Text from a row (a run name, a tag, an experiment name: what a user or DVC chose) as inline
    code that shows it as it is, in the Markdown and the HTML page: escaped for HTML and for
    Markdown inside a <code> element, so that no character of it can close the span or reach the
    page as markup (a backtick in a DVC experiment name would close a `code span`)."""
    escaped = _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(" ".join(str(text).split()), quote=True))
    return f"<code>{escaped}</code>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


MORE_SEEDS = ("rerun it with several seeds: `seeds` in params.yaml lists five by default, so "
              "`dvc exp run -S latent_dim=N` trains them together")


class Answers:
    """The claims the sections tested, in order, for the answers at the top of the report."""

    def __init__(self) -> None:
        self.claims: list[tuple[str, Claim]] = []

    def add(self, question: str, claim: Claim) -> Claim:
        self.claims.append((question, claim))
        return claim


def _cells(cells: list[Cell]) -> str:
    return ", ".join(cell.label for cell in cells)


def verdict(n: Numbers, claim: Claim) -> str:
    """The claim's verdict in words, naming the cells behind it; chosen by the verdict."""
    held, against, untold = (claim.where(o) for o in (HELD, CONTRADICTED, CANNOT_TELL))
    if not claim.cells:
        return "**cannot tell**: nothing to compare (one configuration)"
    fewest = min((cell.a for cell in claim.cells), key=lambda c: c.n)
    at = f"at {n.count(list(fewest.rows))} seed{'s' if fewest.n > 1 else ''}"
    if claim.best is not None:
        if claim.verdict == HELD:
            return f"**held**: {claim.best} is better than every other ({_cells(held)})"
        return (f"**cannot tell {at}** which is best: the lowest mean is at {claim.best}, and the runs cannot tell "
                f"it from {', '.join(c.label.split(' − ')[0] for c in claim.cells if c.outcome != HELD)}")
    if claim.verdict == HELD:
        return f"**held** at every comparison ({_cells(held)})"
    if claim.verdict == CONTRADICTED:
        text = f"**contradicted** at {_cells(against)}"
        if held:
            text += f"; held at {_cells(held)}"
        return text + (f"; cannot tell at {_cells(untold)}" if untold else "")
    text = f"**cannot tell {at}** at {_cells(untold)}"
    return text + (f"; held at {_cells(held)}" if held else "")


def claim_table(n: Numbers, claim: Claim, fmt: str | None = None) -> str:
    rows = []
    for cell in claim.cells:
        difference, p = n.cell(claim, cell, fmt)
        expected = "negative" if cell.expect < 0 else "positive"
        rows.append([cell.label, difference, expected, p, cell.outcome])
    return _table(["comparison", "difference (95% CI)", "claim expects", "Holm-adjusted p", "outcome"], rows)


def tested(n: Numbers, answers: Answers, question: str, claim: Claim, fmt: str | None = None) -> str:
    """A claim as the report states it: the statement, its verdict, and the table of its cells."""
    answers.add(question, claim)
    return "\n\n".join([f"**Claim: {claim.statement}** Verdict: {verdict(n, claim)}.", claim_table(n, claim, fmt)])


def _ld(n: Numbers):
    return lambda c: f"latent_dim {n.param(c.rows[0], 'latent_dim')}"


def _beta(n: Numbers):
    return lambda c: f"beta {n.param(c.rows[0], 'vae.beta')}"


def _value(n: Numbers, key: str):
    return lambda c: n.param(c.rows[0], key)


def section_runs(study: Study, n: Numbers) -> str:
    configs = [[n.param(c.rows[0], "latent_dim"), n.param(c.rows[0], "vae.beta"), n.count(list(c.rows)),
                ", ".join(n.param(r, "seed") for r in c.rows), f"`{c.id}`"] for c in study.configurations]
    rows = [[literal(r.name), n.param(r, "latent_dim"), n.param(r, "vae.beta"), n.param(r, "seed"), literal(r.commit),
             literal(r.tags.get('dvc.exp_name', '')), literal(r.run_id)] for r in study.runs]
    text = [
        "## Appendix: the runs",
        f"Built from {n.count(study.runs)} complete run{'s' if len(study.runs) > 1 else ''} of the MLflow "
        f"experiment {literal(study.experiment)}, those that share the settings of {study.source} apart from "
        "`latent_dim` (and `vae.beta` for the beta comparison) and the model `seed`. Runs that differ only in their "
        "seed are replicates of one configuration; the split and the evaluation classifier (`data.seed`, "
        "`classifier.seed`) are the same for all of them, so every score is measured with one ruler. Each "
        "configuration and its seeds:",
        _table(["latent_dim", "beta", "seeds (n)", "seeds", "configuration"], configs),
        f"The main configuration, `{study.main_config.id}`, is the one at those settings' `latent_dim` and "
        f"`vae.beta`; its run used where one run illustrates is {literal(study.main.name)} (seed "
        f"{n.param(study.main, 'seed')}). Every run:",
        _table(["run", "latent_dim", "beta", "seed", "commit", "DVC experiment", "MLflow run id"], rows),
    ]
    if study.outdated:
        text.append(f"Left out: {n.count(study.outdated)} complete run(s) in the experiment recorded by older code "
                    "that did not measure everything this report cites.")
    if study.other:
        text.append("Left out because their settings differ in more than `latent_dim` or `vae.beta` alone: "
                    + "; ".join(f"{literal(r.name)} ({', '.join(f'`{k}`' for k in keys)})" for r, keys in study.other)
                    + ".")
    return "\n\n".join(text)


def section_method(study: Study, n: Numbers, answers: Answers) -> str:
    single = [c for c in study.configurations if c.n == 1]
    text = [
        "## How the claims are tested",
        "Each section states the textbook answer as a claim and tests it on the runs. A claim is made of "
        "comparisons: a configuration's mean over its seeds minus another's, paired by seed where both were run "
        "at the same seeds (the seed fixes the weights' draws, the batch order and the noise, each from its own "
        "stream, so that pairing can remove what the two sides share) and pairing narrows the claim's intervals "
        "(see Pairing below), Welch's interval otherwise; each table says which. The comparisons "
        "of one claim form a family: their p-values are adjusted together by Holm's step-down procedure "
        "(`statsmodels`), which keeps the chance of any false finding in the family at 5%. A comparison is "
        "*held* when its adjusted p-value is below 5% and its difference lies where the claim expects, "
        "*contradicted* when it lies on the other side (or the two sides are equal at every seed), and *cannot "
        "tell* otherwise. A claim is contradicted when any of its comparisons is, held when all are, and cannot "
        "tell otherwise. Trends across `latent_dim` or `beta` compare each value with its neighbour. \"Best\" is "
        "tested against every other configuration in one family, so the choice of the best from the same runs is "
        "paid for. Intervals in the tables are 95% t-intervals, not adjusted; the verdicts use the adjusted "
        "p-values.",
    ]
    paired = [(question, claim) for question, claim in answers.claims if not math.isnan(claim.pairing)]
    if paired:
        rows = [[question, claim.family, n.pairing(claim), "paired" if claim.paired else "Welch"]
                for question, claim in paired]
        text += ["**Pairing.** Whether pairing by seed narrowed each claim's intervals: the median over its "
                 "comparisons of the paired interval's half-width over Welch's (below 1: narrower). Where pairing "
                 "widens them (above 1) the claim's comparisons use Welch's interval and test instead.",
                 _table(["question", "claim", "paired / Welch half-width", "used"], rows)]
    keys = sorted({key for c in study.configurations for row in c.rows for key in row.metrics})
    left = left_out(study.configurations, keys)
    if left:
        text.append("Values recorded as NaN or infinite are left out, each from its own metric's mean and tests "
                    f"(that metric's n counts the other seeds): {', '.join(map(literal, left))}.")
    if single:
        text.append(f"{n.count([c.rows[0] for c in single])} configuration(s) here have one seed "
                    f"({', '.join(f'`{c.id}`' for c in single)}): no interval can be given for them, and every "
                    f"comparison that needs one says *cannot tell*. To lift that, {MORE_SEEDS}.")
    return "\n\n".join(text)


def section_reparameterisation(study: Study, n: Numbers, answers: Answers, fig: Callable[[str], str]) -> str:
    m, c = study.main, study.main_config
    g = reparameterisation
    epochs = n.steps(m, ENCODER_GRAD_RECONSTRUCTION)
    claim = Claim("reparameterisation", "the score-function estimator of the reconstruction term's gradient is "
                  "noisier than the reparameterised one, with or without a baseline.", [
                      Cell("score function − reparameterised", c, g("score_function"), +1, b=c,
                           b_key=g("reparameterised")),
                      Cell("score function with baseline − reparameterised", c, g("score_function_baseline"), +1,
                           b=c, b_key=g("reparameterised"))])
    return "\n\n".join([
        "## 1. Why the reparameterisation trick",
        "The reconstruction term needs the gradient of an expectation over `z ~ q(z|x)`, whose "
        "distribution depends on the encoder's weights `phi`. A sampled `z` carries no gradient back to `phi`. "
        "Writing the sample as a deterministic function of `phi` and of noise that does not depend on `phi` "
        "moves the randomness out of the way, and the gradient flows through `mu` and `sigma` into the encoder:",
        "```\n"
        "z = mu_phi(x) + sigma_phi(x) * eps,   eps ~ N(0, I)\n"
        "d/dphi E_q[log p(x|z)] = E_eps[ d log p(x|z)/dz * d(mu_phi(x) + sigma_phi(x) * eps)/dphi ]\n"
        "without it (score function, REINFORCE):  d/dphi E_q[f(z)] = E_q[ f(z) * d log q_phi(z|x)/dphi ]\n"
        "```",
        f"**The path carries gradient (the mechanism, one run).** In {literal(m.name)} the reconstruction term's "
        f"gradient on the encoder's weights had norm {n.metric(m, ENCODER_GRAD_RECONSTRUCTION, step=1)} after the "
        f"first epoch and {n.metric(m, ENCODER_GRAD_RECONSTRUCTION, step=epochs)} after the last; the KL term's, "
        f"which reaches the encoder directly in closed form, {n.metric(m, ENCODER_GRAD_KL, step=1)} and "
        f"{n.metric(m, ENCODER_GRAD_KL, step=epochs)}. With the sample cut from the graph (`z.detach()`) the "
        "reconstruction gradient on the encoder is exactly zero: `tests/test_train_vae.py` checks both.",
        fig("gradients.png", "Encoder gradient norms per epoch"),
        f"**Why this path and not the score function, over the seeds.** Both estimators are unbiased for the "
        f"gradient of the reconstruction term with respect to `mu`. Per coordinate, on "
        f"{n.metric(m, g('images'), '.0f')} test images with {n.metric(m, g('samples'), '.0f')} draws each, the "
        f"variance of one estimate is {n.mean(c, g('reparameterised'))} reparameterised, "
        f"{n.mean(c, g('score_function'))} by the score function and {n.mean(c, g('score_function_baseline'))} "
        f"with a mean baseline subtracted; the squared mean gradient, the signal, is {n.mean(c, g('signal'))}.",
        tested(n, answers, "Reparameterisation", claim),
    ])


def latent_plane_run(study: Study) -> Row | None:
    """The run with latent_dim 2, whose latent plane the report shows, if there is one."""
    return next((study.at_main_seed(c) for c in study.by_latent_dim if c.latent_dim == 2), None)


def section_kl(study: Study, n: Numbers, answers: Answers, source: Source, fig: Callable[[str, str], str]) -> str:
    m, c = study.main, study.main_config
    kl = source.history(m, KL_PER_DIM)
    strongest, weakest = max(kl, key=lambda p: p[1]), min(kl, key=lambda p: p[1])
    label = _ld(n)
    text = [
        "## 2. How the KL term shapes the latent space",
        "The KL term pulls every posterior `q(z|x)` towards `N(0, I)`. The textbook claims: a dimension is worth "
        "its KL cost only if it helps reconstruction, so with room to spare information concentrates in a few "
        "dimensions and the rest stay at the prior (inactive); total KL grows with the room given; `beta` sets "
        "the price.",
        f"At {label(c)}, over its seeds, the KL of the test split is {n.mean(c, HEADLINE['kl'])} nats per image and "
        f"{n.mean(c, HEADLINE['active_units'], '.3g')} of {n.param(m, 'latent_dim')} dimensions are active (the "
        "variance over test images of their posterior mean is above `0.01`, Burda et al.). In one run, "
        f"{literal(m.name)}, the strongest dimension carries {n.metric(m, KL_PER_DIM, step=strongest[0])} nats and "
        f"the weakest {n.metric(m, KL_PER_DIM, step=weakest[0])}.",
    ]
    if len(study.by_latent_dim) > 1:
        configs = study.by_latent_dim
        rows = [[n.param(r, "latent_dim"), n.metric(r, HEADLINE["kl"]), n.metric(r, HEADLINE["active_units"], ".0f"),
                 n.metric(r, KL_PER_DIM, step=min(source.history(r, KL_PER_DIM), key=lambda p: p[1])[0]),
                 n.metric(r, KL_PER_DIM, step=max(source.history(r, KL_PER_DIM), key=lambda p: p[1])[0])]
                for r in study.one_per_latent_dim]
        total = trend("KL against latent_dim", "total KL grows with latent_dim.", configs, HEADLINE["kl"], +1, label,
                      _value(n, "latent_dim"))
        active = Claim("inactive dimensions", "with room to spare, some dimensions stay at the prior: fewer "
                       "active units than latent dimensions.",
                       [Cell(label(c), c, HEADLINE["active_units"], -1, against=float(c.latent_dim)) for c in configs])
        text += [
            tested(n, answers, "KL and the latent space", total),
            tested(n, answers, "KL and the latent space", active, ".3g"),
            f"Per dimension, at seed {n.param(m, 'seed')} (one run per latent_dim):",
            _table(["latent_dim", "KL (nats)", "active units", "weakest dimension (nats)",
                    "strongest dimension (nats)"], rows),
        ]
    text.append(fig("kl_per_dim.png", "KL per latent dimension, largest first"))
    two = latent_plane_run(study)
    if two is not None:
        text += [f"With latent_dim {n.param(two, 'latent_dim')} ({literal(two.name)}) the latent space can be seen "
                 "whole: the test images' posterior means, coloured by class, and the decoder's images of a lattice "
                 "over the prior's central region.",
                 fig("latent_scatter.png", "Test set in the latent plane") + " "
                 + fig("latent_lattice.png", "Decoded lattice over the plane")]
    else:
        text.append("No run with latent_dim `2` is among these; `dvc exp run -S latent_dim=2` adds the latent "
                    "scatter and the decoded lattice to this section.")
    text.append(section_beta(study, n, answers))
    return "\n\n".join(text)


def section_beta(study: Study, n: Numbers, answers: Answers) -> str:
    configs = study.by_beta
    if len(configs) < 2:
        return (f"**Beta.** Every run here has beta {n.param(study.main, 'vae.beta')}. Runs with another beta at the "
                "same latent_dim (`dvc exp run -S vae.beta=4`, `-S vae.beta=0.25`) would test the trade here: a "
                "larger beta buys a latent space closer to the prior with worse reconstructions.")
    label = _beta(n)
    rows = [[n.param(c.rows[0], "vae.beta"), n.count(list(c.rows)), n.mean(c, HEADLINE["recon_mse"]),
             n.mean(c, HEADLINE["kl"]), n.mean(c, HEADLINE["active_units"], ".3g"), n.mean(c, HEADLINE["fid_vae"]),
             n.mean(c, score("vae_prior", "kid")), n.mean(c, score("vae_posterior", "fid")), n.mean(c, PRIOR_HOLE)]
            for c in configs]
    kl = trend("beta and KL", "a larger beta gives less KL.", configs, HEADLINE["kl"], -1, label, _value(n, "vae.beta"))
    mse = trend("beta and reconstruction", "a larger beta gives worse reconstructions (higher MSE).", configs,
                HEADLINE["recon_mse"], +1, label, _value(n, "vae.beta"))
    samples = best("beta and samples", "one beta gives the best prior samples (FID-style).", configs,
                   HEADLINE["fid_vae"], label)
    hole = trend("beta and the prior hole", "a larger beta pulls the aggregate posterior towards the prior, so "
                 "the prior hole shrinks.", configs, PRIOR_HOLE, -1, label, _value(n, "vae.beta"))
    return "\n\n".join([
        f"**Beta.** At latent_dim {n.param(study.main, 'latent_dim')}, each beta over its seeds:",
        _table(["beta", "seeds", "recon MSE/pixel", "KL (nats)", "active units", "FID-style, VAE samples",
                "KID, VAE samples", "FID-style, aggregate posterior", "prior hole"], rows),
        tested(n, answers, "Beta", kl),
        tested(n, answers, "Beta", mse),
        best_text(n, answers, "Beta", samples, "the prior samples' FID-style score"),
        "The decoder is trained on codes from the posteriors and used, for samples, on codes from the prior; "
        "where the posteriors together (the aggregate posterior) leave parts of the prior empty, prior samples "
        "fall where the decoder was never trained. Decoding codes drawn from the "
        "test images' posteriors (the aggregate posterior) instead, the same decoder scores the aggregate-posterior "
        "column above; the prior samples' score minus it is the *prior hole*, the price of the regions of `N(0, I)` "
        "that no posterior covers.",
        tested(n, answers, "Beta", hole),
    ])


def best_text(n: Numbers, answers: Answers, question: str, found: Best, what: str) -> str:
    """A "best" claim as the selection-aware test allows it."""
    label = found.claim.cells[0].label.split(" − ")[1] if found.claim.cells else ""
    tied = found.tied
    if not tied:
        said = f"{what} is best at {label}: after Holm over all {n.count([c.a.rows[0] for c in found.claim.cells])} " \
               "comparisons with it, every other configuration is worse."
    else:
        said = (f"{what} has its lowest mean at {label}, but after Holm over the comparisons with it the runs "
                f"cannot tell it from {', '.join(c.label.split(' − ')[0] for c in found.claim.cells if c.a in tied)}: "
                "no single best can be named.")
    answers.add(question, found.claim)
    return "\n\n".join([f"**Claim: {found.claim.statement}** {said[0].upper() + said[1:]}",
                        claim_table(n, found.claim)])


def section_latent_dim(study: Study, n: Numbers, answers: Answers, fig: Callable[[str, str], str]) -> str:
    configs = study.by_latent_dim
    head = "## 3. How latent_dim affects reconstruction and samples"
    if len(configs) < 2:
        m = study.main_config
        return "\n\n".join([head, (
            f"Only latent_dim {n.param(m.rows[0], 'latent_dim')} has been run with these settings (reconstruction MSE "
            f"{n.mean(m, HEADLINE['recon_mse'])}, negative ELBO {n.mean(m, HEADLINE['neg_elbo'])} nats). "
            "A sweep (`make sweep`, or `dvc exp run --queue -S latent_dim=2,8,32` and `dvc queue start`) would test "
            "each measure's trend against latent_dim and show reconstructions side by side.")])
    label = _ld(n)
    keys = [HEADLINE["recon_mse"], HEADLINE["neg_elbo"], HEADLINE["iwae_nll"], HEADLINE["fid_recon"],
            HEADLINE["fid_vae"], score("vae_prior", "kid"), HEADLINE["fid_decoder"]]
    rows = [[n.param(c.rows[0], "latent_dim"), n.count(list(c.rows))] + [n.mean(c, k) for k in keys] for c in configs]
    claims = [
        trend("latent_dim and MSE", "more latent dimensions reconstruct better (lower MSE).", configs,
              HEADLINE["recon_mse"], -1, label, _value(n, "latent_dim")),
        trend("latent_dim and ELBO", "more latent dimensions give a better bound (lower negative ELBO).", configs,
              HEADLINE["neg_elbo"], -1, label, _value(n, "latent_dim")),
        trend("latent_dim and IWAE", "more latent dimensions give a better likelihood (lower IWAE NLL).", configs,
              HEADLINE["iwae_nll"], -1, label, _value(n, "latent_dim")),
    ]
    prior = best("latent_dim and samples", "samples from the prior stop improving sooner than reconstructions: "
                 "one latent_dim gives the best prior samples (FID-style).", configs, HEADLINE["fid_vae"], label)
    kid = best("latent_dim and samples (KID)", "the same, by KID.", configs, score("vae_prior", "kid"), label)
    return "\n\n".join([
        head,
        "The textbook: more latent dimensions let the VAE reconstruct better, but samples from the prior stop "
        "improving sooner. Each configuration over its seeds (mean ± half-width of the 95% interval):",
        _table(["latent_dim", "seeds", "recon MSE/pixel", "neg. ELBO (nats)", "IWAE NLL (nats)",
                "FID-style, reconstructions", "FID-style, VAE samples", "KID, VAE samples",
                "FID-style, GAN from decoder"], rows),
        *(tested(n, answers, "latent_dim", claim) for claim in claims),
        best_text(n, answers, "latent_dim", prior, "the prior samples' FID-style score"),
        best_text(n, answers, "latent_dim", kid, "the prior samples' KID"),
        fig("latent_dim.png", "Each measure against latent_dim: each seed, the mean and its 95% interval"),
        "The same test images and their reconstructions (from the posterior mean) at each latent_dim, from the runs "
        "at the main run's seed:",
        fig("reconstructions.png", "Reconstructions side by side"),
    ])



def section_gan(study: Study, n: Numbers, answers: Answers, fig: Callable[[str, str], str]) -> str:
    m, c = study.main, study.main_config
    final = n.steps(m, gan_measure("decoder", "fid"))
    decoder, scratch, prior = HEADLINE["fid_decoder"], HEADLINE["fid_scratch"], HEADLINE["fid_vae"]
    label = _ld(n)
    configs = study.by_latent_dim
    against_scratch = Claim("GAN: decoder against scratch", "the GAN whose generator starts as the VAE decoder ends "
                            "better (lower FID-style) than the same GAN from scratch.",
                            [Cell(label(x), x, decoder, -1, b=x, b_key=scratch) for x in configs])
    against_vae = Claim("GAN against the VAE", "adversarial training improves the decoder's samples: the GAN from "
                        "the decoder scores better than the VAE's own samples.",
                        [Cell(label(x), x, decoder, -1, b=x, b_key=prior) for x in configs])
    text = [
        "## 4. The VAE decoder as a GAN generator",
        "The decoder already maps `N(0, I)` to digit-like images, so as a generator it starts where a GAN from "
        "scratch has to get to; adversarial training then sharpens it.",
        f"At {label(c)}, on the evaluation's samples, the GAN from the decoder scores {n.mean(c, decoder)} "
        f"(KID {n.mean(c, score('gan_decoder', 'kid'))}), the GAN from scratch {n.mean(c, scratch)} (KID "
        f"{n.mean(c, score('gan_scratch', 'kid'))}), the VAE's samples {n.mean(c, prior)} (KID "
        f"{n.mean(c, score('vae_prior', 'kid'))}) and real training images {n.mean(c, HEADLINE['fid_real'])} "
        "(the floor). The two GANs of a run share its seed, so their differences can be paired (each table says "
        "whether they were).",
        "Each latent_dim over its seeds; GAN scores can spread unevenly (one seed's run can fail while the others "
        "do not), so the median stands beside the mean:",
        _table(["latent_dim", "seeds", "VAE samples", "GAN from decoder", "median", "GAN from scratch", "median"],
               [[n.param(x.rows[0], "latent_dim"), n.count(list(x.rows)), n.mean(x, prior), n.mean(x, decoder),
                 n.median(x, decoder), n.mean(x, scratch), n.median(x, scratch)] for x in configs]),
        tested(n, answers, "Decoder as generator", against_scratch),
        tested(n, answers, "Decoder as generator", against_vae),
        fig("gan_training.png", "FID-style score per epoch, each seed, and the discriminators' outputs"),
    ]
    if final > 1 and c.n > 1:  # is the from-scratch curve still falling over its last quarter (or epoch)?
        span = max(1, round(final / 4))
        interval, change = n.change(c, gan_measure("scratch", "fid"), final - span, final)
        if interval.has_interval and interval.high < 0:
            budget = ("it was still improving when training stopped, so \"from the decoder is better\" is a "
                      f"statement about this budget of {n.param(m, 'gan.epochs')} epochs, not about where either "
                      "GAN would end; a longer from-scratch run (`dvc exp run -S gan.epochs=60`) would test it.")
        elif interval.has_interval and interval.low > 0:
            budget = "it was getting worse when training stopped: more epochs would not close the gap."
        else:
            budget = "the runs cannot tell whether it was still improving when training stopped."
        over = "the last quarter of its epochs" if span > 1 else "its last epoch"
        text.append(f"**At this budget.** Over {over} the GAN from scratch's FID-style score changed by {change}: "
                    f"{budget}")
    return "\n\n".join(text)


def section_encoder_discriminator(study: Study, n: Numbers, answers: Answers, fig: Callable[[str, str], str]) -> str:
    m, c = study.main, study.main_config
    p = probe
    claim = Claim("encoder against discriminator", "the encoder's code keeps digit identity better than the "
                  "discriminators' features (k-NN class accuracy).",
                  [Cell(f"encoder − discriminator vs. {SOURCES[f'gan_{init}']}", c, p("encoder"), +1, b=c,
                        b_key=p(f"discriminator_{init}")) for init in ("decoder", "scratch")])
    verdicts = [[SOURCES[name], *(n.mean(c, discriminator_verdict(init, name), ".3g") for init in ("decoder", "scratch"))]
                for name in SOURCES]
    return "\n\n".join([
        "## 5. The VAE encoder and the GAN discriminator",
        "Both read images with similar networks, but they learn different things. The encoder is trained to "
        "explain each image: its code keeps what tells one digit from another. The discriminator is trained to "
        "tell data from the generator's output: it keeps what separates real from generated, and digit identity "
        "only as far as that helps.",
        f"A `k`-nearest-neighbour vote (`k = 5`) over the training images reads the test images' class, at "
        f"{label_of(n, c)} over its seeds, from the encoder's posterior means with accuracy "
        f"{n.mean(c, p('encoder'), '.3f')}, from the raw pixels {n.mean(c, p('pixels'), '.3f')}, and from the last "
        f"hidden layer of the two discriminators ({n.param(m, 'gan.discriminator_hidden')} units) "
        f"{n.mean(c, p('discriminator_decoder'), '.3f')} and {n.mean(c, p('discriminator_scratch'), '.3f')}.",
        tested(n, answers, "Encoder and discriminator", claim),
        "Within each run the test images are the same for every probe, so McNemar's exact test on the images only "
        "one of two probes classifies correctly says whether their difference is more than the test set's own "
        "noise: " + "; ".join(
            f"encoder against {what}: p below 5% in {n.count([r for r in c.rows if r.metrics[probe_test(space)] < 0.05])} "
            f"of {n.count(list(c.rows))} seeds"
            for space, what in (("pixels", "pixels"), ("discriminator_decoder", "the discriminator vs. the GAN from "
                                "the decoder"), ("discriminator_scratch", "the discriminator vs. the GAN from scratch")))
        + ".",
        "What each trained discriminator says of each set of images, mean `D(x)` over the seeds (`1` = sure it is "
        "real):",
        _table(["images", "discriminator vs. GAN from decoder", "discriminator vs. GAN from scratch"], verdicts),
        "What the encoder's code stands for shows when its most active dimensions are swept one at a time (one row "
        "each, from `-3` to `3` around one test image's code, one run): what changes along a row, the digit's "
        "identity, slant or thickness, is what that dimension encodes.",
        fig("traversal.png", "Latent traversal of the most active dimensions"),
    ])


def label_of(n: Numbers, c: Configuration) -> str:
    return f"latent_dim {n.param(c.rows[0], 'latent_dim')}"


def section_strengths(study: Study, n: Numbers, answers: Answers) -> str:
    c = study.main_config
    names = ["real_train", "vae_reconstructions", "vae_prior", "gan_decoder", "gan_scratch"]

    def mean(name: str, measure: str, fmt: str = ".3g") -> str:
        return n.mean(c, score(name, measure), fmt)

    rows = [[SOURCES[name], mean(name, "fid", ".4g"), mean(name, "kid", ".4g"), mean(name, "precision"),
             mean(name, "recall"), mean(name, "classes"), mean(name, "sharpness")] for name in names]

    def cell(label: str, a: str, measure: str, expect: int, b: str) -> Cell:
        return Cell(label, c, score(a, measure), expect, b=c, b_key=score(b, measure))

    claim = Claim("VAE against GAN", "VAEs cover the data but give blurry samples; GANs give sharp samples but drop "
                  "modes.", [
                      cell("VAE samples blurrier than real images (sharpness)", "vae_prior", "sharpness", -1, "real_train"),
                      cell("GAN from decoder sharper than VAE samples", "gan_decoder", "sharpness", +1, "vae_prior"),
                      cell("VAE covers more than GAN from decoder (recall)", "vae_prior", "recall", +1, "gan_decoder"),
                      cell("VAE covers more than GAN from scratch (recall)", "vae_prior", "recall", +1, "gan_scratch"),
                      cell("GAN from decoder more precise than VAE", "gan_decoder", "precision", +1, "vae_prior"),
                      cell("GAN from scratch drops classes the VAE draws", "gan_scratch", "classes", -1, "vae_prior"),
                  ])
    above, beyond = n.difference(c, score("gan_decoder", "sharpness"), c, score("real_train", "sharpness"), ".3g")
    if above.has_interval and above.low > 0:
        sharper = "above the data's: high-frequency artefact, not detail, since sharpness is not better the higher it goes."
    elif above.has_interval and above.high < 0:
        sharper = "below the data's: sharper than the VAE's, still less sharp than real digits."
    else:
        sharper = "the runs cannot tell it from the data's."
    dropped = {name: dropped_a_mode(c, name) for name in ("vae_prior", "gan_decoder", "gan_scratch")}
    stability = "**Stability over the seeds.** The seed-to-seed standard deviation of the final FID-style score, " \
                "and the runs that dropped a mode (their samples show fewer classes than the real images do), " \
                "per latent_dim:"
    spread_rows = [[n.param(x.rows[0], "latent_dim"), n.count(list(x.rows)),
                    *(n.sd(x, score(name, "fid")) for name in ("vae_prior", "gan_decoder", "gan_scratch")),
                    *(n.count(dropped_a_mode(x, name)) for name in ("vae_prior", "gan_decoder", "gan_scratch"))]
                   for x in study.by_latent_dim if x.n > 1]
    return "\n\n".join([
        "## 6. Strengths and weaknesses, as these runs show them",
        f"Each image set at {label_of(n, c)}, mean ± half-width over its {n.count(list(c.rows))} seeds (the image "
        "sets of one run share its seed, so differences can be paired; the table says whether they were). "
        "Sharpness is the variance of the "
        "image Laplacian; recall the share of real images whose neighbourhood the samples reach; precision the "
        "share of samples inside the real images' neighbourhoods; classes the digits the classifier finds among "
        "the samples.",
        _table(["images", "FID-style", "KID", "precision", "recall", "classes", "sharpness"], rows),
        tested(n, answers, "Strengths and weaknesses", claim, ".3g"),
        f"Against the real images: the GAN from the decoder's sharpness minus theirs is {beyond}, {sharper}",
        stability,
        _table(["latent_dim", "seeds", "sd, VAE samples", "sd, GAN from decoder", "sd, GAN from scratch",
                "dropped a mode: VAE", "GAN from decoder", "GAN from scratch"], spread_rows)
        if spread_rows else f"With one seed per configuration there is no spread to show; to see it, {MORE_SEEDS}.",
        f"At {label_of(n, c)}: {n.count(dropped['vae_prior'])} of {n.count(list(c.rows))} VAE runs dropped a mode, "
        f"{n.count(dropped['gan_decoder'])} of the GANs from the decoder and {n.count(dropped['gan_scratch'])} of the "
        "GANs from scratch.",
    ])


def dropped_a_mode(configuration: Configuration, images: str) -> list[Row]:
    """The runs whose `images` show fewer classes than the real training images (the rule the
    report states for a dropped mode)."""
    return [r for r in configuration.rows
            if r.metrics[score(images, "classes")] < r.metrics[score("real_train", "classes")]]


def section_reruns(study: Study, n: Numbers) -> str:
    c = study.main_config
    keys = [("reconstruction MSE/pixel", HEADLINE["recon_mse"]), ("negative ELBO (nats)", HEADLINE["neg_elbo"]),
            ("FID-style, VAE samples", HEADLINE["fid_vae"]), ("FID-style, GAN from decoder", HEADLINE["fid_decoder"]),
            ("FID-style, GAN from scratch", HEADLINE["fid_scratch"])]
    text = ["## How far a rerun should agree",
            "Rerun with the same seeds on the same machine and software, every number here repeats bit for bit. On "
            "another CPU they differ by several percent (docs/reliability.md has the measured case), so a rerun "
            "elsewhere is not compared digit for digit."]
    if c.n < 2:
        text.append("With one seed no prediction can be given for a rerun with new seeds (\"How the claims are "
                    "tested\" says how to get several).")
        return "\n\n".join(text)
    rows = [[label, n.mean(c, key), n.prediction(c, key) or "- (one finite seed)"] for label, key in keys]
    text += [f"A rerun with {n.count(list(c.rows))} new seeds: the 95% interval of the mean says where the true mean "
             "lies, not where a rerun's mean falls; that is the prediction interval, wider by the rerun's own "
             f"spread (at {label_of(n, c)}):",
             _table(["measure", "mean ± 95% CI", "95% prediction interval for a rerun's mean"], rows)]
    return "\n\n".join(text)


def answers_table(n: Numbers, answers: Answers) -> str:
    rows = [[question, claim.statement, verdict(n, claim)] for question, claim in answers.claims]
    return "\n\n".join(["## Answers",
                        "Each textbook claim the sections test, and what the runs say (the sections give the numbers; "
                        "\"How the claims are tested\" the rules):",
                        _table(["question", "claim", "verdict"], rows)])


def build(study: Study, source: Source, figures: Path) -> tuple[str, list[dict]]:
    """Write the figures into `figures`; return the Markdown text and its numbers' sources."""
    n = Numbers(source)
    m = study.main

    def fig(name: str, alt: str) -> str:
        if not (figures / name).exists():
            raise ReportError(f"figure {name} was not drawn")  # a bug here, not a user error
        return f"![{alt}]({FIGURES}/{name})"

    figure_gradients(source, m, figures / "gradients.png")
    figure_kl_per_dim(source, study.one_per_latent_dim, figures / "kl_per_dim.png")
    figure_gan_curves(source, list(study.main_config.rows), figures / "gan_training.png")
    figure_panels(source, m, {"vae_prior": "VAE samples", "gan_decoder": "GAN from the decoder",
                              "gan_scratch": "GAN from scratch"}, figures / "samples.png")
    shutil.copy(source.artifact(m, "eval/traversal.png"), figures / "traversal.png")
    two = latent_plane_run(study)
    if two is not None:
        for name in ("latent_scatter.png", "latent_lattice.png"):
            shutil.copy(source.artifact(two, f"eval/{name}"), figures / name)
    if len(study.by_latent_dim) > 1:
        figure_latent_dim(study.by_latent_dim, figures / "latent_dim.png")
        figure_reconstructions(source, study.one_per_latent_dim, figures / "reconstructions.png")
    figure_scores(study.main_config, figures / "precision_recall.png")

    answers = Answers()
    sections = [
        section_reparameterisation(study, n, answers, fig),
        section_kl(study, n, answers, source, fig),
        section_latent_dim(study, n, answers, fig),
        section_gan(study, n, answers, fig) + "\n\n" + fig("samples.png", "VAE samples, GAN from the decoder and "
                                                           "GAN from scratch, from the same noise"),
        section_encoder_discriminator(study, n, answers, fig),
        section_strengths(study, n, answers) + "\n\n" + fig("precision_recall.png", "Precision against recall per "
                                                              "image set, mean and 95% interval"),
        section_reruns(study, n),
        section_runs(study, n),
    ]
    head = [
        f"# Reflection: a VAE and a GAN on {literal(m.params['data.name'])}",
        "Written by `make report` from the recorded runs; do not edit by hand. Every number in the "
        f"text is read from the runs it names; `{NUMBERS}` lists each one with its runs, metric and each seed's "
        "value. FID-style scores are Fréchet distances in the feature space of the project's own digit classifier "
        "(KID the kernel distance in the same space): comparable between these runs, not with published FIDs. "
        "Lower is better.",
        answers_table(n, answers),
        section_method(study, n, answers),
    ]
    return "\n\n".join(head + sections) + "\n", n.entries
