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


def environment_first(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with this Python environment's bin folder first on PATH, so
    that the `dvc` a command starts and the `python` of dvc.yaml's stage commands are this
    environment's, whichever one the user's shell would find first."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
