"""Training loops and steps for every network, and the helpers they share: pixels to floats,
shuffled batches, the optimiser, divergence checks.

Each loop keeps the whole split on the device as one tensor and draws shuffled index batches from
a seeded generator: no per-image Dataset conversion, and the same params give the same numbers on
the CPU, run after run. The stages (pipeline/stages/) run these loops over epochs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from pipeline.core.errors import TrainingDiverged
from pipeline.core.losses import discriminator_loss, generator_loss, vae_loss
from pipeline.core.models import VAE, Classifier, Decoder
from pipeline.core.replicas import Stack


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def check_finite(terms: dict[str, float], epoch: int, phase: str, remedy: str = "lower vae.learning_rate") -> None:
    """Raise TrainingDiverged naming the epoch and the first loss term that is NaN or infinite."""
    for name, value in terms.items():
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"epoch {epoch + 1}: the {phase} loss term '{name}' became {value}; {remedy} or check the data"
            )


def adam(parameters, **options) -> torch.optim.Adam:
    """Adam with its fused kernel: one pass over all parameters per step, on CPU and CUDA. Unfused,
    the step's dozen elementwise passes were a quarter of a default VAE step's time on 2 CPU cores
    (docs/benchmarks.md)."""
    return torch.optim.Adam(parameters, fused=True, **options)


def shuffled_batches(size: int, batch_size: int, generator: torch.Generator, device) -> Iterator[torch.Tensor]:
    """Index batches (B,) over a new random order of `size` items drawn from `generator`; the last
    batch may be smaller. One epoch of every training loop."""
    order = torch.randperm(size, generator=generator, device=device)
    for start in range(0, size, batch_size):
        yield order[start : start + batch_size]


@torch.inference_mode()
def in_batches(network, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """`network` applied to x in batches, outputs concatenated: a decoder or generator to codes
    (N, latent_dim) gives images (N, C, H, W); a discriminator or encoder to images gives its outputs."""
    return torch.cat([network(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])


# ---------------------------------------------------------------------------------------------
# Several seeds at once: every network of a stage is a Stack of its seeds' copies (core/replicas.py)


def seed_batches(size: int, batch_size: int, orders: list[torch.Generator], device) -> Iterator[torch.Tensor]:
    """Index batches (S, B) over a new random order of `size` items per seed, each seed's drawn from
    its own generator in `orders`: one epoch of a stacked loop. Each row is the batch
    `shuffled_batches` gives that seed alone."""
    permutations = torch.stack([torch.randperm(size, generator=order, device=device) for order in orders])
    for start in range(0, size, batch_size):
        yield permutations[:, start : start + batch_size]


def seed_noise(noises: list[torch.Generator], count: int, dim: int, device) -> torch.Tensor:
    """N(0, I) draws (S, count, dim), each seed's from its own generator in `noises`."""
    return torch.stack([torch.randn(count, dim, generator=noise, device=device) for noise in noises])


@torch.inference_mode()
def stack_in_batches(stack: Stack, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """`stack` applied to x (S, N, ...) in batches along N, outputs concatenated: (S, N, ...)."""
    return torch.cat([stack(x[:, s : s + batch_size]) for s in range(0, x.shape[1], batch_size)], dim=1)


def _per_seed(terms: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """{name: (S,) tensor} -> one {name: float} per seed, read from the device in one transfer."""
    keys = list(terms)
    values = torch.stack([terms[key].detach() for key in keys], dim=1).tolist()  # (S, K)
    return [dict(zip(keys, row)) for row in values]


def _add(totals: list[dict[str, float]], steps: list[dict[str, float]], weight: int) -> None:
    for total, step in zip(totals, steps):
        for key, value in step.items():
            total[key] = total.get(key, 0.0) + value * weight


# ---------------------------------------------------------------------------------------------
# VAE


def vae_noise(model: VAE, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """eps ~ N(0, I) (B, latent_dim) for the images x (B, ...), drawn from `generator`."""
    return torch.randn(len(x), model.arch.latent_dim, generator=generator, device=x.device, dtype=x.dtype)


def vae_epoch(vaes: Stack, optimizer, x: torch.Tensor, *, latent_dim: int, batch_size: int, kind: str,
              kl_scale: float, orders: list[torch.Generator], noises: list[torch.Generator],
              epoch: int) -> list[dict[str, float]]:
    """One pass over `x` (N, C, H, W) for every seed of the stacked VAEs, each seed in its own
    shuffled batches with its own posterior noise; returns each seed's per-image mean of each loss
    term. The step minimises the sum of the seeds' losses: each seed's gradient is its own."""
    totals: list[dict[str, float]] = [{} for _ in orders]
    for index in seed_batches(len(x), batch_size, orders, x.device):
        batch = x[index]  # (S, B, C, H, W)
        eps = seed_noise(noises, index.shape[1], latent_dim, x.device)  # (S, B, latent_dim)
        logits, mu, logvar = vaes(batch, eps)
        terms = vae_loss(logits, batch, mu, logvar, kind=kind, kl_scale=kl_scale)  # per seed: (S,) per term
        values = _per_seed(terms)
        for seed_values in values:
            check_finite(seed_values, epoch, "training")
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].sum().backward()
        optimizer.step()
        _add(totals, values, index.shape[1])
    return [{name: total / len(x) for name, total in seed_totals.items()} for seed_totals in totals]


@torch.inference_mode()
def vae_evaluate(model: VAE, x: torch.Tensor, *, batch_size: int, kind: str, kl_scale: float,
                 generator: torch.Generator) -> dict[str, float]:
    """Per-image mean loss terms on `x`, the posterior noise drawn from `generator` (a new one
    seeded the same way at every call gives the same noise)."""
    model.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        logits, mu, logvar = model(batch, vae_noise(model, batch, generator))
        for name, value in vae_loss(logits, batch, mu, logvar, kind=kind, kl_scale=kl_scale).items():
            totals[name] = totals.get(name, 0.0) + value.item() * len(batch)
    return {name: total / len(x) for name, total in totals.items()}


def encoder_gradient_norms(model: VAE, x: torch.Tensor, *, kind: str, generator: torch.Generator) -> dict[str, float]:
    """L2 norms of the gradients that the reconstruction term and the KL term of the loss on `x`
    send to the encoder's weights (their batch means, noise drawn from `generator`); nothing is updated.

    The reconstruction term reaches the encoder only through the sample z = mu + sigma * eps: that
    path is the reparameterisation trick, and without it this gradient would be zero. The KL term
    reaches it directly, through mu and logvar in closed form.
    """
    logits, mu, logvar = model(x, vae_noise(model, x, generator))
    terms = vae_loss(logits, x, mu, logvar, kind=kind, kl_scale=1.0)
    weights = list(model.encoder.parameters())
    norms = {}
    for name in ("reconstruction", "kl"):
        grads = torch.autograd.grad(terms[name], weights, retain_graph=True, allow_unused=True)  # None: no path
        norms[name] = math.sqrt(sum(g.pow(2).sum().item() for g in grads if g is not None))
    return norms


# ---------------------------------------------------------------------------------------------
# Classifier


def classifier_epoch(model: Classifier, optimizer, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                     generator: torch.Generator, epoch: int) -> None:
    """One pass of cross-entropy steps over images `x` and labels `y` in shuffled batches."""
    model.train()
    for index in shuffled_batches(len(x), batch_size, generator, x.device):
        loss = F.cross_entropy(model(x[index]), y[index])
        check_finite({"cross_entropy": loss.item()}, epoch, "training", "lower classifier.learning_rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.inference_mode()
def accuracy_and_loss(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Mean cross-entropy (nats) and accuracy of `model` on images x (N, C, H, W), labels y (N,)."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == target).sum())
    return {"loss": loss / len(x), "accuracy": correct / len(x)}


# ---------------------------------------------------------------------------------------------
# GAN

STEP_MEASURES = ("d_loss", "g_loss", "d_real", "d_fake")  # what gan_epoch returns per seed, per image


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


def discriminator_step(discriminators: Stack, optimizer, real: torch.Tensor, fake: torch.Tensor) -> list[dict[str, float]]:
    """One update of every seed's discriminator on its real and generated batch (S, B, ...).
    `fake` must be detached from the generators, so this step does not compute (or apply)
    gradients for them."""
    if fake.requires_grad:
        raise ValueError("the discriminator step needs the fake batch detached from the generator")
    real_logits, fake_logits = discriminators(real), discriminators(fake)  # (S, B) each
    loss = discriminator_loss(real_logits, fake_logits)  # (S,)
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    optimizer.step()
    return _per_seed({"d_loss": loss, "d_real": torch.sigmoid(real_logits).mean(dim=1),
                      "d_fake": torch.sigmoid(fake_logits).mean(dim=1)})


def generator_step(discriminators: Stack, optimizer, fake: torch.Tensor) -> list[dict[str, float]]:
    """One update of every seed's generator: push D(G(z)) up (the non-saturating loss). The
    gradient flows through the discriminators to the generators; the discriminators' own weight
    gradients are not computed (Stack.frozen: 8% of a step at the default sizes)."""
    with discriminators.frozen():
        loss = generator_loss(discriminators(fake))  # (S,)
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    optimizer.step()
    return _per_seed({"g_loss": loss})


def gan_epoch(generators: Stack, discriminators: Stack, optimizer_g, optimizer_d, x: torch.Tensor, *,
              latent_dim: int, batch_size: int, orders: list[torch.Generator], noises: list[torch.Generator],
              epoch: int, name: str = "GAN") -> list[dict[str, float]]:
    """One pass over `x` for every seed of the stacked GANs, each in its own shuffled batches with
    its own noise, a discriminator step then a generator step on each; returns each seed's
    per-image mean of each step measure."""
    totals: list[dict[str, float]] = [dict.fromkeys(STEP_MEASURES, 0.0) for _ in orders]
    for index in seed_batches(len(x), batch_size, orders, x.device):
        real = x[index]  # (S, B, C, H, W)
        fake = generators(seed_noise(noises, index.shape[1], latent_dim, x.device))
        steps = discriminator_step(discriminators, optimizer_d, real, fake.detach())
        for step, g_step in zip(steps, generator_step(discriminators, optimizer_g, fake)):
            step |= g_step
            check_finite(step, epoch, name, "lower gan.learning_rate")
        _add(totals, steps, index.shape[1])
    return [{key: total / len(x) for key, total in seed_totals.items()} for seed_totals in totals]
