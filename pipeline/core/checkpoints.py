"""Self-describing checkpoints: one convention for every network the pipeline saves.

A checkpoint is `{"kind", "config", "state_dict", "epoch", "metrics", ...}`. `config` holds
`architecture` (enough to rebuild the network from the file alone), the params section that
trained it, the seed and the content hash of the data it was trained on (`data_hash`). Files are
read with `torch.load(..., weights_only=True)`: no arbitrary unpickling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from collections.abc import Iterator
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
            f"{path} could not be read as a checkpoint ({_torch_reason(error)}); rerun `dvc repro -f {stage}`"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != kind:
        raise CheckpointError(f"{path} is not a {kind} checkpoint; rerun `dvc repro -f {stage}`")
    if not isinstance(checkpoint.get("config"), dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} is a {kind} checkpoint without its config or weights; "
                              f"rerun `dvc repro -f {stage}`")
    return checkpoint


def _torch_reason(error: Exception) -> str:
    """The part of torch's (several-paragraph) loading error that names the fault, on one line."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.S)
    reason = found.group(1) if found else text.split("\n")[0].split(". ")[0]
    return " ".join(reason.split())[:300]


@contextlib.contextmanager
def _rebuilding(path: Path, stage: str) -> Iterator[None]:
    """Networks rebuilt from a checkpoint's own description: one that does not fit it (a key
    missing, weights of other shapes) is refused in one line naming the stage to rerun."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        what = f"no {error.args[0]!r} in its config" if isinstance(error, KeyError) else _torch_reason(error)
        if "size mismatch" in str(error):
            what = "weights of other shapes than its architecture: " + " ".join(
                str(error)[str(error).index("size mismatch"):].split())[:200]
        raise CheckpointError(f"{path} could not be rebuilt ({what}); rerun `dvc repro -f {stage}`") from None


# How a difference between a checkpoint's config and params.yaml is named: the params key, or the
# data (its shape and content hash come from outputs/data/splits.npz).
_SHOWN = {"architecture.latent_dim": "latent_dim", "architecture.kind": "vae.architecture",
          "architecture.hidden_dim": "vae.hidden_dim", "architecture.feature_dim": "classifier.feature_dim",
          "architecture.image_shape": None, "architecture.num_classes": None, "data_hash": None}


def _leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_trained_with(path: Path, checkpoint: dict, expected: dict | None, stage: str) -> None:
    """Refuse a checkpoint trained with other settings than those params.yaml gives now.

    `expected` is the `config` the stage would write for the current params (`vae_config`,
    `gan_config`, `classifier_config`), or part of it: only the keys it holds are compared. A
    stage run by hand after its upstream ran with other params would otherwise record a row
    whose params are not the ones its models were trained with."""
    if expected is None:
        return
    recorded, wanted = _leaves(checkpoint["config"]), _leaves(expected)
    missing = [key for key in wanted if key not in recorded]
    if missing:
        raise CheckpointError(f"{path} has no {', '.join(missing)} in its config (made by other code?); "
                              f"rerun `dvc repro -f {stage}`")
    differing: dict[str | None, tuple[Any, Any]] = {}
    for key, value in wanted.items():
        if recorded[key] != value:
            differing.setdefault(_SHOWN.get(key, key), (recorded[key], value))
    if None in differing:
        raise CheckpointError(f"{path} was trained on other data than outputs/data/splits.npz; "
                              f"rerun `dvc repro {stage}`")
    if differing:
        shown = ", ".join(f"{key} = {old!r} where params.yaml says {new!r}" for key, (old, new) in differing.items())
        raise CheckpointError(f"{path} was trained with {shown}; rerun `dvc repro {stage}`")


# ---------------------------------------------------------------------------------------------
# The VAE


def vae_architecture(config: Config, image_shape: tuple[int, int, int]) -> VAEArchitecture:
    """The VAE's architecture for `config` and images of `image_shape`."""
    return VAEArchitecture(config.vae.architecture, image_shape, config.latent_dim, config.vae.hidden_dim)


def vae_config(config: Config, arch: VAEArchitecture, seed: int, data_hash: str) -> dict:
    return {"architecture": arch.to_dict(), "vae": dataclasses.asdict(config.vae), "seed": seed,
            "data_hash": data_hash}


def load_vae(path: Path, expected: dict | None = None) -> tuple[VAE, dict]:
    """Rebuild the VAE from its checkpoint alone; check it was trained as `expected` says
    (`check_trained_with`) if given."""
    checkpoint = load_checkpoint(path, kind=VAE_KIND, stage="train_vae")
    check_trained_with(path, checkpoint, expected, "train_vae")
    with _rebuilding(path, "train_vae"):
        model = VAE(VAEArchitecture.from_dict(checkpoint["config"]["architecture"]))
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


def load_seed_vae(folder: Path, config: Config, seed: int, image_shape: tuple[int, int, int],
                  data_hash: str) -> tuple[VAE, dict]:
    """Seed `seed`'s VAE from `folder`, refused unless trained with `config` on the data `data_hash`."""
    expected = vae_config(config, vae_architecture(config, image_shape), seed, data_hash)
    return load_vae(seed_checkpoint(folder, seed, "train_vae"), expected)


# ---------------------------------------------------------------------------------------------
# The classifier


def classifier_config(config: Config, image_shape: tuple[int, int, int], num_classes: int, data_hash: str) -> dict:
    architecture = {"image_shape": list(image_shape), "num_classes": num_classes,
                    "feature_dim": config.classifier.feature_dim}
    return {"architecture": architecture, "classifier": dataclasses.asdict(config.classifier),
            "seed": config.classifier.seed, "data_hash": data_hash}


def load_classifier(path: Path, expected: dict | None = None) -> Classifier:
    """Rebuild the classifier from its checkpoint; check it was trained as `expected` says if given."""
    checkpoint = load_checkpoint(path, kind=CLASSIFIER_KIND, stage="train_classifier")
    check_trained_with(path, checkpoint, expected, "train_classifier")
    with _rebuilding(path, "train_classifier"):
        arch = checkpoint["config"]["architecture"]
        model = Classifier(tuple(arch["image_shape"]), arch["num_classes"], arch["feature_dim"])
        model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The GANs: one file per generator init, holding its discriminator too


def gan_config(config: Config, arch: VAEArchitecture, init: str, seed: int, data_hash: str) -> dict:
    return {"architecture": arch.to_dict(), "init": init, "gan": dataclasses.asdict(config.gan),
            "seed": seed, "data_hash": data_hash}


def load_gan(path: Path, expected: dict | None = None) -> tuple[Decoder, Discriminator, dict]:
    """Rebuild a GAN (generator and its discriminator) from its checkpoint alone; check it was
    trained as `expected` says if given."""
    checkpoint = load_checkpoint(path, kind=GAN_KIND, stage="train_gan")
    check_trained_with(path, checkpoint, expected, "train_gan")
    with _rebuilding(path, "train_gan"):
        arch = VAEArchitecture.from_dict(checkpoint["config"]["architecture"])
        generator = Decoder(arch)
        generator.load_state_dict(checkpoint["state_dict"])
        discriminator = Discriminator(arch, checkpoint["config"]["gan"]["discriminator_hidden"])
        discriminator.load_state_dict(checkpoint["discriminator_state_dict"])
    return generator.eval(), discriminator.eval(), checkpoint


def load_seed_gans(folder: Path, config: Config, seed: int, image_shape: tuple[int, int, int],
                   data_hash: str) -> dict[str, tuple[Decoder, Discriminator]]:
    """Seed `seed`'s GANs from `folder`, refused unless trained with `config` on the data `data_hash`."""
    expected = gan_config(config, vae_architecture(config, image_shape), "", seed, data_hash)
    return load_gans(seed_checkpoint(folder, seed, "train_gan", suffix=""), expected)


def load_gans(folder: Path, expected: dict | None = None) -> dict[str, tuple[Decoder, Discriminator]]:
    """Every GAN saved in `folder` as <init>.pt, by init: (generator, discriminator); each checked
    against `expected` (its `init` added) if given."""
    folder = Path(folder)
    found = {init: folder / f"{init}.pt" for init in GAN_INITS if (folder / f"{init}.pt").exists()}
    if not found:
        raise CheckpointError(f"{folder} holds no generator; run `dvc repro train_gan` first")
    return {init: load_gan(path, expected and {**expected, "init": init})[:2] for init, path in found.items()}
