"""Each configuration's summary in MLflow: a parent run holding the mean and 95% interval of every
summarised metric over the configuration's seeds, with the seeds' result rows nested under it, so
the MLflow UI shows replicates and their interval without any other tool (docs/tracking.md).

A summary run is FINISHED and carries no stages, so no reader takes it for a result
(`Row.complete`); `Row.is_summary` tells it apart. It is found again by its tag and updated in
place when seeds are added: `make compare` and the sweep call `record`.
"""

from __future__ import annotations

import time

from pipeline.tracking import experiments, names
from pipeline.tracking.rows import Configuration, Row, configurations, open_experiment, read_rows

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


def _current(summary: Row, configuration: Configuration) -> bool:
    """Whether a summary run already says what it would be written to say, its rows nested under it."""
    return (summary.name == summary_name(configuration)
            and summary.tags.get(names.SEEDS_TAG) == ",".join(map(str, configuration.seeds))
            and summary.metrics == summary_metrics(configuration)
            and all(row.tags.get(names.PARENT_TAG) == summary.run_id for row in configuration.rows))


def record(experiment: str, configurations: list[Configuration], rows: list[Row]) -> dict[str, str]:
    """Create or update the summary run of each configuration in `experiment` and nest its rows
    under it; `rows` are the experiment's rows as read (to find the existing summaries). Returns
    each configuration's summary run id."""
    from mlflow.entities import Metric, Param, RunTag

    client, experiment_id = open_experiment(experiment)
    experiments.ensure_experiment(experiment)  # an experiment made by older code gets the training kind (names.py)
    existing: dict[str, Row] = {}
    for row in sorted((row for row in rows if row.is_summary), key=lambda r: (r.start_time, r.run_id)):
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
            run = client.create_run(experiment_id, run_name=summary_name(configuration),
                                    tags={names.SUMMARY_TAG: configuration.id,
                                          names.CONFIGURATION_TAG: configuration.id})
            run_id = run.info.run_id
            params = [Param(key, value) for key, value in configuration.params.items()]  # fixed for good
            for start in range(0, len(params), 100):  # MLflow's params per batch
                client.log_batch(run_id, params=params[start : start + 100])
            client.set_terminated(run_id)
        metrics = [Metric(key, value, now, 0) for key, value in summary_metrics(configuration).items()]
        for start in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + BATCH])
        client.log_batch(run_id, tags=[RunTag(names.RUN_NAME_TAG, summary_name(configuration)),
                                       RunTag(names.SEEDS_TAG, ",".join(map(str, configuration.seeds)))])
        for row in configuration.rows:
            if row.tags.get(names.PARENT_TAG) != run_id:
                client.set_tag(row.run_id, names.PARENT_TAG, run_id)
        ids[configuration.id] = run_id
    replaced(client, rows, ids, configurations)
    return ids


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
