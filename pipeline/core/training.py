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
from pipeline.core.models import VAE, Classifier, Decoder, Discriminator


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
# VAE


def vae_epoch(model: VAE, optimizer, x: torch.Tensor, *, batch_size: int, kind: str, kl_scale: float,
              generator: torch.Generator, epoch: int) -> dict[str, float]:
    """One pass over `x` in shuffled batches; returns the per-image mean of each loss term."""
    model.train()
    totals: dict[str, float] = {}
    for index in shuffled_batches(len(x), batch_size, generator, x.device):
        batch = x[index]  # (B, C, H, W)
        logits, mu, logvar = model(batch, generator)
        terms = vae_loss(logits, batch, mu, logvar, kind=kind, kl_scale=kl_scale)
        values = {name: value.item() for name, value in terms.items()}
        check_finite(values, epoch, "training")
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value * len(batch)
    return {name: total / len(x) for name, total in totals.items()}


@torch.inference_mode()
def vae_evaluate(model: VAE, x: torch.Tensor, *, batch_size: int, kind: str, kl_scale: float,
                 seed: int) -> dict[str, float]:
    """Per-image mean loss terms on `x`, with the same posterior noise at every call."""
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    totals: dict[str, float] = {}
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        logits, mu, logvar = model(batch, generator)
        for name, value in vae_loss(logits, batch, mu, logvar, kind=kind, kl_scale=kl_scale).items():
            totals[name] = totals.get(name, 0.0) + value.item() * len(batch)
    return {name: total / len(x) for name, total in totals.items()}


def encoder_gradient_norms(model: VAE, x: torch.Tensor, *, kind: str, seed: int) -> dict[str, float]:
    """L2 norms of the gradients that the reconstruction term and the KL term of the loss on `x`
    send to the encoder's weights (their batch means, noise drawn from `seed`); nothing is updated.

    The reconstruction term reaches the encoder only through the sample z = mu + sigma * eps: that
    path is the reparameterisation trick, and without it this gradient would be zero. The KL term
    reaches it directly, through mu and logvar in closed form.
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    logits, mu, logvar = model(x, generator)
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

STEP_MEASURES = ("d_loss", "g_loss", "d_real", "d_fake")  # what gan_epoch returns, per image


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


def gan_epoch(generator: Decoder, discriminator: Discriminator, optimizer_g, optimizer_d, x: torch.Tensor, *,
              latent_dim: int, batch_size: int, batches: torch.Generator, epoch: int,
              name: str = "GAN") -> dict[str, float]:
    """One pass over `x` in shuffled batches, a discriminator step then a generator step on each,
    with noise and order drawn from `batches`; returns the per-image mean of each step measure."""
    totals = dict.fromkeys(STEP_MEASURES, 0.0)
    for index in shuffled_batches(len(x), batch_size, batches, x.device):
        real = x[index]
        z = torch.randn(len(real), latent_dim, generator=batches, device=x.device)
        fake = generator(z)
        step = discriminator_step(discriminator, optimizer_d, real, fake.detach())
        step |= generator_step(discriminator, optimizer_g, fake)
        check_finite(step, epoch, name, "lower gan.learning_rate")
        for key, value in step.items():
            totals[key] += value * len(real)
    return {key: total / len(x) for key, total in totals.items()}
