"""What one experiment of a Ray sweep does on the node Ray gives it (docs/cluster.md): clone the
project at the sweep's commit, run the experiment with `dvc exp run`, push it to the git remote
and its outputs to the DVC remote. Its MLflow row goes to the store in `Task.env`.

Standard library only, and nothing of the project is imported: the sweep sends this module to the
nodes by value, so a node needs the project's Python environment and git, not the project.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LOG_LIMIT = 1_000_000  # characters of an experiment's log sent back (its end)
# Variables of the driver's own DVC command that must not reach the experiment's.
DVC_VARIABLES = ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE")


@dataclass(frozen=True)
class Task:
    """One experiment of the sweep, with everything a node needs to run it."""

    name: str  # the DVC experiment name
    settings: tuple[str, ...]  # `key=value` for `dvc exp run -S`
    git_remote: str  # URL of the git remote: the sweep's commit is there, the experiment goes there
    commit: str  # the sweep's commit
    dvc_remote: tuple[str, str]  # (name, URL) of the DVC remote: shared outputs in, the experiment's out
    env: dict[str, str] = field(default_factory=dict)  # the store, the threads, the git identity


@dataclass(frozen=True)
class Outcome:
    """How a task ended: `failed_step` is None on success; `log` is the output of every step."""

    name: str
    host: str
    seconds: float
    failed_step: str | None
    log: str


def steps(task: Task, project: Path) -> list[tuple[str, list[str]]]:
    """The commands of one experiment, each with the step name a failure reports."""
    dvc = [sys.executable, "-m", "dvc"]
    name, url = task.dvc_remote
    settings = [arg for setting in task.settings for arg in ("-S", setting)]
    return [
        ("clone", ["git", "clone", "--quiet", "--no-checkout", task.git_remote, str(project)]),
        ("checkout", ["git", "checkout", "--quiet", task.commit]),
        # In config.local, so the remote is this one whatever the commit's .dvc/config says.
        ("dvc remote", [*dvc, "remote", "add", "--local", "--force", "--default", name, url]),
        # The run cache (the sweep pushed the shared stages' with their outputs): with --pull,
        # `dvc exp run` then restores download and train_classifier from the remote rather than
        # recomputing them. Outputs of the commit's dvc.lock never pushed are recomputed if needed.
        ("dvc pull", [*dvc, "pull", "--quiet", "--run-cache", "--allow-missing"]),
        ("dvc exp run", [*dvc, "exp", "run", "--pull", "-n", task.name, *settings]),
        # --force: an earlier attempt that died with its node may have pushed part of it.
        ("dvc exp push", [*dvc, "exp", "push", "--force", "origin", task.name]),
    ]


def run(task: Task) -> Outcome:
    """Run one experiment in a temporary clone, removed afterwards; never raises for a failed
    step (Ray would retry it): the Outcome names the step and carries the log."""
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f"pipeline-{task.name}-"))
    project = work / "project"
    env = {key: value for key, value in os.environ.items() if key not in DVC_VARIABLES}
    # `python` in dvc.yaml's commands must be this environment's.
    env.update(task.env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    log = work / "experiment.log"
    failed = None
    try:
        with log.open("w") as out:
            out.write(f"# {task.name} on {socket.gethostname()}, in {project}\n")
            for step, command in steps(task, project):
                out.write(f"$ {' '.join(command)}\n")
                out.flush()
                result = subprocess.run(command, cwd=project if project.exists() else work, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False)
                if result.returncode != 0:
                    out.write(f"# {step} failed with exit {result.returncode}\n")
                    failed = step
                    break
        text = log.read_text(errors="replace")
        return Outcome(task.name, socket.gethostname(), time.monotonic() - start, failed, text[-LOG_LIMIT:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
