"""Each configuration's summary in MLflow: a parent run holding the mean and 95% interval of every
summarised metric over the configuration's seeds, with the seeds' result rows nested under it, so
the MLflow UI shows replicates and their interval without any other tool (docs/tracking.md).

A summary run is FINISHED and carries no stages, so no reader takes it for a result
(`Row.complete`); `Row.is_summary` tells it apart. It is found again by its tag and updated in
place when seeds are added: `make compare` and the sweep call `record`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

from pipeline.core.io import process_alive
from pipeline.tracking import experiments, names
from pipeline.tracking.rows import Configuration, Row, configurations, left_out, open_experiment, read_rows

LOW, HIGH, HALF, COUNT = names.CI_LOW, names.CI_HIGH, names.CI_HALF_WIDTH, names.CI_COUNT
BATCH = 1000  # MLflow's largest log_batch


def summary_name(configuration: Configuration) -> str:
    seeds = configuration.n
    return f"{configuration.id} ({seeds} seed{'s' if seeds != 1 else ''})"


def summary_metrics(configuration: Configuration) -> dict[str, float]:
    """What a summary run logs: under each metric's own key the mean over the seeds (so the UI
    shows it in the same column as the seeds' values), and `<key>/ci95_low`, `<key>/ci95_high`,
    `<key>/ci95_half_width`, `<key>/n`; with one seed, the mean and n only."""
    logged: dict[str, float] = {}
    for key in names.SUMMARY_METRICS:
        interval = configuration.interval(key)
        if interval is None:
            continue
        logged[key] = interval.mean
        logged[f"{key}/{COUNT}"] = interval.n
        if interval.has_interval:
            logged[f"{key}/{LOW}"], logged[f"{key}/{HIGH}"] = interval.low, interval.high
            logged[f"{key}/{HALF}"] = interval.half_width
    return logged


def summary_tags(configuration: Configuration) -> dict[str, str]:
    """A summary run's name, its rows' seeds and the values left out of its means (NaN or
    infinite, each named; `<key>/n` counts the others)."""
    return {names.RUN_NAME_TAG: summary_name(configuration),
            names.SEEDS_TAG: ",".join(map(str, configuration.seeds)),
            names.LEFT_OUT_TAG: "; ".join(left_out([configuration], names.SUMMARY_METRICS))[:5000] or "none"}


def _current(summary: Row, configuration: Configuration) -> bool:
    """Whether a summary run already says what it would be written to say, its rows nested under it."""
    return (all(summary.tags.get(key) == value for key, value in summary_tags(configuration).items())
            and summary.metrics == summary_metrics(configuration)
            and all(row.tags.get(names.PARENT_TAG) == summary.run_id for row in configuration.rows))


def record(experiment: str, configurations: list[Configuration], rows: list[Row]) -> dict[str, str]:
    """Create or update the summary run of each configuration in `experiment` and nest its rows
    under it; `rows` are the experiment's rows as read (to find the existing summaries). Returns
    each configuration's summary run id."""
    from mlflow.entities import Metric, RunTag

    client, experiment_id = open_experiment(experiment)
    experiments.ensure_experiment(experiment)  # an experiment made by older code gets the training kind (names.py)
    existing: dict[str, Row] = {}
    for row in sorted((row for row in rows if row.is_summary), key=lambda r: (r.start_time, r.run_id)):
        if abandoned(row):
            client.delete_run(row.run_id)
            continue
        if row.tags[names.SUMMARY_TAG] in existing:
            # Two runs of one configuration finishing at once (a sweep's experiments split by
            # --seeds-per-task) can each make its summary: the oldest is kept, the others deleted.
            if any(c.id == row.tags[names.SUMMARY_TAG] for c in configurations):
                client.delete_run(row.run_id)
            continue
        existing[row.tags[names.SUMMARY_TAG]] = row
    now = int(time.time() * 1000)
    ids = {}
    for configuration in configurations:
        summary = existing.get(configuration.id)
        run_id = summary.run_id if summary is not None else None
        if summary is not None and _current(summary, configuration):
            ids[configuration.id] = run_id  # nothing to write: thousands of rows stay quick to compare
            continue
        if run_id is None:
            run_id = _create(client, experiment_id, configuration)
        metrics = [Metric(key, value, now, 0) for key, value in summary_metrics(configuration).items()]
        for start in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + BATCH])
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in summary_tags(configuration).items()])
        for row in configuration.rows:
            if row.tags.get(names.PARENT_TAG) != run_id:
                client.set_tag(row.run_id, names.PARENT_TAG, run_id)
        ids[configuration.id] = run_id
    replaced(client, rows, ids, configurations)
    return ids


def abandoned(summary: Row) -> bool:
    """A summary run that a writer left unfinished: not FINISHED (closed KILLED by a stage's
    `close_abandoned`, say), or RUNNING with a writer on this machine that is gone. Such a run may
    lack its params: it is deleted and written anew. One RUNNING in a live process, or on another
    machine, is being written now."""
    if summary.status == "FINISHED":
        return False
    pid = summary.tags.get(names.PID_TAG, "")
    return summary.status != "RUNNING" or (summary.tags.get(names.HOST_TAG) == socket.gethostname()
                                           and pid.isdigit() and not process_alive(int(pid)))


def _create(client, experiment_id: str, configuration: Configuration) -> str:
    """A new summary run of `configuration`, FINISHED with its params, tagged with this host and
    process so that a run this process could not finish (killed outright) is deleted by the next
    `record` (`abandoned`); stopped otherwise (Ctrl-C, SIGTERM, a store fault), it deletes the run
    itself. When another process made one for the same configuration at the same moment (two
    `compare` at once), the older run is kept and this one deleted: its id is returned."""
    from mlflow.entities import Param

    run = client.create_run(experiment_id, run_name=summary_name(configuration),
                            tags={names.SUMMARY_TAG: configuration.id, names.CONFIGURATION_TAG: configuration.id,
                                  names.HOST_TAG: socket.gethostname(), names.PID_TAG: str(os.getpid())})
    run_id = run.info.run_id
    try:
        params = [Param(key, value) for key, value in configuration.params.items()]  # fixed for good
        for start in range(0, len(params), 100):  # MLflow's params per batch
            client.log_batch(run_id, params=params[start : start + 100])
        client.set_terminated(run_id)
        same = [Row.from_mlflow(r) for r in client.search_runs(
            [experiment_id], filter_string=f"tags.`{names.SUMMARY_TAG}` = '{configuration.id}'")]
        kept = min((r for r in same if r.run_id == run_id or not abandoned(r)),
                   key=lambda r: (r.start_time, r.run_id), default=None)
        oldest = kept.run_id if kept is not None else run_id
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_run(run_id)
        raise
    if oldest != run_id:
        client.delete_run(run_id)
    return oldest


def replaced(client, rows: list[Row], ids: dict[str, str], configurations: list[Configuration]) -> None:
    """Take out from under each summary run the rows that a newer row of the same seed replaced:
    a seed run again has one child, its newest row; the older one stays a row of its own."""
    current = {row.run_id for configuration in configurations for row in configuration.rows}
    summaries = set(ids.values())
    for row in rows:
        if row.tags.get(names.PARENT_TAG) in summaries and row.run_id not in current and not row.is_summary:
            client.delete_tag(row.run_id, names.PARENT_TAG)


def record_configuration(experiment: str, configuration_id: str) -> str | None:
    """Create or update the summary run of one configuration from `experiment`'s rows as they are
    recorded now (every complete row of it, from any DVC experiment or machine); its id, or None
    when the configuration has no complete row."""
    rows = read_rows(experiment)
    found = [c for c in configurations(rows) if c.id == configuration_id]
    return record(experiment, found, rows).get(configuration_id)


def record_configuration_or_warn(experiment: str, configuration_id: str) -> str | None:
    """`record_configuration`, with a fault of the store (or of this code) logged as a warning
    naming `make compare`, which rebuilds every summary from the rows: the rows, already recorded,
    are the result; the summary is a view of them. Ctrl-C and SIGTERM still stop the stage."""
    import logging

    try:
        return record_configuration(experiment, configuration_id)
    except Exception as error:  # noqa: BLE001 - see the docstring
        logging.getLogger(__name__).warning("the summary run of %s could not be updated (%s: %s); `make compare` "
                                            "brings it up to date", configuration_id, type(error).__name__,
                                            str(error).splitlines()[0][:200] if str(error) else "")
        return None
