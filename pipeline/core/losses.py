"""VAE loss terms as small pure functions. Each returns one value per image (B,), in nats.

Every function also takes a leading seed dimension (S, B, ...), the seeds' batches stacked
(pipeline.core.replicas): it reduces over each image's own dimensions (the last ones) and over the
batch, never across seeds, and returns one value per seed (S,).

The negative ELBO of one image x is  -E_q[log p(x|z)] + KL(q(z|x) || p(z))  with
q(z|x) = N(mu, diag(sigma^2)) and p(z) = N(0, I) (Kingma & Welling 2014, eq. 3 and 10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kl_terms(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_j, exp(logvar_j)) || N(0, 1)) of each image and latent dimension j, in closed form.

    KL_j = -1/2 * (1 + logvar_j - mu_j^2 - exp(logvar_j))   (Kingma & Welling 2014, app. B)
    mu, logvar: (B, D) -> (B, D). The terms are independent, so they add up over j.
    """
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per image: the sum of `gaussian_kl_terms` over
    the latent dimensions. mu, logvar: (B, D) -> (B,)"""
    return gaussian_kl_terms(mu, logvar).sum(dim=-1)


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """-log p(x|z) per image, summed over pixels. logits, x: (B, C, H, W) -> (B,)

    bce: Bernoulli likelihood, -sum x log p + (1 - x) log(1 - p) with p = sigmoid(logits).
    mse: sum (x - p)^2, the Gaussian likelihood with variance 1/2 up to a constant.
    """
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        per_pixel = (torch.sigmoid(logits) - x).pow(2)
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}")
    return per_pixel.flatten(-3).sum(dim=-1)


def kl_weight(epoch: int, beta: float, warmup_epochs: int) -> float:
    """The KL weight at 0-based `epoch`: beta, ramped linearly over the first `warmup_epochs`.

    With warm-up W > 0 the weight is beta * (epoch + 1) / W until it reaches beta.
    """
    if warmup_epochs == 0:
        return beta
    return beta * min(1.0, (epoch + 1) / warmup_epochs)


def vae_loss(logits, x, mu, logvar, *, kind: str, kl_scale: float) -> dict[str, torch.Tensor]:
    """Batch means of each term: reconstruction, kl, the objective (recon + kl_scale * kl)
    and the negative ELBO (recon + kl, the bound itself whatever the weight)."""
    reconstruction = reconstruction_loss(logits, x, kind).mean(dim=-1)
    kl = gaussian_kl(mu, logvar).mean(dim=-1)
    return {
        "loss": reconstruction + kl_scale * kl,
        "reconstruction": reconstruction,
        "kl": kl,
        "neg_elbo": reconstruction + kl,
    }


# ---------------------------------------------------------------------------------------------
# GAN: the non-saturating objective (Goodfellow et al. 2014, section 3). D maximises
# log D(x) + log(1 - D(G(z))); G maximises log D(G(z)) rather than minimising log(1 - D(G(z))),
# which has the same fixed point but strong gradients early on, when D rejects G's samples easily.
# Written on logits with binary cross-entropy for numerical stability.


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy of logits against a constant target, batch mean: (..., B) -> (...)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none").mean(dim=-1)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-[log D(x) + log(1 - D(G(z)))], batch mean. real_logits, fake_logits: (B,) -> scalar."""
    return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)), batch mean: the non-saturating generator loss. fake_logits: (B,) -> scalar."""
    return _bce(fake_logits, 1.0)
