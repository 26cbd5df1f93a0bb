"""The report's text: one section per lab question, each a claim and its evidence, every number
through `Numbers`; `build` draws the figures and assembles the Markdown."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

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
from pipeline.tracking.names import HEADLINE_METRICS as HEADLINE
from pipeline.tracking.rows import Row

FIGURES, NUMBERS = "figures", "reflection.numbers.json"

def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _argmin(runs: list[Row], key: str) -> Row:
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


def latent_plane_run(study: Study) -> Row | None:
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
        f"**Evidence.** In `{m.name}` the KL of the test split is {n.metric(m, HEADLINE['kl'])} nats per image, "
        f"spread unevenly over its {n.param(m, 'latent_dim')} dimensions: the strongest carries "
        f"{n.metric(m, 'eval/vae/kl_per_dim', step=strongest[0])} nats, the weakest "
        f"{n.metric(m, 'eval/vae/kl_per_dim', step=weakest[0])}. {n.metric(m, HEADLINE['active_units'], '.0f')} of "
        f"{n.param(m, 'latent_dim')} dimensions are active (the variance over test images of their posterior mean "
        "is above `0.01`, Burda et al.).",
    ]
    if len(study.by_latent_dim) > 1:
        rows = [[n.param(r, "latent_dim"), n.metric(r, HEADLINE["kl"]), n.metric(r, HEADLINE["active_units"], ".0f"),
                 n.metric(r, "eval/vae/kl_per_dim", step=min(source.history(r, "eval/vae/kl_per_dim"),
                                                              key=lambda p: p[1])[0])]
                for r in study.by_latent_dim]
        widest = study.by_latent_dim[-1]
        widest_kl = source.history(widest, "eval/vae/kl_per_dim")
        all_active = all(r.metrics[HEADLINE["active_units"]] == r.latent_dim for r in study.by_latent_dim)
        spread = (f"At latent_dim {n.param(widest, 'latent_dim')} the weakest dimension carries "
                  f"{n.metric(widest, 'eval/vae/kl_per_dim', step=min(widest_kl, key=lambda p: p[1])[0])} nats and "
                  f"the strongest {n.metric(widest, 'eval/vae/kl_per_dim', step=max(widest_kl, key=lambda p: p[1])[0])}"
                  f", for a total of {n.metric(widest, HEADLINE['kl'])} nats.")
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
    rows = [[n.param(r, "vae.beta"), n.metric(r, HEADLINE["recon_mse"]), n.metric(r, HEADLINE["kl"]),
             n.metric(r, HEADLINE["active_units"], ".0f"), n.metric(r, HEADLINE["fid_vae_prior"]),
             n.metric(r, "eval/scores/vae_prior/sharpness", ".3g")] for r in runs]
    low, high = runs[0], runs[-1]
    mse_up = high.metrics[HEADLINE["recon_mse"]] > low.metrics[HEADLINE["recon_mse"]]
    fid_key = HEADLINE["fid_vae_prior"]
    best = _argmin(runs, fid_key)
    kl_low_units = high.metrics[HEADLINE["active_units"]] == high.latent_dim
    return "\n\n".join([
        f"**Beta.** At latent_dim {n.param(study.main, 'latent_dim')}, raising beta from {n.param(low, 'vae.beta')} "
        f"to {n.param(high, 'vae.beta')} took the KL from {n.metric(low, HEADLINE['kl'])} to "
        f"{n.metric(high, HEADLINE['kl'])} nats and the reconstruction MSE from "
        f"{n.metric(low, HEADLINE['recon_mse'])} to {n.metric(high, HEADLINE['recon_mse'])}"
        + (", the expected trade" if mse_up else ", against the expected trade")
        + f"; the prior samples' FID-style score went from {n.metric(low, fid_key)} to {n.metric(high, fid_key)}, "
        f"and was best at beta {n.param(best, 'vae.beta')} ({n.metric(best, fid_key)})"
        + (", between the ends. That is the textbook's trade-off: weak KL pressure leaves gaps between the "
           "posteriors where prior samples land, strong pressure blurs what the decoder draws (see the sharpness "
           "column)." if best not in (low, high) else ".")
        + (f" At beta {n.param(high, 'vae.beta')} every dimension still counts as active, with only "
           f"{n.metric(high, HEADLINE['kl'])} nats of KL between them: the active-unit threshold does not register "
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
            f"{n.metric(m, HEADLINE['recon_mse'])}, negative ELBO {n.metric(m, HEADLINE['neg_elbo'])} nats). "
            "A sweep (`make sweep`, or `dvc exp run --queue -S latent_dim=2,8,32` and `dvc queue start`) would add "
            "a table and plots of each measure against latent_dim, reconstructions side by side, and the point "
            "where more capacity stops giving better samples.")])
    keys = [HEADLINE["recon_mse"], HEADLINE["kl"], HEADLINE["neg_elbo"], HEADLINE["iwae_nll"],
            HEADLINE["fid_vae_recon"], HEADLINE["fid_vae_prior"], HEADLINE["fid_gan_decoder"]]
    rows = [[n.param(r, "latent_dim")] + [n.metric(r, k) for k in keys] for r in runs]
    best_mse, best_elbo = _argmin(runs, keys[0]), _argmin(runs, HEADLINE["neg_elbo"])
    best_prior = _argmin(runs, HEADLINE["fid_vae_prior"])
    smallest, largest = runs[0], runs[-1]
    turn = (f"Beyond latent_dim {n.param(best_prior, 'latent_dim')} the extra capacity gives no better samples: the "
            f"VAE samples' score rises to {n.metric(largest, HEADLINE['fid_vae_prior'])} at latent_dim "
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
        f"({n.metric(best_elbo, HEADLINE['neg_elbo'])} nats) at latent_dim {n.param(best_elbo, 'latent_dim')}; the "
        f"prior samples score best ({n.metric(best_prior, HEADLINE['fid_vae_prior'])}) at latent_dim "
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
    d_final, s_final = m.metrics[HEADLINE["fid_gan_decoder"]], m.metrics[HEADLINE["fid_gan_scratch"]]
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
        f"{n.metric(m, HEADLINE['fid_gan_decoder'])} and the GAN from scratch "
        f"{n.metric(m, HEADLINE['fid_gan_scratch'])}, "
        f"against {n.metric(m, HEADLINE['fid_vae_prior'])} for the VAE's samples and "
        f"{n.metric(m, HEADLINE['fid_real'])} for real training images (the floor).",
        fig("gan_training.png", "FID-style score and discriminator outputs per epoch"),
        fig("samples.png", "VAE samples, GAN from the decoder and GAN from scratch, from the same noise"),
    ]
    if len(study.by_latent_dim) > 1:
        runs = study.by_latent_dim
        wins = [r for r in runs if r.metrics[HEADLINE["fid_gan_decoder"]] < r.metrics[HEADLINE["fid_gan_scratch"]]]
        rows = [[n.param(r, "latent_dim"), n.metric(r, HEADLINE["fid_vae_prior"]),
                 n.metric(r, HEADLINE["fid_gan_decoder"]), n.metric(r, HEADLINE["fid_gan_scratch"])] for r in runs]
        improves = [r for r in runs
                    if r.metrics[HEADLINE["fid_gan_decoder"]] < r.metrics[HEADLINE["fid_vae_prior"]]]
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
        "Written by `make report` from the recorded runs; do not edit by hand. Every number in the "
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
