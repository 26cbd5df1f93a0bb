"""Operations in a VAE's latent space, shared by the evaluation's figures and the explorer app:
prior noise, posterior means, reconstructions, interpolations, traversals and decoding.
All return tensors on the device of their inputs; none draws noise except `prior_noise`.
"""

from __future__ import annotations

import torch

from pipeline.core.models import VAE, Decoder
from pipeline.core.training import in_batches


def prior_noise(latent_dim: int, count: int, seed: int) -> torch.Tensor:
    """`count` draws of z ~ N(0, I) (count, latent_dim) from `seed`, on the CPU: the same noise for
    every decoder given the same seed."""
    return torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def posterior(vae: VAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mu, logvar of q(z|x) for images (N, C, H, W), computed in batches: each (N, latent_dim)."""
    mu, logvar = in_batches(lambda x: torch.cat(vae.encoder(x), dim=1), images).chunk(2, dim=1)
    return mu, logvar


@torch.inference_mode()
def posterior_means(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """(N, latent_dim) posterior means of images (N, C, H, W), computed in batches."""
    return in_batches(lambda x: vae.encoder(x)[0], images)


@torch.inference_mode()
def reconstruct(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) decoded from their posterior means (no sampling)."""
    return in_batches(vae.decoder, vae.encoder(images)[0])


@torch.inference_mode()
def posterior_samples(vae: VAE, images: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) decoded from codes drawn from each image's posterior, z = mu + sigma * eps
    with eps (N, latent_dim) ~ N(0, I): samples of the aggregate posterior, the codes the decoder was
    trained on, where the prior's samples are the codes it is used on."""
    mu, logvar = vae.encoder(images)
    return in_batches(vae.decoder, mu + torch.exp(0.5 * logvar) * eps)


@torch.inference_mode()
def interpolate(decoder: Decoder, start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """Decode `steps` evenly spaced points on each line from start[i] to end[i] (R, D), ends
    included: (R * steps, C, H, W), the points of one line together."""
    t = torch.linspace(0, 1, steps, device=start.device)[None, :, None]  # (1, S, 1)
    path = start[:, None] + t * (end - start)[:, None]  # (R, S, D)
    return decoder(path.flatten(0, 1))


@torch.inference_mode()
def traverse(decoder: Decoder, base: torch.Tensor, dims: list[int], values: torch.Tensor) -> torch.Tensor:
    """For each dimension in `dims`, decode the point `base` (D,) with that dimension set to each
    of `values` (S,), the others held: (len(dims) * S, C, H, W), one dimension's images together."""
    z = base.repeat(len(dims), len(values), 1)  # (len(dims), S, D)
    for row, dim in enumerate(dims):
        z[row, :, dim] = values
    return decoder(z.flatten(0, 1))


@torch.inference_mode()
def lattice(decoder: Decoder, side: int, device) -> torch.Tensor:
    """latent_dim 2: decode a side x side lattice over the plane at the prior's 5%..95% quantiles,
    z2 growing upward: (side * side, C, H, W), row by row."""
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, side))
    grid_y, grid_x = torch.meshgrid(quantiles.flip(0), quantiles, indexing="ij")
    z = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2).to(device)
    return decoder(z)


@torch.inference_mode()
def decode(decoder: Decoder, z: torch.Tensor | list[float]) -> torch.Tensor:
    """Decode latent points (N, latent_dim), or one point given as a list, on the decoder's device."""
    device = next(decoder.parameters()).device
    z = torch.as_tensor(z, dtype=torch.float32, device=device)
    return decoder(z.view(-1, z.shape[-1]))
