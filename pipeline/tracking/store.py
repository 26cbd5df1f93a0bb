"""The MLflow store and how a stage execution becomes (part of) a row; docs/tracking.md explains
the row model: where the store is, one row per result, upstream copies, interrupted stages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.config import Config, flatten
from pipeline.core.errors import Terminated, TrackingError, causes, without_credentials
from pipeline.core.io import read_json, write_json
from pipeline.tracking import names, views

log = logging.getLogger(__name__)



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
        connection = sqlite3.connect(f"file:{database}?mode={mode}", uri=True, timeout=store_wait())
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
    mlflow.set_tracking_uri(engine_uri(uri))
    with _creation_lock(uri):
        try:
            with _quiet("mlflow.store.db.utils"):
                return mlflow, mlflow.MlflowClient()  # the client's store creates and migrates the database
        except Exception as error:  # a damaged or unwritable file; MLflow raises several kinds
            raise store_fault(error) or error from None


def experiment_tags(name: str, existing: dict[str, str] | None = None) -> dict[str, str]:
    """The tags experiment `name` must carry that it lacks (or holds out of date): every experiment
    says it holds model training (names.py); a result experiment also carries the UI's saved view of
    the headline numbers (views.py)."""
    existing = existing or {}
    tags = {}
    if existing.get(names.EXPERIMENT_KIND_TAG) != names.TRAINING_KIND:
        tags[names.EXPERIMENT_KIND_TAG] = names.TRAINING_KIND
    if name not in names.OWN_EXPERIMENTS and not views.is_current(
            existing.get(views.VIEW_TAG)):
        tags[views.VIEW_TAG] = views.envelope(int(time.time() * 1000))
    return tags


def ensure_experiment(name: str) -> str:
    """The id of experiment `name`, created (with artifacts beside the local store) if missing, with
    its tags brought up to date (experiment_tags)."""
    mlflow, client = connect()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        check_artifact_location(name, experiment.artifact_location)
        for key, value in experiment_tags(name, experiment.tags).items():  # made by older code
            client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    # A SQLite store keeps its artifacts beside it, in mlartifacts/ (the project root's, for the
    # local store): MLflow's own default, ./mlruns, would be in the working folder, a temporary
    # copy in a queued DVC experiment. A tracking server chooses its own.
    database = local_store(tracking_uri())
    location = (database.parent.resolve() / "mlartifacts").as_uri() if database is not None else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=experiment_tags(name))
    except mlflow.exceptions.MlflowException:
        # Another process created it between our lookup and our create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def check_artifact_location(name: str, location: str) -> None:
    """Refuse an experiment whose artifacts would be lost: kept at a relative path, or inside DVC's
    temporary copy of the project (deleted after a queued or `--temp` experiment), as an
    experiment made by other code or an older version can be."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(location or "")
    if parts.scheme not in ("", "file"):
        return
    path = Path(unquote(parts.path))
    workdir = Path.cwd().resolve()
    temporary = workdir != project_root() and path.is_absolute() and path.resolve().is_relative_to(workdir)
    if not path.is_absolute() or temporary or "/.dvc/tmp/" in f"{path}/":
        where = "a relative path" if not path.is_absolute() else "inside DVC's temporary copy of the project"
        raise TrackingError(f"MLflow experiment '{name}' in {shown_uri()} keeps its artifacts at {location}, "
                            f"{where}, where they would be lost; record into another experiment "
                            "(tracking.experiment in params.yaml), or delete this one (`mlflow experiments "
                            "delete`) so that it is made again with its artifacts beside the store")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def dvc_exp_name() -> str:
    """The DVC experiment this process runs in, or 'workspace' for a plain `dvc repro`."""
    return os.environ.get("DVC_EXP_NAME", "workspace")


def context_tags(stage: str) -> dict[str, str]:
    """Tags that say where a record comes from: stage, git commit, DVC experiment, CPU threads."""
    import torch

    tags = {
        names.STAGE_TAG: stage,
        names.COMMIT_TAG: _git("rev-parse", "HEAD") or "unknown",
        # Whether the sources differ from that commit. params.yaml is recorded as params (and
        # `dvc exp run -S` edits it), and DVC rewrites dvc.lock after every stage: neither counts.
        names.DIRTY_TAG: str(bool(_git("status", "--porcelain", "--untracked-files=no", "--",
                                   ".", ":!params.yaml", ":!dvc.lock"))).lower(),
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


def run_name(config: Config) -> str:
    """A result row's name: `vae-gan-ld<latent_dim>-s<seed>-<DVC experiment name or 'workspace'>`."""
    return f"vae-gan-ld{config.latent_dim}-s{config.seed}-{dvc_exp_name()}"


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def close_abandoned(client, experiment_id: str) -> list[str]:
    """Mark KILLED the experiment's RUNNING rows that a process on this machine held and that
    process is gone (killed without a chance to end its row); returns their ids. Rows of other
    machines, and of live processes (a queue worker running now), are left alone."""
    host = socket.gethostname()
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        pid = run.data.tags.get(names.PID_TAG, "")
        if run.data.tags.get(names.HOST_TAG) == host and pid.isdigit() and not process_alive(int(pid)):
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("MLflow row %s was left RUNNING by process %s, which is gone: marked KILLED",
                        run.info.run_id, pid)
            closed.append(run.info.run_id)
    return closed


def close_dead_attempts(experiment_name: str, exp_names: list[str]) -> list[str]:
    """Mark KILLED the rows of DVC experiments `exp_names` still RUNNING once the sweep knows that
    every attempt at them has ended: attempts that died with their Ray node. Their process was on
    another host, so close_abandoned, which sees this machine's processes only, cannot tell that
    it is gone. Returns their ids."""
    from mlflow.entities import RunTag

    _, client = connect()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    closed = []
    for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"):
        if run.data.tags.get(names.EXP_NAME_TAG) in exp_names:
            client.log_batch(run.info.run_id, tags=[RunTag(names.CLOSED_BY_TAG, "sweep: its attempt died with its node")])
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("MLflow row %s of %s was left RUNNING by an attempt that died with its node: marked KILLED",
                        run.info.run_id, run.data.tags[names.EXP_NAME_TAG])
            closed.append(run.info.run_id)
    return closed


def _recorded_stages(run) -> list[str]:
    value = run.data.tags.get(names.STAGES_TAG, "")
    return value.split(",") if value else []


def _can_add_to(run, stage: str, params: dict[str, str]) -> bool:
    """Whether `stage` may add its record to the existing row `run` (see module docstring)."""
    return (
        run.info.status == "FINISHED"
        and stage not in _recorded_stages(run)
        and all(run.data.params.get(key, value) == value for key, value in params.items())
    )


def _copy_upstream(client, source, target_id: str, stage: str) -> list[str]:
    """Copy the records of the stages before `stage` from row `source` into row `target_id`."""
    from mlflow.entities import RunTag

    recorded = _recorded_stages(source)
    kept = recorded[: recorded.index(stage)] if stage in recorded else recorded
    prefixes = tuple(f"{names.STAGE_METRIC_PREFIX[s]}/" for s in kept)
    metrics = [
        point
        for key in source.data.metrics
        if key.startswith(prefixes)
        for point in client.get_metric_history(source.info.run_id, key)
    ]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(target_id, metrics=metrics[start : start + 1000])
    client.log_batch(target_id, tags=[RunTag(f"{names.SOURCE_TAG}{s}", source.data.tags.get(
        f"{names.SOURCE_TAG}{s}", source.info.run_id)) for s in kept])
    return kept


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
        module = type(cause).__module__
        if isinstance(cause, sqlite3.Error) or module.startswith("sqlalchemy") or (
                module.startswith("mlflow") and re.search(r"sqlite3|psycopg2|pymysql|database", str(cause))):
            return unusable_store(cause)
    return None


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence one logger for the block (MLflow logs a database error's traceback before raising
    it; the stage reports it once, as a TrackingError)."""
    previous = logging.getLogger(logger).level
    logging.getLogger(logger).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logging.getLogger(logger).setLevel(previous)


@contextlib.contextmanager
def stage_run(
    stage: str,
    config: Config,
    *,
    experiment: str,
    run_name: str,
    params: dict[str, Any] | None = None,
    upstream_run_id: str | None = None,
) -> Iterator[Any]:
    """Record one stage execution in MLflow; yields the active `mlflow.ActiveRun`.

    `experiment` is normally `experiment_for(stage, config)`. With `upstream_run_id` the stage
    adds to that row or starts a new one holding copies of its upstream records (docs/tracking.md).
    `params` defaults to the full typed config. If the block raises, the run ends FAILED (KILLED
    for Ctrl-C and SIGTERM) and the stage is not added to `pipeline.stages`.
    """
    mlflow, client = connect()
    params = {key: str(value) for key, value in (params or flatten(config)).items()}
    try:
        experiment_id = ensure_experiment(experiment)
        close_abandoned(client, experiment_id)
        upstream = client.get_run(upstream_run_id) if upstream_run_id else None
    except mlflow.exceptions.MlflowException as error:
        if upstream_run_id and "not found" in str(error).lower():
            log.warning("upstream MLflow run %s is not in %s; starting a new row", upstream_run_id, shown_uri())
            upstream = None
        else:
            raise unusable_store(error) from None

    adding = upstream is not None and _can_add_to(upstream, stage, params)
    try:
        with _quiet("mlflow.store.db.utils"):
            if adding:
                active = mlflow.start_run(run_id=upstream.info.run_id)
            else:
                active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
    except mlflow.exceptions.MlflowException as error:  # a read-only store, say: nothing was recorded
        raise unusable_store(error) from None
    # Everything from here on ends the run, FAILED or KILLED on a failure, rather than leaving it
    # RUNNING and half-copied.
    run_id = active.info.run_id
    try:
        stages = _recorded_stages(upstream) if adding else []
        if upstream is not None and not adding:
            stages = _copy_upstream(client, upstream, run_id, stage)
            mlflow.set_tag(names.FORKED_TAG, upstream.info.run_id)
        mlflow.set_tags(context_tags(stage))
        mlflow.log_params({k: v for k, v in params.items() if k not in active.data.params})
        if names.STAGE_EXPERIMENT[stage] is None:  # a result row: tag what its replicates share
            mlflow.set_tag(names.CONFIGURATION_TAG, names.configuration_id(params))
        yield active
        mlflow.set_tag(names.STAGES_TAG, ",".join([*stages, stage]))
        mlflow.set_tag(f"{names.SOURCE_TAG}{stage}", run_id)
        with _quiet("mlflow.store.db.utils"):
            mlflow.end_run("FINISHED")
    except (KeyboardInterrupt, Terminated):  # Ctrl-C, or SIGTERM (see pipeline.stages.cli)
        end_run(run_id, "KILLED")
        raise
    except BaseException:
        end_run(run_id, "FAILED")
        raise


def end_run(run_id: str, status: str) -> None:
    """End a failed or interrupted stage's row as `status`. An interrupt that lands inside one of
    MLflow's writes can leave this process's connection in its write transaction, holding the
    store's lock against this very call for the whole store_wait(): the write is rolled back first
    (interrupted, it was never to be kept). The store can still refuse, locked by another process
    past store_wait(). Then the row stays RUNNING with its host and pid, and the next stage on this
    machine marks it KILLED (`close_abandoned`), as after a SIGKILL; the stage still ends with its
    own error or exit code, not a traceback."""
    import mlflow

    for record in list(_opened):
        connection = record.dbapi_connection
        if getattr(connection, "in_transaction", False):
            with contextlib.suppress(Exception):  # another thread's, or already closed
                connection.rollback()
    try:
        with _quiet("mlflow.store.db.utils"):
            if mlflow.active_run() is not None:
                mlflow.end_run(status)
            else:
                mlflow.MlflowClient().set_terminated(run_id, status)
    except Exception as error:
        log.warning("MLflow row %s could not be marked %s (%s); the next stage on this machine will mark it KILLED",
                    run_id, status, store_fault(error) or error)


def log_dataset(splits, facts: dict) -> None:
    """Log both splits as MLflow dataset inputs, with the data's content hash as digest."""
    import mlflow
    import mlflow.data

    for context, x, y in (("train", splits.x_train, splits.y_train), ("test", splits.x_test, splits.y_test)):
        dataset = mlflow.data.from_numpy(x, targets=y, name=f"{splits.name}-{context}", digest=facts["content_hash"])
        try:
            mlflow.log_input(dataset, context=context)
        except mlflow.exceptions.MlflowException as error:
            # MLflow looks a dataset up, then inserts it if missing: two processes logging the same
            # dataset at once (two queue workers) both insert, and the second hits the table's
            # uniqueness. Once the first has committed, the lookup finds it: one retry is enough.
            if "unique" not in str(error).lower():
                raise
            log.info("dataset %s was being recorded by another process; logging it again", dataset.name)
            mlflow.log_input(dataset, context=context)


def write_run_file(path: Path, run) -> None:
    """Store which MLflow row a stage recorded into, for the stages after it."""
    write_json(path, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})


def read_run_file(path: Path) -> str | None:
    """The row id a previous stage recorded into, or None when the file is missing."""
    path = Path(path)
    return read_json(path)["run_id"] if path.exists() else None
