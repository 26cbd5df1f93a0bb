"""The thin edge shared by every stage's and tool's `main()`: errors the user can act on as one
line and exit 2; for stages, also the process's thread limit, a store that works and params.yaml
held still (params_guard), checked before any work."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable

from pipeline.core.errors import PipelineError, Terminated, causes, without_credentials

log = logging.getLogger(__name__)

# The settings that size each stage's memory, named when an allocation fails.
MEMORY_SETTINGS = {
    "download": "data.max_per_class",
    "train_vae": "vae.batch_size, vae.hidden_dim or latent_dim",
    "train_classifier": "classifier.batch_size or classifier.feature_dim",
    "train_gan": "gan.batch_size, gan.discriminator_hidden, vae.hidden_dim or gan.fid_samples",
    "evaluate": "evaluate.iwae_samples or evaluate.num_samples",
}

# File-system errors a user can act on: errno -> (what happened, what to do).
_FILE_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free space there (`df -h`) and run again"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota and run again"),
    errno.EACCES: ("permission denied", "make it writable for you (`ls -ld`), or run where you can write"),
    errno.EPERM: ("operation not permitted", "make it writable for you (`ls -ld`), or run where you can write"),
    errno.EROFS: ("read-only file system", "run where you can write"),
    errno.EIO: ("input/output error", "check the disk"),
}


def named_fault(name: str, error: BaseException) -> str | None:
    """The one-line message for a fault of the machine or the store that `error` (or an error it
    wraps) is, or None when it is not one (a bug keeps its traceback)."""
    from pipeline.tracking import store

    fault = store.store_fault(error)
    if fault is not None:
        return str(fault)
    for cause in causes(error):
        if isinstance(cause, OSError) and cause.errno in _FILE_FAULTS:
            what, advice = _FILE_FAULTS[cause.errno]
            # Python's file objects raise without a file name: then the folder the stage writes in.
            where = f" writing {cause.filename}" if cause.filename else f" under {os.getcwd()}"
            return without_credentials(f"{what}{where}; {advice}")
        text = str(cause).lower()
        if isinstance(cause, MemoryError) or type(cause).__name__ == "OutOfMemoryError" or (
                isinstance(cause, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)):
            settings = MEMORY_SETTINGS.get(name, "the batch sizes and widths in params.yaml")
            return (f"out of memory ({str(cause).splitlines()[0][:120] or type(cause).__name__}); lower {settings} "
                    "in params.yaml, or free memory")
    return None


def run_command(name: str, main: Callable[[], None]) -> None:
    """Run `main`; report a PipelineError, or a fault `named_fault` recognises, in one line
    without a traceback and exit 2. Ctrl-C (exit 130) and SIGTERM (exit 143) unwind the stack, so
    the `with` blocks on the way out remove temporary files and end the MLflow row as KILLED, and
    are reported in one line."""
    logging.basicConfig(level=logging.INFO, format=f"{name}: %(message)s")
    # MLflow logs a failed database write with its whole SQL before raising it; the error reaches
    # the user once, as one line (named_fault).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

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
    except Exception as error:
        message = named_fault(name, error)
        if message is None:
            raise
        print(f"{name}: error: {message}", file=sys.stderr)
        sys.exit(2)


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a pipeline stage's main as a command, after checks before any work: `PIPELINE_THREADS`
    is applied, the MLflow store works (an unreachable server or a damaged file stops the stage
    at once rather than after training, and the stage writes nothing), and params.yaml is what the
    DVC command running the stage started with (params_guard). Then the staging folders that a run
    of the same stage killed outright left are removed (pipeline.core.io.remove_leftovers)."""

    def checked_main() -> None:
        import torch

        from pipeline.core.config import thread_limit
        from pipeline.core.io import remove_leftovers
        from pipeline.stages import params_guard, paths
        from pipeline.tracking import store

        threads = thread_limit(dict(os.environ))
        if threads is not None:
            torch.set_num_threads(threads)
        store.check_store()
        params_guard.started()
        for leftover in remove_leftovers(paths.STAGE_DIR[name]):
            log.info("removed %s, left by a run of %s that was killed outright", leftover, name)
        main()

    run_command(name, checked_main)
