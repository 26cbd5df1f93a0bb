"""The thin edge shared by every stage's and tool's `main()`: user errors as one message and
exit 2; for stages, also the process's thread limit and a tracking store that answers."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

from pipeline.core.errors import PipelineError, Terminated


def run_command(name: str, main: Callable[[], None]) -> None:
    """Run `main`; report a PipelineError without a traceback and exit 2. Ctrl-C (exit 130) and
    SIGTERM (exit 143) unwind the stack, so the `with` blocks on the way out remove temporary
    files and end the MLflow row as KILLED, and are reported in one line."""
    logging.basicConfig(level=logging.INFO, format=f"{name}: %(message)s")

    def terminate(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        main()
    except PipelineError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except Terminated:
        print(f"{name}: terminated", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a pipeline stage's main as a command, after two checks before any work: apply
    `PIPELINE_THREADS`, and check the MLflow store, so that an unreachable tracking server stops
    the stage at once rather than after training (and the stage writes nothing)."""

    def checked_main() -> None:
        import torch

        from pipeline.core.config import thread_limit
        from pipeline.tracking import store

        threads = thread_limit(dict(os.environ))
        if threads is not None:
            torch.set_num_threads(threads)
        store.check_server()
        main()

    run_command(name, checked_main)
