"""The networks: the VAE (an encoder to (mu, logvar), the reparameterisation trick, a decoder), the
GAN's discriminator and the evaluation's classifier. The architecture kinds (`vae.architecture`)
are entries of the ARCHITECTURES registry.

The decoder is its own module with the interface a GAN generator has (latent z -> image in
[0, 1]), so the GAN stage can start its generator from the trained decoder's weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class VAEArchitecture:
    """What a checkpoint needs to rebuild the networks."""

    kind: str  # a key of ARCHITECTURES: "mlp" or "conv"
    image_shape: tuple[int, int, int]  # (C, H, W), from the dataset
    latent_dim: int
    hidden_dim: int

    def __post_init__(self) -> None:
        if self.kind not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.kind!r}; known: {', '.join(ARCHITECTURES)}")
        ARCHITECTURES[self.kind].check(self.image_shape)

    @property
    def blocks(self) -> Blocks:
        return ARCHITECTURES[self.kind]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "image_shape": list(self.image_shape)}

    @classmethod
    def from_dict(cls, data: dict) -> VAEArchitecture:
        return cls(**{**data, "image_shape": tuple(data["image_shape"])})


# ---------------------------------------------------------------------------------------------
# The architecture kinds: each builds the encoder's trunk, the decoder and the discriminator for
# its kind. The layer order fixes the parameter names in checkpoints and the order in which the
# seeded initialisation draws them, so it is part of every result.


@dataclass(frozen=True)
class Blocks:
    encoder_trunk: Callable[[VAEArchitecture], nn.Sequential]  # image (B, C, H, W) -> (B, hidden_dim)
    decoder: Callable[[VAEArchitecture], nn.Sequential]  # z (B, latent_dim) -> logits (B, C, H, W)
    discriminator: Callable[[VAEArchitecture, int], nn.Sequential]  # image -> (B, 1), given D's hidden width
    check: Callable[[tuple[int, int, int]], None] = lambda image_shape: None  # raises for images it cannot take


def _pixels(arch: VAEArchitecture) -> int:
    channels, height, width = arch.image_shape
    return channels * height * width


def _mlp_encoder(arch: VAEArchitecture) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(_pixels(arch), arch.hidden_dim), nn.ReLU())


def _mlp_decoder(arch: VAEArchitecture) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(arch.latent_dim, arch.hidden_dim), nn.ReLU(),
        nn.Linear(arch.hidden_dim, _pixels(arch)),
        nn.Unflatten(1, arch.image_shape),
    )


def _mlp_discriminator(arch: VAEArchitecture, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(_pixels(arch), hidden_dim), nn.LeakyReLU(0.2),
        nn.Linear(hidden_dim, hidden_dim), nn.LeakyReLU(0.2),
        nn.Linear(hidden_dim, 1),
    )


def _conv_trunk(arch: VAEArchitecture) -> tuple[int, int, int]:
    """Feature map after two stride-2 convolutions: (64, H/4, W/4)."""
    _, height, width = arch.image_shape
    return 64, height // 4, width // 4


def _conv_check(image_shape: tuple[int, int, int]) -> None:
    _, height, width = image_shape
    if height % 4 or width % 4:
        raise ValueError(f"the conv architecture needs image sides divisible by 4, got {image_shape}")


def _conv_encoder(arch: VAEArchitecture) -> nn.Sequential:
    trunk = _conv_trunk(arch)
    return nn.Sequential(
        nn.Conv2d(arch.image_shape[0], 32, 4, stride=2, padding=1), nn.ReLU(),  # (B, 32, H/2, W/2)
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # (B, 64, H/4, W/4)
        nn.Flatten(), nn.Linear(trunk[0] * trunk[1] * trunk[2], arch.hidden_dim), nn.ReLU(),
    )


def _conv_decoder(arch: VAEArchitecture) -> nn.Sequential:
    trunk = _conv_trunk(arch)
    return nn.Sequential(
        nn.Linear(arch.latent_dim, arch.hidden_dim), nn.ReLU(),
        nn.Linear(arch.hidden_dim, trunk[0] * trunk[1] * trunk[2]), nn.ReLU(),
        nn.Unflatten(1, trunk),  # (B, 64, H/4, W/4)
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),  # (B, 32, H/2, W/2)
        nn.ConvTranspose2d(32, arch.image_shape[0], 4, stride=2, padding=1),  # (B, C, H, W)
    )


def _conv_discriminator(arch: VAEArchitecture, hidden_dim: int) -> nn.Sequential:
    trunk = _conv_trunk(arch)
    return nn.Sequential(
        nn.Conv2d(arch.image_shape[0], 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # (B, 32, H/2, W/2)
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # (B, 64, H/4, W/4)
        nn.Flatten(), nn.Linear(trunk[0] * trunk[1] * trunk[2], hidden_dim), nn.LeakyReLU(0.2),
        nn.Linear(hidden_dim, 1),
    )


# vae.architecture -> its blocks; config.py takes the allowed names from here.
ARCHITECTURES: dict[str, Blocks] = {
    "mlp": Blocks(_mlp_encoder, _mlp_decoder, _mlp_discriminator),
    "conv": Blocks(_conv_encoder, _conv_decoder, _conv_discriminator, check=_conv_check),
}


class Encoder(nn.Module):
    """x (B, C, H, W) in [0, 1] -> mu, logvar of q(z|x), each (B, latent_dim)."""

    def __init__(self, arch: VAEArchitecture):
        super().__init__()
        self.features = arch.blocks.encoder_trunk(arch)
        self.mu = nn.Linear(arch.hidden_dim, arch.latent_dim)
        self.logvar = nn.Linear(arch.hidden_dim, arch.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)  # (B, hidden_dim)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """z (B, latent_dim) -> image (B, C, H, W) in [0, 1]; `logits` gives the pre-sigmoid values."""

    def __init__(self, arch: VAEArchitecture):
        super().__init__()
        self.image_shape = arch.image_shape
        self.net = arch.blocks.decoder(arch)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


def standard_normal(like: torch.Tensor, generator: torch.Generator | None = None,
                    samples: int | None = None) -> torch.Tensor:
    """eps ~ N(0, I) of `like`'s shape, or (samples, *like.shape), on its device and dtype."""
    shape = like.shape if samples is None else (samples, *like.shape)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I), sigma = exp(logvar / 2); eps may carry extra
    leading dimensions (several draws per image).

    The noise is an input rather than a function of the parameters, so gradients flow from z
    to mu and logvar (Kingma & Welling 2014, section 2.4).
    """
    return mu + torch.exp(0.5 * logvar) * eps


class VAE(nn.Module):
    def __init__(self, arch: VAEArchitecture):
        super().__init__()
        self.arch = arch
        self.encoder = Encoder(arch)
        self.decoder = Decoder(arch)

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        """x (B, C, H, W) and posterior noise eps ~ N(0, I) (B, latent_dim) -> (reconstruction
        logits (B, C, H, W), mu, logvar). The noise is an input, drawn by the caller from the
        seed's own stream, so several seeds' VAEs run as one (pipeline.core.replicas)."""
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar, eps)  # (B, latent_dim)
        return self.decoder.logits(z), mu, logvar


class Discriminator(nn.Module):
    """image (B, C, H, W) in [0, 1] -> one real/fake logit (B,).

    It has the encoder's shape for the same architecture kind, but where the encoder maps an image
    to a distribution over latent codes (mu, logvar) and is trained to explain the image, the
    discriminator maps it to a single score and is trained to tell data from the generator's
    output. LeakyReLU keeps gradients flowing to the generator where D is confident.
    """

    def __init__(self, arch: VAEArchitecture, hidden_dim: int):
        super().__init__()
        self.net = arch.blocks.discriminator(arch, hidden_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (B, hidden_dim): what the real/fake logit is read from."""
        return self.net[:-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class Classifier(nn.Module):
    """A small CNN: image (B, C, H, W) in [0, 1] -> class logits (B, num_classes).

    `features(x)` is the penultimate layer (B, feature_dim): the feature space in which the
    evaluation compares sets of images, as FID uses Inception's pool layer; `num_features` is its
    size.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, feature_dim: int):
        super().__init__()
        channels, height, width = image_shape
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.num_features = feature_dim
        # Pooling before the ReLU: ReLU is monotonic, so max(relu(a)) = relu(max(a)) exactly, values
        # and gradients the same as conv-ReLU-pool, with the ReLU on a quarter of the elements.
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),  # (B, 32, H/2, W/2)
            nn.Conv2d(32, 64, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),  # (B, 64, H/4, W/4)
            nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Precomputed(nn.Module):
    """An identity "feature extractor" for torchmetrics' FID and KID, which are then given features
    (B, num_features) already computed (the Scorer computes each image's features once).
    `num_features` is the attribute torchmetrics reads from a custom extractor."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
