"""Errors a user can act on. Stages report them as one clear message and exit non-zero."""

import re
from collections.abc import Iterator

# The user-information part of a URL: `scheme://user:password@host` -> `scheme://***@host`.
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def without_credentials(text: str) -> str:
    """`text` with any URL's user name and password replaced by ***, for messages and logs."""
    return _CREDENTIALS.sub("***@", text)


def causes(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then the errors it was raised from or while handling, innermost last (a library's
    error often wraps the one that names the fault: MLflow wraps SQLAlchemy's, which wraps sqlite3's)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


class PipelineError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class DataError(PipelineError):
    """The data could not be obtained or is not what the pipeline expects."""


class CheckpointError(PipelineError):
    """An earlier stage's output (a checkpoint, a record) is missing, damaged or belongs to other params."""


class TrainingDiverged(PipelineError):
    """A loss became NaN or infinite."""


class TrackingError(PipelineError):
    """The MLflow tracking store could not be used."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (see pipeline.cli) so a stage unwinds as on Ctrl-C.
    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""
