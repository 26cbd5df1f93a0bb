"""The MLflow store itself: where it is, how long a write waits for another process's lock, how
MLflow connects to it (SQLAlchemy hooks), whether it works (checked before any work), and what
its failures mean for the user, in one line. How a stage execution becomes (part of) a row is
record.py's; docs/tracking.md explains both, docs/reliability.md the faults.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import weakref
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from pipeline.core.errors import TrackingError, causes, without_credentials


def project_root() -> Path:
    """The real project root, also inside a DVC experiment's temporary copy."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def default_store() -> Path:
    """The local MLflow store: mlflow.db at the project root."""
    return project_root() / "mlflow.db"


def default_tracking_uri() -> str:
    return f"sqlite:///{default_store()}"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the local store. A relative SQLite path is taken from the project
    root: MLflow would take it from the working folder, which in a queued or `--temp` DVC
    experiment is a temporary copy that DVC deletes afterwards, store and all."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("sqlite:"):  # the wait is engine_uri's (connect sets MLFLOW_TRACKING_URI to that)
        uri = re.sub(r"[?&]timeout=[^&]*$", "", re.sub(r"([?&])timeout=[^&]*&", r"\1", uri))
    if uri.startswith("sqlite:///") and not uri.startswith(("sqlite:////", "sqlite:///file:")):
        path, mark, query = uri.removeprefix("sqlite:///").partition("?")
        if path and path != ":memory:":
            uri = f"sqlite:///{project_root() / path}{mark}{query}"
    return uri


def shown_uri() -> str:
    """The store's URI as messages and pages show it: without a user name or password."""
    return without_credentials(tracking_uri())


# Seconds to wait for a tracking server to answer the reachability check.
SERVER_TIMEOUT_S = 10

# How long a write to a SQLite store waits for another process's lock (SQLite's busy handler
# retries within it; MLflow's own 20 s is replaced, see connect) before the stage gives up with a
# one-line error: queue workers writing one store at once each hold it for milliseconds.
# PIPELINE_STORE_WAIT_S changes it.
STORE_WAIT_S = 60.0
STORE_WAIT_VARIABLE = "PIPELINE_STORE_WAIT_S"


def store_wait() -> float:
    value = os.environ.get(STORE_WAIT_VARIABLE, "").strip()
    if not value:
        return STORE_WAIT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise TrackingError(f"{STORE_WAIT_VARIABLE} = {value!r} is not allowed; expected seconds, above 0 and "
                            f"at most 3600, or unset for {STORE_WAIT_S:g}")
    return seconds


def check_store() -> None:
    """Before any work, stop with a TrackingError naming the store when it cannot work: a folder
    (`file:`) or in-memory store, a SQLite file that cannot be created, is damaged or stays locked,
    or a tracking server that does not answer."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        check_server()
        return
    scheme = uri.partition(":")[0] if ":" in uri else ""
    if scheme in ("", "file") or len(scheme) == 1:  # a plain path (C: on Windows) is a folder store too
        raise TrackingError(f"MLflow store {shown_uri()} is a folder (file:) store, which this project does not "
                            "use; set MLFLOW_TRACKING_URI to sqlite:///<absolute path>.db or a server's http:// "
                            "address, or unset it for the local store")
    database = local_store(uri)
    if uri.startswith("sqlite:") and (database is None or str(database) in ("", ":memory:")):
        raise TrackingError(f"MLflow store {shown_uri()} is in memory and would keep nothing; set "
                            "MLFLOW_TRACKING_URI to sqlite:///<absolute path>.db, or unset it for the local store")
    if database is not None:
        check_database(database)
        artifacts = database.parent / "mlartifacts"  # where experiments.ensure_experiment puts them
        if artifacts.exists() and not artifacts.is_dir():
            raise TrackingError(f"{artifacts} is a file, where MLflow store {shown_uri()} keeps its runs' "
                                "artifacts (models, images); move it away and run again")


def check_database(database: Path) -> None:
    """A SQLite store's file can be created (its folder is a folder), or is a readable database."""
    import sqlite3

    folder = database.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise TrackingError(f"MLflow store {database} cannot be created: {folder} is a file, not a folder; "
                            "choose another path in MLFLOW_TRACKING_URI")
    if not database.exists():
        return
    if not database.is_file():
        raise TrackingError(f"MLflow store {database} is not a file; choose another path in MLFLOW_TRACKING_URI")
    try:
        with contextlib.closing(read_only(database)) as connection:
            answer = connection.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as error:
        raise unusable_store(error) from None
    if answer != "ok":
        raise unusable_store(Exception(f"database disk image is malformed: {answer}"))


def read_only(database: Path):
    """A read-only sqlite3 connection to a SQLite store. A writer killed in the middle of a
    transaction leaves a hot journal, which only a writable connection may roll back: a read-only
    one fails with SQLITE_READONLY_ROLLBACK ("attempt to write a readonly database"). Then one
    read-write connection opens the file first, as MLflow's would, and SQLite's own recovery
    rolls the dead writer's changes back. A store that is really read-only still fails."""
    import sqlite3

    def connect(mode: str):
        # A URI: `#`, `?` and `%` in the path must be escaped, or SQLite opens the path cut there
        # (SQLAlchemy, and so MLflow, take the path as it is: `sqlite:////tmp/a#1/mlflow.db`).
        connection = sqlite3.connect(f"file:{quote(str(database))}?mode={mode}", uri=True, timeout=store_wait())
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the read lock
        except BaseException:
            connection.close()
            raise
        return connection

    try:
        return connect("ro")
    except sqlite3.OperationalError as error:
        if getattr(error, "sqlite_errorcode", None) != sqlite3.SQLITE_READONLY_ROLLBACK:
            raise
    connect("rw").close()
    return connect("ro")


SERVER_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def check_server() -> None:
    """With a tracking server as the store, fail fast, with a TrackingError naming it, when it
    does not answer: one request, no retries (MLflow's client retries a refused connection for
    minutes). A local store needs no check."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "POST",
                                max_retries=0, timeout=SERVER_TIMEOUT_S, json={"max_results": 1})
    except Exception as error:  # MLflow wraps requests' errors: refused, timed out, unknown host
        reason = re.search(r"\[Errno -?\d+\][^\"')]*|[Rr]ead timed out|timed out", str(error))
        raise TrackingError(f"MLflow tracking server {shown_uri()} is unreachable "
                            f"({reason.group(0) if reason else type(error).__name__}); start it, or unset "
                            "MLFLOW_TRACKING_URI to record into the local store") from None
    if response.status_code != 200:
        raise TrackingError(f"MLflow tracking server {shown_uri()} answered HTTP {response.status_code}: "
                            f"{without_credentials(response.text[:200])}")


def missing_local_store() -> Path | None:
    """The database file of the local SQLite store when it does not exist yet, else None (it
    exists, or the store is a server). Readers check this so as not to create an empty store."""
    database = local_store(tracking_uri())
    return database if database is not None and not database.exists() else None


def local_store(uri: str) -> Path | None:
    """The database file of a SQLite store URI (`sqlite:///path`, or `sqlite:///file:path?...`),
    None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0].removeprefix("file:"))


def engine_uri(uri: str) -> str:
    """`uri` (from tracking_uri(), without a `timeout`) as MLflow is given it: a SQLite store waits
    up to store_wait() for another process's lock (Python's default is 5 s), as SQLAlchemy reads a
    `timeout` in the URI's query."""
    if local_store(uri) is None:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}timeout={store_wait():g}"


@contextlib.contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a SQLite store while MLflow may create it. MLflow builds a new
    store's schema by migrations that break when two processes (two queue workers, say) run
    them at once; once the store exists, SQLite serialises concurrent writers itself."""
    database = local_store(uri)
    if database is None:
        yield
        return
    import fcntl

    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# The pool records of the database connections MLflow opens in this process (_opened); end_run
# rolls back what they leave open.
_opened: weakref.WeakSet = weakref.WeakSet()


def opened_connections() -> list:
    """The pool records of the database connections MLflow has opened in this process (still open)."""
    return list(_opened)


def _opened_connection(dbapi_connection, record) -> None:
    """SQLAlchemy hook: remember each connection MLflow opens, by its pool record."""
    _opened.add(record)


def _store_wait_pragma(connection, cursor, statement, parameters, context, executemany):
    """SQLAlchemy hook: MLflow opens every session on a SQLite store with `PRAGMA busy_timeout =
    20000`; the wait is store_wait() instead, so that one bound holds for every write."""
    if statement.startswith("PRAGMA busy_timeout"):
        statement = f"PRAGMA busy_timeout = {int(store_wait() * 1000)};"
    return statement, parameters


def connect():
    """Point MLflow at the store and return (mlflow, client); creates a missing local store."""
    # Usage telemetry would only try (and fail) to reach the network from here.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "before_cursor_execute", _store_wait_pragma):
        event.listen(Engine, "before_cursor_execute", _store_wait_pragma, retval=True)
        event.listen(Engine, "connect", _opened_connection)

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        # A server that goes away mid-stage: MLflow's client retries for minutes by default (7
        # retries, backoff factor 2, 120 s a request; a stage hung 506 s). Bounded here, a user's
        # own settings kept: a refused request is given up within about 10 s.
        for variable, value in SERVER_RETRIES.items():
            os.environ.setdefault(variable, value)
    mlflow.set_tracking_uri(engine_uri(uri))
    with _creation_lock(uri):
        try:
            with quiet("mlflow.store.db.utils"):
                return mlflow, mlflow.MlflowClient()  # the client's store creates and migrates the database
        except Exception as error:  # a damaged or unwritable file; MLflow raises several kinds
            raise store_fault(error) or error from None


# What SQLite says, and what it means for the user: (substring, the problem, what to do).
_SQLITE_FAULTS = (
    ("database is locked", "stayed locked by another process for {wait:g} s",
     f"find what holds it (`fuser <file>`), or wait longer with {STORE_WAIT_VARIABLE}"),
    ("file is not a database", "is damaged (file is not a database)",
     "move it aside or restore a backup; a missing store is created anew"),
    ("malformed", "is damaged (database disk image is malformed)",
     "move it aside or restore a backup; a missing store is created anew"),
    ("readonly", "is read-only (attempt to write a readonly database)",
     "make the file and its folder writable, or choose another store"),
    ("disk is full", "is on a full disk (database or disk is full)", "free space on that file system"),
    ("unable to open database", "cannot be opened (unable to open database file)",
     "check that its folder exists and is writable"),
    ("disk i/o error", "could not be read or written (disk I/O error)", "check the disk and the file"),
)


def unusable_store(error: BaseException) -> TrackingError:
    """The error for a store that refused a read or write, in one line: what the database's own
    reason means for the user and what to do, rather than MLflow's whole SQL dump."""
    text = without_credentials(str(error))
    for needle, problem, advice in _SQLITE_FAULTS:
        if needle in text.lower():
            return TrackingError(f"MLflow store {shown_uri()} {problem.format(wait=store_wait())}; "
                                 f"{advice.replace('<file>', str(local_store(tracking_uri()) or 'it'))}")
    reason = re.search(r"\((?:sqlite3|psycopg2|pymysql)\.\w+\) ([^\n]+)", text)
    return TrackingError(f"MLflow store {shown_uri()} could not be used: "
                         f"{reason.group(1) if reason else text.splitlines()[0][:300] if text else type(error).__name__}")


def store_fault(error: BaseException) -> TrackingError | None:
    """The one-line error for a failure of the store, found in `error` or its causes (MLflow
    wraps SQLAlchemy's errors, which wrap sqlite3's); None when the store is not at fault."""
    import sqlite3

    for cause in causes(error):
        if tracking_uri().startswith(("http://", "https://")) and _server_gone(cause):
            reason = re.search(r"\[Errno -?\d+\][^\"')]*|[Rr]ead timed out|timed out|Max retries exceeded", str(cause))
            return TrackingError(f"MLflow tracking server {shown_uri()} stopped answering "
                                 f"({reason.group(0) if reason else type(cause).__name__}); start it again and "
                                 "rerun (a row this stage had opened is marked KILLED by the next stage on "
                                 "this machine)")
        module = type(cause).__module__
        if isinstance(cause, sqlite3.Error) or module.startswith("sqlalchemy") or (
                module.startswith("mlflow") and re.search(r"sqlite3|psycopg2|pymysql|database", str(cause))):
            return unusable_store(cause)
    return None


def _server_gone(error: BaseException) -> bool:
    """Whether `error` says the tracking server could not be reached (refused, timed out, gone):
    requests' own error, or MLflow's after its retries."""
    import requests

    return isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)) or (
        type(error).__module__.startswith("mlflow") and "API request to" in str(error)
        and re.search(r"Max retries exceeded|Connection refused|timed out|ConnectionError", str(error)) is not None)


@contextlib.contextmanager
def quiet(logger: str) -> Iterator[None]:
    """Silence one logger for the block (MLflow logs a database error's traceback before raising
    it; the stage reports it once, as a TrackingError)."""
    previous = logging.getLogger(logger).level
    logging.getLogger(logger).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logging.getLogger(logger).setLevel(previous)
