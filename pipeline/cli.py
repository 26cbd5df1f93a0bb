"""The thin edges shared by every stage's and command's `main()`: user errors as one message and
exit 2; for stages, also the process's thread limit and a tracking store that answers."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError


def run_command(name: str, main: Callable[[], None]) -> None:
    """Run `main`; report a PipelineError without a traceback and exit 2."""
    logging.basicConfig(level=logging.INFO, format=f"{name}: %(message)s")
    try:
        main()
    except PipelineError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(2)


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a pipeline stage's main as a command, after two checks before any work: apply
    `PIPELINE_THREADS`, and check the MLflow store, so that an unreachable tracking server stops
    the stage at once rather than after training (and the stage writes nothing)."""

    def checked_main() -> None:
        import torch

        from pipeline import tracking
        from pipeline.config import thread_limit

        threads = thread_limit(dict(os.environ))
        if threads is not None:
            torch.set_num_threads(threads)
        tracking.check_server()
        main()

    run_command(name, checked_main)
