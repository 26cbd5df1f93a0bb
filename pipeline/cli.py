"""The thin edge shared by every stage's `main()`: user errors become one message and exit 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage's main; report a PipelineError without a traceback and exit non-zero."""
    logging.basicConfig(level=logging.INFO, format=f"{name}: %(message)s")
    try:
        main()
    except PipelineError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(2)
