"""Where a record comes from: the tags every stage execution carries (git commit, whether the
sources differ from it, the DVC experiment, host, process, threads) and a result row's name."""

from __future__ import annotations

import os
import socket

from pipeline.core.commands import changed_sources, git_output
from pipeline.core.config import Config
from pipeline.tracking import names


def dvc_exp_name() -> str:
    """The DVC experiment this process runs in, or 'workspace' for a plain `dvc repro`."""
    return os.environ.get("DVC_EXP_NAME", "workspace")


def context_tags(stage: str) -> dict[str, str]:
    """Tags that say where a record comes from: stage, git commit, DVC experiment, CPU threads."""
    import torch

    tags = {
        names.STAGE_TAG: stage,
        names.COMMIT_TAG: git_output("rev-parse", "HEAD") or "unknown",
        # Whether the sources differ from that commit. params.yaml is recorded as params (and
        # `dvc exp run -S` edits it), and the results git keeps do not count either.
        names.DIRTY_TAG: str(bool(changed_sources("params.yaml"))).lower(),
        names.EXP_NAME_TAG: dvc_exp_name(),
        names.THREADS_TAG: str(torch.get_num_threads()),
        names.HOST_TAG: socket.gethostname(),
        names.PID_TAG: str(os.getpid()),
    }
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags[names.BASELINE_TAG] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def experiment_for(stage: str, config: Config) -> str:
    """The MLflow experiment `stage` records into (see names.STAGE_EXPERIMENT)."""
    return names.STAGE_EXPERIMENT[stage] or config.experiment_name


def run_name(config: Config, seed: int) -> str:
    """A seed's result row's name: `vae-gan-ld<latent_dim>-s<seed>-<DVC experiment name or 'workspace'>`."""
    return f"vae-gan-ld{config.latent_dim}-s{seed}-{dvc_exp_name()}"
