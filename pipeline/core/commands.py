"""The outside programs the pipeline runs, in one place: git, and this Python environment's own
programs (`dvc`, dvc.yaml's `python`) first on PATH, as `make` arranges for users."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def git(*args: str, cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
        check: bool = False) -> subprocess.CompletedProcess:
    """`git <args>` with its output captured as text; raises CalledProcessError on failure only
    with `check` (a missing git raises FileNotFoundError)."""
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=check)


def git_output(*args: str, cwd: str | Path | None = None) -> str:
    """What `git <args>` prints, stripped; "" when git fails or is not installed (outside a repository, say)."""
    try:
        return git(*args, cwd=cwd, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


# What git tracks that is a result, not a source: dvc.lock, which DVC rewrites after every stage,
# and the outputs git keeps (dvc.yaml's `cache: false`), which every `dvc repro` rewrites.
RESULTS_IN_GIT = ("dvc.lock", "outputs")


def is_result(path: str) -> bool:
    """Whether `path`, relative to the project's root, is one of RESULTS_IN_GIT or inside one."""
    return any(path == result or path.startswith(f"{result}/") for result in RESULTS_IN_GIT)


def changed_sources(*also_not_sources: str, cwd: str | Path | None = None) -> list[str]:
    """The tracked files under `cwd` that differ from HEAD, the results (RESULTS_IN_GIT) and
    `also_not_sources` aside; none when git fails or is not installed (outside a repository, say)."""
    excluded = [f":!{path}" for path in (*RESULTS_IN_GIT, *also_not_sources)]
    try:
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded, cwd=cwd).stdout
    except OSError:
        return []
    return [line[3:] for line in status.split("\n") if line.strip()]


def environment_first(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with this Python environment's bin folder first on PATH, so
    that the `dvc` a command starts and the `python` of dvc.yaml's stage commands are this
    environment's, whichever one the user's shell would find first."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
