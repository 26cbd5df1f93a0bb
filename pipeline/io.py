"""File outputs: atomic writes and self-describing checkpoints.

Every write goes to a temporary file in the same folder and is renamed into place, so a stage
that is interrupted never leaves half a file where DVC or the next stage would read it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import CheckpointError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; it replaces `path` whole if the block succeeds."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield staging
        shutil.rmtree(path, ignore_errors=True)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


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
