"""Self-describing checkpoints: one convention for every network the pipeline saves.

A checkpoint is `{"kind", "config", "state_dict", "epoch", "metrics", ...}`. `config` holds
`architecture` (enough to rebuild the network from the file alone), the params section that
trained it, the seed and the content hash of the data it was trained on (`data_hash`). Files are
read with `torch.load(..., weights_only=True)`: no arbitrary unpickling.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import GAN_INITS, Config
from pipeline.core.errors import CheckpointError
from pipeline.core.io import atomic_path
from pipeline.core.models import VAE, Classifier, Decoder, Discriminator, VAEArchitecture

VAE_KIND, CLASSIFIER_KIND, GAN_KIND = "vae", "classifier", "gan_generator"


def save_checkpoint(path: Path, *, kind: str, config: dict, state_dict: dict, **extra: Any) -> None:
    """Save `{"kind", "config", "state_dict", ...}`: enough to rebuild the model from the file."""
    # Through a buffer: torch.save names the archive inside the file after the file it writes,
    # and the temporary file's random name would make identical checkpoints differ.
    buffer = io.BytesIO()
    torch.save({"kind": kind, "config": config, "state_dict": state_dict, **extra}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: Path, *, kind: str, stage: str) -> dict:
    """Load a checkpoint written by `save_checkpoint` safely (no arbitrary unpickling).

    `stage` names the stage that writes it, so the message can say what to rerun.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; run `dvc repro {stage}` first")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged or foreign files
        raise CheckpointError(
            f"{path} could not be read as a checkpoint ({error}); rerun `dvc repro -f {stage}`"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != kind:
        raise CheckpointError(f"{path} is not a {kind} checkpoint; rerun `dvc repro -f {stage}`")
    return checkpoint


def _check_latent_dim(path: Path, arch: VAEArchitecture, latent_dim: int | None, stage: str) -> None:
    if latent_dim is not None and arch.latent_dim != latent_dim:
        raise CheckpointError(f"{path} has latent_dim {arch.latent_dim} but params.yaml says {latent_dim}; "
                              f"rerun `dvc repro {stage}`")


# ---------------------------------------------------------------------------------------------
# The VAE


def vae_architecture(config: Config, image_shape: tuple[int, int, int]) -> VAEArchitecture:
    """The VAE's architecture for `config` and images of `image_shape`."""
    return VAEArchitecture(config.vae.architecture, image_shape, config.latent_dim, config.vae.hidden_dim)


def vae_config(config: Config, arch: VAEArchitecture, seed: int, data_hash: str) -> dict:
    return {"architecture": arch.to_dict(), "vae": dataclasses.asdict(config.vae), "seed": seed,
            "data_hash": data_hash}


def load_vae(path: Path, latent_dim: int | None = None) -> tuple[VAE, dict]:
    """Rebuild the VAE from its checkpoint alone; check `latent_dim` if given."""
    checkpoint = load_checkpoint(path, kind=VAE_KIND, stage="train_vae")
    arch = VAEArchitecture.from_dict(checkpoint["config"]["architecture"])
    _check_latent_dim(path, arch, latent_dim, "train_vae")
    model = VAE(arch)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


def seed_name(seed: int, suffix: str = "") -> str:
    """The name of a seed's checkpoint (suffix .pt) or folder of checkpoints: seed-<seed><suffix>."""
    return f"seed-{seed}{suffix}"


def seed_checkpoint(folder: Path, seed: int, stage: str, suffix: str = ".pt") -> Path:
    """Seed `seed`'s checkpoint (or folder, without `suffix`) in `folder`; CheckpointError when
    the stage that writes it did not train that seed."""
    path = Path(folder) / seed_name(seed, suffix)
    if not path.exists():
        trained = sorted(p.name for p in Path(folder).glob("seed-*")) if Path(folder).is_dir() else []
        raise CheckpointError(f"{path} does not exist; run `dvc repro {stage}` first (it trains the seeds "
                              f"params.yaml lists; {folder} holds {', '.join(trained) or 'none'})")
    return path


# ---------------------------------------------------------------------------------------------
# The classifier


def classifier_config(config: Config, image_shape: tuple[int, int, int], num_classes: int, data_hash: str) -> dict:
    architecture = {"image_shape": list(image_shape), "num_classes": num_classes,
                    "feature_dim": config.classifier.feature_dim}
    return {"architecture": architecture, "classifier": dataclasses.asdict(config.classifier),
            "seed": config.classifier.seed, "data_hash": data_hash}


def load_classifier(path: Path, data_hash: str | None = None) -> Classifier:
    """Rebuild the classifier from its checkpoint; check it was trained on the data `data_hash`."""
    checkpoint = load_checkpoint(path, kind=CLASSIFIER_KIND, stage="train_classifier")
    arch = checkpoint["config"]["architecture"]
    if data_hash is not None and checkpoint["config"]["data_hash"] != data_hash:
        raise CheckpointError(f"{path} was trained on other data than outputs/data/splits.npz; "
                              "rerun `dvc repro train_classifier`")
    model = Classifier(tuple(arch["image_shape"]), arch["num_classes"], arch["feature_dim"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The GANs: one file per generator init, holding its discriminator too


def gan_config(config: Config, arch: VAEArchitecture, init: str, seed: int, data_hash: str) -> dict:
    return {"architecture": arch.to_dict(), "init": init, "gan": dataclasses.asdict(config.gan),
            "seed": seed, "data_hash": data_hash}


def load_gan(path: Path, latent_dim: int | None = None) -> tuple[Decoder, Discriminator, dict]:
    """Rebuild a GAN (generator and its discriminator) from its checkpoint alone; check `latent_dim` if given."""
    checkpoint = load_checkpoint(path, kind=GAN_KIND, stage="train_gan")
    arch = VAEArchitecture.from_dict(checkpoint["config"]["architecture"])
    _check_latent_dim(path, arch, latent_dim, "train_gan")
    generator = Decoder(arch)
    generator.load_state_dict(checkpoint["state_dict"])
    discriminator = Discriminator(arch, checkpoint["config"]["gan"]["discriminator_hidden"])
    discriminator.load_state_dict(checkpoint["discriminator_state_dict"])
    return generator.eval(), discriminator.eval(), checkpoint


def load_gans(folder: Path, latent_dim: int | None = None) -> dict[str, tuple[Decoder, Discriminator]]:
    """Every GAN saved in `folder` as <init>.pt, by init: (generator, discriminator)."""
    folder = Path(folder)
    found = {init: folder / f"{init}.pt" for init in GAN_INITS if (folder / f"{init}.pt").exists()}
    if not found:
        raise CheckpointError(f"{folder} holds no generator; run `dvc repro train_gan` first")
    return {init: load_gan(path, latent_dim)[:2] for init, path in found.items()}
