"""The one reader of recorded results: MLflow rows as `Row`s, whether a row is a complete result,
the Config a row was recorded with, and rows grouped into `Configuration`s (replicates that differ
only in their seed). `make compare`, the sweep, the report and the explorer all read rows through
here."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from pipeline.core.config import Config, config_from_params
from pipeline.core.errors import TrackingError
from pipeline.core.stats import Interval, mean_interval
from pipeline.tracking import names, store

log = logging.getLogger(__name__)

SEARCH_LIMIT = 50_000  # MLflow's largest page of search results


@dataclass(frozen=True)
class Row:
    """One MLflow row as recorded: params and tags as text, the latest value of each metric."""

    run_id: str
    name: str
    status: str  # FINISHED, FAILED, KILLED or RUNNING
    start_time: int  # ms since the epoch
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def from_mlflow(cls, run) -> Row:
        tags = dict(run.data.tags)
        return cls(run.info.run_id, tags.get(names.RUN_NAME_TAG, run.info.run_id), run.info.status,
                   run.info.start_time, dict(run.data.params), dict(run.data.metrics), tags)

    @property
    def stages(self) -> list[str]:
        """The stages recorded in this row, in order."""
        value = self.tags.get(names.STAGES_TAG, "")
        return value.split(",") if value else []

    @property
    def complete(self) -> bool:
        """A finished row that holds every stage that records into a result (names.RESULT_STAGES)."""
        return self.status == "FINISHED" and set(names.RESULT_STAGES) <= set(self.stages)

    @property
    def is_summary(self) -> bool:
        """A configuration's summary run (pipeline.tracking.summaries), not a result."""
        return names.SUMMARY_TAG in self.tags

    @property
    def configuration(self) -> str:
        """What this row's replicates share (names.configuration_id), computed from its params so
        that rows recorded before the tag existed group too."""
        return names.configuration_id(self.params)

    @property
    def seed(self) -> int:
        return int(self.params[names.SEED])

    @property
    def latent_dim(self) -> int:
        return int(self.params[names.LATENT_DIM])

    @property
    def beta(self) -> float:
        return float(self.params[names.BETA])

    @property
    def commit(self) -> str:
        return self.tags.get(names.COMMIT_TAG, "unknown")[:8]

    def source_run(self, stage: str) -> str:
        """The row holding `stage`'s artifacts: this one, or the one it copied that stage's records from."""
        return self.tags.get(f"{names.SOURCE_TAG}{stage}", self.run_id)

    def config(self) -> Config:
        """The Config this row was recorded with; ConfigError names a missing or malformed param."""
        return config_from_params(self.params)


def _finite(value: float) -> bool:
    """Whether a recorded metric is a finite number. MLflow's SQL stores keep an infinite value as
    the largest double (1.8e308), which reads back finite."""
    return math.isfinite(value) and abs(value) < sys.float_info.max


@dataclass(frozen=True)
class Configuration:
    """The complete rows of one configuration, one per seed (the newest where a seed was run
    twice: the same seed repeats a result, it does not replicate it), by seed."""

    id: str
    rows: tuple[Row, ...]

    @property
    def seeds(self) -> list[int]:
        return [row.seed for row in self.rows]

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def params(self) -> dict[str, str]:
        """The params every row shares (all but the seed)."""
        return {key: value for key, value in self.rows[0].params.items() if key != names.SEED}

    @property
    def latent_dim(self) -> int:
        return self.rows[0].latent_dim

    @property
    def beta(self) -> float:
        return self.rows[0].beta

    def values(self, key: str) -> dict[int, float]:
        """Metric `key` of each row that has it as a finite number, by seed (`left_out` names the
        others: a NaN or infinite value would make the mean and its interval NaN)."""
        return {row.seed: row.metrics[key] for row in self.rows if key in row.metrics and _finite(row.metrics[key])}

    def left_out(self, key: str) -> dict[int, float]:
        """The seeds whose metric `key` is NaN or infinite, with the value: left out of `values`."""
        return {row.seed: math.copysign(math.inf, value) if not math.isnan(value) else value
                for row in self.rows if key in row.metrics and not _finite(value := row.metrics[key])}

    def interval(self, key: str) -> Interval | None:
        """The mean of metric `key` over the seeds with a finite value, with its 95% t-interval
        (pipeline.core.stats); None when no row has one."""
        values = self.values(key)
        return mean_interval(list(values.values())) if values else None


def left_out(configurations: list[Configuration], keys) -> list[str]:
    """Each value left out of a mean for being NaN or infinite, as `<configuration> seed <s>:
    <metric> = nan`, configuration by configuration: what compare, the summaries and the report
    name beside the n they state."""
    return [f"{configuration.id} seed {seed}: {key} = {value}"
            for configuration in configurations for key in keys
            for seed, value in configuration.left_out(key).items()]


def replicates(rows: list[Row], key: Callable[[Row], Hashable]) -> dict[Hashable, Configuration]:
    """`rows` grouped by `key`, each group a Configuration of its rows by seed, the newest row per
    seed, named after its newest row's configuration."""
    groups: dict[Hashable, dict[int, Row]] = {}
    for row in sorted(rows, key=lambda row: row.start_time):
        groups.setdefault(key(row), {})[row.seed] = row  # newer replaces older
    return {value: Configuration(max(by_seed.values(), key=lambda row: row.start_time).configuration,
                                 tuple(by_seed[seed] for seed in sorted(by_seed)))
            for value, by_seed in groups.items()}


# The params that place a row among the others, with the Row property that reads each.
PLACING = {names.SEED: "seed", names.LATENT_DIM: "latent_dim", names.BETA: "beta"}


def unreadable(row: Row) -> str | None:
    """Why the params that place a row (PLACING) cannot be read, or None."""
    for key, attribute in PLACING.items():
        try:
            getattr(row, attribute)
        except KeyError:
            return f"no param {key}"
        except ValueError:
            return f"{key} = {row.params[key]!r}"
    return None


def readable(rows: list[Row]) -> list[Row]:
    """`rows` less those whose placing params cannot be read (written by hand or by other code),
    which are named in a warning: one such row must not stop a comparison of the rest."""
    kept, skipped = [], []
    for row in rows:
        reason = unreadable(row)
        (skipped if reason else kept).append((row, reason))
    if skipped:
        log.warning("left out %d row(s) whose params cannot be read: %s", len(skipped),
                    "; ".join(f"{row.name} ({row.run_id}): {reason}" for row, reason in skipped[:10])
                    + ("; ..." if len(skipped) > 10 else ""))
    return [row for row, _ in kept]


def configurations(rows: list[Row]) -> list[Configuration]:
    """The complete result rows grouped by configuration, sorted by latent_dim, beta, then id. A row
    without the params that place it (seed, latent_dim, vae.beta: not recorded by the stages), or
    whose params cannot be read, is left out with a warning (`readable`)."""
    results = readable([row for row in rows if row.complete and not row.is_summary])
    found = replicates(results, lambda row: row.configuration).values()
    return sorted(found, key=lambda c: (c.latent_dim, c.beta, c.id))


def open_experiment(experiment: str):
    """(client, experiment id) of `experiment` in the store. A missing local store or experiment
    is an error here, not created empty."""
    database = store.missing_local_store()
    if database is not None:
        raise TrackingError(f"there is no MLflow store at {database}: run the pipeline first (make repro)")
    _, client = store.connect()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"the MLflow store {store.shown_uri()} has no experiment {experiment!r}: "
                            "run the pipeline first, or name another with --experiment")
    return client, found.experiment_id


def read_rows(experiment: str, through_mlflow: bool = False) -> list[Row]:
    """Every row of `experiment`, oldest first (see open_experiment for a missing one). A local
    SQLite store is read with four queries of its tables (`_read_sqlite`), other stores, or
    `through_mlflow`, with MLflow's search: the same Rows, in a fraction of the time for thousands."""
    client, experiment_id = open_experiment(experiment)
    database = store.local_store(store.tracking_uri())
    if database is not None and not through_mlflow:
        rows = _read_sqlite(database, experiment_id)
    else:
        runs = client.search_runs([experiment_id], max_results=SEARCH_LIMIT, order_by=["attributes.start_time ASC"])
        rows = [Row.from_mlflow(run) for run in runs]
    return sorted(rows, key=lambda row: (row.start_time, row.run_id))


def _read_sqlite(database, experiment_id: str) -> list[Row]:
    """The experiment's rows (not deleted ones) read from MLflow's tables in a SQLite store: runs,
    params, tags and latest_metrics, as MLflow's own search reads them (a NaN is stored as 0 with
    `is_nan`). MLflow's search builds an object per value: 2,000 rows took it seconds
    (benchmarks/load.py). tests/test_tracking.py checks that both give the same Rows."""
    import contextlib

    rows_of = ("SELECT t.run_uuid, {columns} FROM {table} t JOIN runs r ON r.run_uuid = t.run_uuid "
               "WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active'")
    key = (int(experiment_id),)
    with contextlib.closing(store.read_only(database)) as db:
        runs = db.execute("SELECT run_uuid, status, start_time FROM runs WHERE experiment_id = ? AND "
                          "lifecycle_stage = 'active'", key).fetchall()
        found: dict[str, dict[str, dict]] = {run_id: {"params": {}, "tags": {}, "metrics": {}} for run_id, _, _ in runs}
        for run_id, name, value in db.execute(rows_of.format(columns="t.key, t.value", table="params"), key):
            found[run_id]["params"][name] = value
        for run_id, name, value in db.execute(rows_of.format(columns="t.key, t.value", table="tags"), key):
            found[run_id]["tags"][name] = value
        for run_id, name, value, is_nan in db.execute(
                rows_of.format(columns="t.key, t.value, t.is_nan", table="latest_metrics"), key):
            found[run_id]["metrics"][name] = float("nan") if is_nan else float(value)
    return [Row(run_id, found[run_id]["tags"].get(names.RUN_NAME_TAG, run_id), status, start_time,
                found[run_id]["params"], found[run_id]["metrics"], found[run_id]["tags"])
            for run_id, status, start_time in runs]


def read_row(run_id: str) -> Row:
    """One row by its id."""
    _, client = store.connect()
    return Row.from_mlflow(client.get_run(run_id))
