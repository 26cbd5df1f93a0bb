"""DVC as the sweeps and the explorer's Train page drive it: the shared stages, a `dvc` command
run with this environment first on PATH, the git checks `dvc exp run` needs, the MLflow row an
experiment's result is in, and the files a fresh copy of the project starts from. The executors
(queue_sweep.py, ray_sweep.py) and sweep.py build on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.core.commands import git, is_result
from pipeline.core.errors import PipelineError
from pipeline.stages import paths
from pipeline.tracking import names

SHARED_STAGES = tuple(stage for stage in names.STAGES if stage not in names.RESULT_STAGES)  # download, train_classifier


class SweepError(PipelineError):
    """The sweep could not start, or an experiment of it left no complete result."""


def dvc(*args: str, env: dict[str, str]) -> None:
    """`dvc <args>`, its output to this process's; SweepError when it fails."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], env=env, text=True, check=False)
    if result.returncode != 0:
        raise SweepError(f"`dvc {' '.join(args)}` failed (exit {result.returncode}); see its output above")


def check_git() -> None:
    """`dvc exp run` needs a git repository with a commit, and an identity to commit with."""
    if git("rev-parse", "--verify", "-q", "HEAD").returncode != 0:
        raise SweepError("dvc exp run needs a git repository with at least one commit: git init, then commit")
    if git("var", "GIT_COMMITTER_IDENT").returncode != 0:
        raise SweepError("dvc exp run commits each experiment: set git config user.name and user.email")


def result_run_ids(name: str) -> dict[int, str]:
    """The MLflow rows holding DVC experiment `name`'s results, by seed: the run ids in its
    evaluation's `mlflow_run.json`, read from the experiment's commit and DVC's cache. Empty when
    the experiment left no result (it failed)."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        runs = json.loads(dvc.api.read(str(paths.EVAL_RUN), rev=name)).get("runs", {})
    except (DvcException, FileNotFoundError):
        return {}
    return {int(seed): run_id for seed, run_id in runs.items()}


def source_files(root: Path) -> list[str]:
    """The project's files in `root` that a fresh copy of it starts from: what git tracks or would
    track, less the results git keeps (commands.RESULTS_IN_GIT)."""
    files = git("ls-files", "-co", "--exclude-standard", cwd=root, check=True).stdout.split()
    return [name for name in files if not is_result(name) and (Path(root) / name).is_file()]
