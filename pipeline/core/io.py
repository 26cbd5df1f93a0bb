"""File outputs: atomic writes of files, folders, JSON and CSV.

Every write goes to a temporary file in the same folder and is renamed into place, so a stage
that is interrupted never leaves half a file where DVC or the next stage would read it. A stage
writes its whole output folder aside (`atomic_dir`) and swaps it in at the end, so its outputs
appear together or not at all. Files and folders get the user's umask, as any tool's would
(`tempfile` would make them private: 0600 and 0700).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.errors import CheckpointError, PipelineError


def _umask() -> int:
    """The process's umask (read by setting it, then put back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _with_umask(path: Path, mode: int) -> None:
    """Give `path`, made private by tempfile, the mode a plain open() or mkdir() would have given it."""
    os.chmod(path, mode & ~_umask())


def _staging_prefix(path: Path) -> str:
    """`.<name>.<pid>-`: a staging file or folder names the process that writes it, so that what a
    killed process left can be told from what a live one is writing (`remove_leftovers`)."""
    return f".{path.name}.{os.getpid()}-"


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_leftovers(path: Path) -> list[Path]:
    """Remove the staging files and folders of `path` (`atomic_path`, `atomic_dir`) that a process
    killed outright (SIGKILL, a power cut) left beside it: only `path`'s own, only those whose
    process is gone. Returns what was removed."""
    import shutil

    path = Path(path)
    owner = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)-[^.]*\.tmp(\.old)?$")
    removed = []
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp*")) if path.parent.is_dir() else []:
        found = owner.match(leftover.name)
        if found and int(found.group(1)) != os.getpid() and not process_alive(int(found.group(1))):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_staging_prefix(path), suffix=".tmp")
    os.close(fd)
    _with_umask(Path(tmp), 0o666)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; it replaces `path` whole if the block succeeds.

    The old folder is renamed aside before the new one is renamed in, and only then removed: at no
    moment does `path` hold a mixture of old and new files (for an instant it does not exist)."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=_staging_prefix(path), suffix=".tmp"))
    _with_umask(staging, 0o777)
    old = staging.with_name(staging.name + ".old")
    try:
        yield staging
        if path.exists():
            os.replace(path, old)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def check_output(path: Path, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written: a file where a folder is
    to go (or the other way round), or a file where a folder above it would have to be. A
    PipelineError of one line saying what to give instead."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise PipelineError(f"{path} is a folder; give a file path (such as {path / 'out.csv'})")
    if path.exists() and not path.is_dir() and folder:
        raise PipelineError(f"{path} is a file; give a folder to write into")
    for above in path.parents:
        if above.exists():
            if not above.is_dir():
                raise PipelineError(f"{path} cannot be created: {above} is a file, not a folder")
            break


def staged(folder: Path, path: Path) -> Path:
    """Where output `path` (`outputs/vae/checkpoint.pt`) goes inside the staging `folder` of its
    stage's output folder (`outputs/vae`): `folder/checkpoint.pt`."""
    return Path(folder) / Path(path).relative_to(*Path(path).parts[:2])


def write_json(path: Path, data: Any, sort_keys: bool = True) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_stage_json(path: Path, stage: str, required: dict[str, type | tuple[type, ...]]) -> dict:
    """The JSON object `stage` wrote at `path`, holding `required` (key -> type); a CheckpointError
    of one line naming the stage to rerun when it is missing, is not JSON, or lacks a key."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; run `dvc repro {stage}` first")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is damaged (not JSON: {error}); rerun `dvc repro -f {stage}`") from None
    wrong = [key for key, kind in required.items()
             if not isinstance(data, dict) or not isinstance(data.get(key), kind) or isinstance(data.get(key), bool)]
    if wrong:
        raise CheckpointError(f"{path} is damaged (no {', '.join(repr(k) for k in wrong)} of the expected type); "
                              f"rerun `dvc repro -f {stage}`")
    return data


def csv_text(rows: list[dict]) -> str:
    """Rows with the same keys as CSV text; None becomes an empty cell."""
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return handle.getvalue()


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows with the same keys as a CSV file (histories and tables for DVC plots); None becomes an empty cell."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(csv_text(rows).encode())
