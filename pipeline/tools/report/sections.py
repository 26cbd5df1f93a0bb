"""The report's text: one section per lab question, each a claim and its evidence, every number
through `Numbers`; `build` draws the figures and assembles the Markdown."""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.core.stats import Interval
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
    VAE_TEST_NEG_ELBO,
    discriminator_verdict,
    gan_measure,
    probe,
    reparameterisation,
    score,
)
from pipeline.tracking.names import HEADLINE_METRICS as HEADLINE
from pipeline.tracking.rows import Configuration, Row

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


SEED_SWEEP = ("a seed sweep (`make sweep SEEDS=\"0 1 2 3 4\"`) would say whether it is larger than the "
              "seed-to-seed spread")


def contrast(n: Numbers, a: Configuration, a_key: str, b: Configuration, b_key: str, a_label: str, b_label: str,
             fmt: str | None = None) -> tuple[Interval, str]:
    """A difference stated only as far as its interval allows: `a_label minus b_label is d (95% CI
    ...)`, then whether the runs tell the two apart, cannot tell at these seeds, or (one seed a
    side) cannot give an interval at all."""
    interval, text = n.difference(a, a_key, b, b_key, fmt)
    said = f"{a_label} minus {b_label} is {text}"
    if not interval.has_interval:
        return interval, f"{said}, from one seed a side: no interval can be given; {SEED_SWEEP}."
    if interval.excludes_zero:
        return interval, f"{said}: the interval excludes zero, so the runs tell them apart."
    return interval, f"{said}: the interval includes zero, so the runs cannot tell them apart at these seeds."


def _best(configurations: list[Configuration], key: str) -> Configuration:
    """The configuration with the lowest mean of `key`."""
    return min(configurations, key=lambda c: c.interval(key).mean)


def section_runs(study: Study, n: Numbers) -> str:
    configs = [[n.param(c.rows[0], "latent_dim"), n.param(c.rows[0], "vae.beta"), n.count(list(c.rows)),
                ", ".join(n.param(r, "seed") for r in c.rows), f"`{c.id}`"] for c in study.configurations]
    rows = [[literal(r.name), n.param(r, "latent_dim"), n.param(r, "vae.beta"), n.param(r, "seed"), literal(r.commit),
             literal(r.tags.get('dvc.exp_name', '')), literal(r.run_id)] for r in study.runs]
    text = [
        "## The runs",
        f"Built from {n.count(study.runs)} complete run{'s' if len(study.runs) > 1 else ''} of the MLflow "
        f"experiment {literal(study.experiment)}, those that share the settings of {study.source} apart from `latent_dim` "
        "(and `vae.beta` for the beta comparison) and the model `seed`. Runs that differ only in their seed are "
        "replicates of one configuration; the split and the evaluation classifier (`data.seed`, `classifier.seed`) "
        "are the same for all of them, so every score is measured with one ruler. A configuration's number is the "
        "mean over its seeds, written `mean ± half-width` of its 95% t-interval (`pipeline/core/stats.py` says why "
        "a t-interval at these few seeds); a difference between two configurations run at the same seeds is "
        "paired by seed. Each configuration and its seeds:",
        _table(["latent_dim", "beta", "seeds (n)", "seeds", "configuration"], configs),
        f"The main configuration, `{study.main_config.id}`, is the one at those settings' `latent_dim` and `vae.beta`; "
        f"its run used where one run illustrates is {literal(study.main.name)} (seed {n.param(study.main, 'seed')}). "
        "Bit-for-bit reruns hold on the same machine and software; on another CPU the numbers differ by several "
        "percent, so compare a rerun elsewhere with these intervals, not digit for digit (a 95% interval of a mean is "
        "not a range that one rerun's mean must fall in). Every run:",
        _table(["run", "latent_dim", "beta", "seed", "commit", "DVC experiment", "MLflow run id"], rows),
    ]
    if study.outdated:
        text.append(f"Left out: {n.count(study.outdated)} complete run(s) in the experiment recorded by older code "
                    "that did not measure everything this report cites.")
    return "\n\n".join(text)


def section_reparameterisation(study: Study, n: Numbers, fig: Callable[[str], str]) -> str:
    m = study.main
    g = reparameterisation
    epochs = n.steps(m, ENCODER_GRAD_RECONSTRUCTION)
    ratio_plain = m.metrics[g("score_function")] / m.metrics[g("reparameterised")]
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
        f"**Evidence: the path carries gradient.** In {literal(m.name)} the reconstruction term's gradient on the encoder's "
        f"weights, measured on the same training images after every epoch, had norm "
        f"{n.metric(m, ENCODER_GRAD_RECONSTRUCTION, step=1)} after the first epoch and "
        f"{n.metric(m, ENCODER_GRAD_RECONSTRUCTION, step=epochs)} after the last, epoch "
        f"{n.param(m, 'vae.epochs')}; the KL term's, which "
        f"reaches the encoder directly in closed form, {n.metric(m, ENCODER_GRAD_KL, step=1)} and "
        f"{n.metric(m, ENCODER_GRAD_KL, step=epochs)}. With the sample cut from the graph (`z.detach()`) "
        "the reconstruction gradient on the encoder is exactly zero: `tests/test_train_vae.py` checks both.",
        fig("gradients.png", "Encoder gradient norms per epoch"),
        f"**Evidence: why this path and not the score function.** Both estimators are unbiased for the gradient "
        f"of the reconstruction term with respect to `mu`. On {n.metric(m, g('images'), '.0f')} test images with "
        f"{n.metric(m, g('samples'), '.0f')} draws each, a single reparameterised estimate has variance "
        f"{n.metric(m, g('reparameterised'))} per coordinate; the score-function estimate "
        f"{n.metric(m, g('score_function'))}, {n.ratio(m, g('score_function'), m, g('reparameterised'))} "
        f"times more, and {n.metric(m, g('score_function_baseline'))} with a mean baseline subtracted "
        f"({n.ratio(m, g('score_function_baseline'), m, g('reparameterised'))} times more). The squared mean "
        f"gradient, the signal being estimated, is {n.metric(m, g('signal'))}. "
        + ("As the textbook says, the reparameterised estimator is the far less noisy one here."
           if ratio_plain > 1 else "Here, against the textbook claim, the score-function estimator was not noisier."),
    ])


def latent_plane_run(study: Study) -> Row | None:
    """The run with latent_dim 2, whose latent plane the report shows, if there is one."""
    return next((study.at_main_seed(c) for c in study.by_latent_dim if c.latent_dim == 2), None)


def section_kl(study: Study, n: Numbers, source: Source, fig: Callable[[str, str], str]) -> str:
    m = study.main
    kl = source.history(m, KL_PER_DIM)
    strongest, weakest = max(kl, key=lambda p: p[1]), min(kl, key=lambda p: p[1])
    text = [
        "## 2. How the KL term shapes the latent space",
        "**Claim.** The KL term pulls every posterior `q(z|x)` towards `N(0, I)`. A dimension is worth its KL cost "
        "only if it helps reconstruction, so information concentrates in a few dimensions and the rest stay "
        "close to the prior; `beta` sets the price.",
        f"**Evidence.** In {literal(m.name)} the KL of the test split is {n.metric(m, HEADLINE['kl'])} nats per image, "
        f"spread unevenly over its {n.param(m, 'latent_dim')} dimensions: the strongest carries "
        f"{n.metric(m, KL_PER_DIM, step=strongest[0])} nats, the weakest "
        f"{n.metric(m, KL_PER_DIM, step=weakest[0])}. {n.metric(m, HEADLINE['active_units'], '.0f')} of "
        f"{n.param(m, 'latent_dim')} dimensions are active (the variance over test images of their posterior mean "
        "is above `0.01`, Burda et al.).",
    ]
    if len(study.one_per_latent_dim) > 1:
        rows = [[n.param(r, "latent_dim"), n.metric(r, HEADLINE["kl"]), n.metric(r, HEADLINE["active_units"], ".0f"),
                 n.metric(r, KL_PER_DIM, step=min(source.history(r, KL_PER_DIM),
                                                              key=lambda p: p[1])[0])]
                for r in study.one_per_latent_dim]
        widest = study.one_per_latent_dim[-1]
        widest_kl = source.history(widest, KL_PER_DIM)
        all_active = all(r.metrics[HEADLINE["active_units"]] == r.latent_dim for r in study.one_per_latent_dim)
        spread = (f"At latent_dim {n.param(widest, 'latent_dim')} the weakest dimension carries "
                  f"{n.metric(widest, KL_PER_DIM, step=min(widest_kl, key=lambda p: p[1])[0])} nats and "
                  f"the strongest {n.metric(widest, KL_PER_DIM, step=max(widest_kl, key=lambda p: p[1])[0])}"
                  f", for a total of {n.metric(widest, HEADLINE['kl'])} nats.")
        shown = ("Each latent_dim's run" if len(study.one_per_latent_dim) == len(study.by_latent_dim) else
                 f"The runs of {n.count(study.one_per_latent_dim)} of the "
                 f"{n.count([c.rows[0] for c in study.by_latent_dim])} latent_dims, evenly spread,")
        text += [f"{shown} at seed {n.param(m, 'seed')}:",
                 _table(["latent_dim", "KL (nats)", "active units", "weakest dimension's KL (nats)"], rows),
                 ("Every dimension passes the active-unit threshold in every run: the count alone shows no "
                  "collapse here. " if all_active else
                  "In the wider runs some dimensions are inactive: the KL term has pushed them back to the prior. ")
                 + spread]
    text.append(fig("kl_per_dim.png", "KL per latent dimension, largest first"))
    two = latent_plane_run(study)
    if two is not None:
        text += [f"With latent_dim {n.param(two, 'latent_dim')} ({literal(two.name)}) the latent space can be seen "
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
    configs = study.by_beta
    if len(configs) < 2:
        return (f"**Beta.** Every run here has beta {n.param(study.main, 'vae.beta')}. Runs with another beta at the "
                "same latent_dim (`dvc exp run -S vae.beta=4`, `-S vae.beta=0.25`) would show the trade here: a larger "
                "beta buys a latent space closer to the prior with worse reconstructions.")
    rows = [[n.param(c.rows[0], "vae.beta"), n.count(list(c.rows)), n.mean(c, HEADLINE["recon_mse"]),
             n.mean(c, HEADLINE["kl"]), n.mean(c, HEADLINE["active_units"], ".3g"), n.mean(c, HEADLINE["fid_vae"]),
             n.mean(c, score("vae_prior", "sharpness"), ".3g")] for c in configs]
    low, high = configs[0], configs[-1]
    fid_key = HEADLINE["fid_vae"]
    best = _best(configs, fid_key)

    def label(c: Configuration) -> str:
        return f"beta {n.param(c.rows[0], 'vae.beta')}"

    _, mse = contrast(n, high, HEADLINE["recon_mse"], low, HEADLINE["recon_mse"], f"the reconstruction MSE at {label(high)}",
                      f"at {label(low)}")
    _, kl = contrast(n, high, HEADLINE["kl"], low, HEADLINE["kl"], f"The KL at {label(high)}", f"at {label(low)}")
    others = [contrast(n, c, fid_key, best, fid_key, f"at {label(c)}", f"at {label(best)}")[1] for c in configs
              if c is not best]
    return "\n\n".join([
        f"**Beta.** At latent_dim {n.param(study.main, 'latent_dim')}, each beta over its seeds (the expected trade: "
        "a larger beta pulls the posteriors towards the prior, so less KL and worse reconstructions):",
        _table(["beta", "seeds", "recon MSE/pixel", "KL (nats)", "active units", "FID-style, VAE samples",
                "sharpness, VAE samples"], rows),
        f"{kl} {mse[0].upper() + mse[1:]}",
        f"The prior samples' FID-style score has its lowest mean at {label(best)}. Against it, the score "
        + " ".join(others),
    ])


def section_latent_dim(study: Study, n: Numbers, fig: Callable[[str, str], str]) -> str:
    configs = study.by_latent_dim
    head = "## 3. How latent_dim affects reconstruction and samples"
    if len(configs) < 2:
        m = study.main_config
        return "\n\n".join([head, (
            f"Only latent_dim {n.param(m.rows[0], 'latent_dim')} has been run with these settings (reconstruction MSE "
            f"{n.mean(m, HEADLINE['recon_mse'])}, negative ELBO {n.mean(m, HEADLINE['neg_elbo'])} nats). "
            "A sweep (`make sweep`, or `dvc exp run --queue -S latent_dim=2,8,32` and `dvc queue start`) would add "
            "a table and plots of each measure against latent_dim, reconstructions side by side, and the point "
            "where more capacity stops giving better samples.")])
    keys = [HEADLINE["recon_mse"], HEADLINE["kl"], HEADLINE["neg_elbo"], HEADLINE["iwae_nll"],
            HEADLINE["fid_recon"], HEADLINE["fid_vae"], HEADLINE["fid_decoder"]]
    rows = [[n.param(c.rows[0], "latent_dim"), n.count(list(c.rows))] + [n.mean(c, k) for k in keys] for c in configs]
    prior = HEADLINE["fid_vae"]
    best_mse, best_elbo, best_prior = _best(configs, keys[0]), _best(configs, HEADLINE["neg_elbo"]), _best(configs, prior)
    smallest = configs[0]

    def label(c: Configuration) -> str:
        return f"latent_dim {n.param(c.rows[0], 'latent_dim')}"

    _, mse = contrast(n, smallest, keys[0], best_mse, keys[0], f"At {label(smallest)} the reconstruction MSE",
                      f"at {label(best_mse)}")
    told, untold = [], []
    for c in configs:
        if c is best_prior:
            continue
        interval, text = contrast(n, c, prior, best_prior, prior, f"at {label(c)}", f"at {label(best_prior)}")
        (told if interval.excludes_zero else untold).append((c, text))
    turn = (f"Where it turns: the VAE samples' score has its lowest mean at {label(best_prior)}. "
            + (f"The runs tell it apart from {', '.join(label(c) for c, _ in told)}; "
               if told else "The runs tell it apart from no other latent_dim; ")
            + (f"they cannot tell it from {', '.join(label(c) for c, _ in untold)}, so the turn lies somewhere "
               "among those. " if untold else "it is the turn. ")
            + "Each difference, paired by seed where the seeds are shared: "
            + " ".join(text[0].upper() + text[1:] for _, text in told + untold))
    return "\n\n".join([
        head,
        "**Claim.** More latent dimensions let the VAE reconstruct better, but samples from the prior stop "
        "improving sooner. Each configuration over its seeds (mean ± half-width of the 95% interval):",
        _table(["latent_dim", "seeds", "recon MSE/pixel", "KL (nats)", "neg. ELBO (nats)", "IWAE NLL (nats)",
                "FID-style, reconstructions", "FID-style, VAE samples", "FID-style, GAN from decoder"], rows),
        f"**Evidence.** The reconstruction MSE has its lowest mean at {label(best_mse)}, the negative ELBO at "
        f"{label(best_elbo)}. {mse}",
        turn,
        fig("latent_dim.png", "Each measure against latent_dim, mean and 95% interval over the seeds"),
        "The same test images and their reconstructions (from the posterior mean) at each latent_dim, from the runs "
        "at the main run's seed:",
        fig("reconstructions.png", "Reconstructions side by side"),
    ])


def section_gan(study: Study, n: Numbers, fig: Callable[[str, str], str]) -> str:
    m, c = study.main, study.main_config
    final = n.steps(m, gan_measure("decoder", "fid"))
    decoder, scratch, prior = HEADLINE["fid_decoder"], HEADLINE["fid_scratch"], HEADLINE["fid_vae"]
    _, against_scratch = contrast(n, c, decoder, c, scratch, "the GAN from the decoder", "the GAN from scratch")
    _, against_vae = contrast(n, c, decoder, c, prior, "The GAN from the decoder", "the VAE's own samples")
    text = [
        "## 4. The VAE decoder as a GAN generator",
        "**Claim.** The decoder already maps `N(0, I)` to digit-like images, so as a generator it starts where a "
        "GAN from scratch has to get to; adversarial training then sharpens it.",
        f"**Evidence: one run.** In {literal(m.name)} (FID-style score of {n.param(m, 'gan.fid_samples')} samples from one "
        f"fixed noise, against the test split) the decoder-started generator scores "
        f"{n.metric(m, gan_measure('decoder', 'fid'), step=0)} before any GAN training (these are the VAE's own samples), "
        f"against {n.metric(m, gan_measure('scratch', 'fid'), step=0)} for the random generator. After "
        f"{n.param(m, 'gan.epochs')} epochs they score {n.metric(m, gan_measure('decoder', 'fid'), step=final)} and "
        f"{n.metric(m, gan_measure('scratch', 'fid'), step=final)}.",
        fig("gan_training.png", "FID-style score and discriminator outputs per epoch"),
        f"**Evidence: over the seeds.** On the evaluation's samples at latent_dim {n.param(m, 'latent_dim')}, the GAN "
        f"from the decoder scores {n.mean(c, decoder)}, the GAN from scratch {n.mean(c, scratch)}, the VAE's samples "
        f"{n.mean(c, prior)} and real training images {n.mean(c, HEADLINE['fid_real'])} (the floor). The two GANs of "
        f"a run share its seed, so their difference is paired: {against_scratch} "
        f"{against_vae}",
        fig("samples.png", "VAE samples, GAN from the decoder and GAN from scratch, from the same noise"),
    ]
    if len(study.by_latent_dim) > 1:
        lines, verdicts = [], {}
        for conf in study.by_latent_dim:
            interval, said = n.difference(conf, decoder, conf, scratch)
            verdicts[conf.id] = ("no interval (one seed)" if not interval.has_interval else
                                 "decoder better" if interval.high < 0 else "scratch better" if interval.low > 0 else
                                 "cannot tell")
            lines.append([n.param(conf.rows[0], "latent_dim"), n.count(list(conf.rows)), n.mean(conf, prior),
                          n.mean(conf, decoder), n.mean(conf, scratch), said, verdicts[conf.id]])
        wins = [c for c in study.by_latent_dim if verdicts[c.id] == "decoder better"]
        losses = [c for c in study.by_latent_dim if verdicts[c.id] == "scratch better"]
        text += [f"Across the sweep, the GAN from the decoder beats the GAN from scratch, by an interval of the paired "
                 f"difference that excludes zero, at {n.count([x.rows[0] for x in wins])} of "
                 f"{n.count([x.rows[0] for x in study.by_latent_dim])} latent_dims, and the GAN from scratch beats it at "
                 f"{n.count([x.rows[0] for x in losses])}; at the rest the runs cannot tell:",
                 _table(["latent_dim", "seeds", "FID-style, VAE samples", "GAN from decoder", "GAN from scratch",
                         "decoder minus scratch", "verdict"], lines)]
    return "\n\n".join(text)


def section_encoder_discriminator(study: Study, n: Numbers, fig: Callable[[str, str], str]) -> str:
    m = study.main
    p = probe
    encoder, pixels = m.metrics[p("encoder")], m.metrics[p("pixels")]
    best_d = max(m.metrics[p("discriminator_decoder")], m.metrics[p("discriminator_scratch")])
    least_sharp = min((s for s in SOURCES if s != "noise"), key=lambda s: m.metrics[score(s, "sharpness")])
    verdict = {name: [n.metric(m, discriminator_verdict(init, name), ".3g") for init in ("decoder", "scratch")]
               for name in SOURCES}
    return "\n\n".join([
        "## 5. The VAE encoder and the GAN discriminator",
        "**Claim.** Both read images with similar networks, but they learn different things. The encoder "
        "is trained to explain each image: its code keeps what tells one digit from another. The discriminator is "
        "trained to tell data from the generator's output: it keeps what separates real from generated, and "
        "digit identity only as far as that helps.",
        f"**Evidence: what the features keep.** A `k`-nearest-neighbour vote (`k = 5`) over the training images "
        f"reads the test images' class correctly for {n.metric(m, p('encoder'), '.3f')} of them from the encoder's "
        f"{n.param(m, 'latent_dim')}-dimensional posterior means, {n.metric(m, p('pixels'), '.3f')} from the raw "
        f"pixels, and {n.metric(m, p('discriminator_decoder'), '.3f')} and "
        f"{n.metric(m, p('discriminator_scratch'), '.3f')} from the last hidden layer of the two discriminators "
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
        f"{n.metric(m, discriminator_verdict('decoder', 'real_train'), '.3f')} and the VAE's samples "
        f"{n.metric(m, discriminator_verdict('decoder', 'vae_prior'), '.3f')}: it has learned to spot what the VAE "
        + ("gets wrong (its samples are the least sharp, see the last section), which no term of the VAE's loss "
           "measures. " if least_sharp == "vae_prior" else "gets wrong. ")
        + "What the encoder's code stands for shows "
        "when its most active dimensions are swept one at a time (one row each, from `-3` to `3` around one test "
        "image's code): what changes along a row, the digit's identity, slant or thickness, is what that dimension "
        "encodes.",
        fig("traversal.png", "Latent traversal of the most active dimensions"),
    ])


def section_strengths(study: Study, n: Numbers) -> str:
    m, c = study.main, study.main_config
    names = ["real_train", "vae_reconstructions", "vae_prior", "gan_decoder", "gan_scratch"]

    def key(name: str, measure: str) -> str:
        return score(name, measure)

    def mean(name: str, measure: str, fmt: str = ".3g") -> str:
        return n.mean(c, key(name, measure), fmt)

    rows = [[SOURCES[name], mean(name, "fid", ".4g"), mean(name, "precision"), mean(name, "recall"),
             mean(name, "classes", ".3g"), mean(name, "label_entropy"), mean(name, "sharpness")] for name in names]

    def versus(measure: str, a: str, b: str) -> str:
        text = contrast(n, c, key(a, measure), c, key(b, measure), SOURCES[a], SOURCES[b], ".3g")[1]
        return text[0].upper() + text[1:]

    return "\n\n".join([
        "## 6. Strengths and weaknesses, as these runs show them",
        "**Claim (the textbook's).** VAEs train stably and cover the data but give blurry samples; GANs give sharp "
        f"samples but train unstably and drop modes. Here is what the main configuration's seeds ({n.count(list(c.rows))}) "
        "say about each part (mean ± half-width of the 95% interval; the image sets of one run share its "
        "seed, so each difference below is paired):",
        _table(["images", "FID-style", "precision", "recall", "classes", "label entropy (nats)", "sharpness"], rows),
        "**Blur against sharpness.** Sharpness is the variance of the image Laplacian (higher is sharper). "
        f"{versus('sharpness', 'gan_decoder', 'vae_prior')} {versus('sharpness', 'gan_scratch', 'vae_prior')}",
        "**Mode coverage.** Recall is the share of real images whose neighbourhood the samples reach; precision the "
        "share of samples that fall in the real images' neighbourhoods. In recall: "
        f"{versus('recall', 'vae_prior', 'gan_decoder')} {versus('recall', 'vae_prior', 'gan_scratch')} "
        f"In precision: {versus('precision', 'vae_prior', 'gan_decoder')}",
        f"**Stability (one run, {literal(m.name)}).** Over the {n.param(m, 'vae.epochs')} epochs of the VAE's training the "
        f"test negative ELBO went up from one epoch to the next {n.rises(m, VAE_TEST_NEG_ELBO)} times; over the "
        f"GANs' {n.param(m, 'gan.epochs')} epochs the FID-style score went up "
        f"{n.rises(m, gan_measure('decoder', 'fid'))} times (from the decoder) and "
        f"{n.rises(m, gan_measure('scratch', 'fid'))} times (from scratch). The VAE's loss is a bound that "
        "each step lowers on average; the GAN's two players chase each other, and a better discriminator can make "
        "the samples worse for a while.",
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
    figure_kl_per_dim(source, study.one_per_latent_dim, figures / "kl_per_dim.png")
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
        figure_reconstructions(source, study.one_per_latent_dim, figures / "reconstructions.png")
    figure_scores(study.main_config, figures / "precision_recall.png")

    sections = [
        f"# Reflection: a VAE and a GAN on {literal(m.params['data.name'])}",
        "Written by `make report` from the recorded runs; do not edit by hand. Every number in the "
        f"text is read from the runs it names; `{NUMBERS}` lists each one with its runs and metric. A comparison "
        "between configurations is stated with the 95% interval of the difference, and where that interval "
        "includes zero the text says the runs cannot tell. FID-style scores "
        "are Fréchet distances in the feature space of the project's own digit classifier: comparable between "
        "these runs, not with published FIDs. Lower is better.",
        section_runs(study, n),
        section_reparameterisation(study, n, fig),
        section_kl(study, n, source, fig),
        section_latent_dim(study, n, fig),
        section_gan(study, n, fig),
        section_encoder_discriminator(study, n, fig),
        section_strengths(study, n) + "\n\n" + fig("precision_recall.png",
                                                     "Precision against recall per image set, mean and 95% interval"),
    ]
    return "\n\n".join(sections) + "\n", n.entries
