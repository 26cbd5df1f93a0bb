"""Every number the report's text uses, formatted once and kept with where it came from, and the
MLflow reads behind them (metric histories and artifacts)."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

from pipeline.core.stats import Interval, difference, mean_interval, prediction_interval
from pipeline.tools.compare import two_digits
from pipeline.tools.report.claims import Cell, Claim
from pipeline.tools.report.runs import ReportError
from pipeline.tracking.rows import Configuration, Row


class Source:
    """Reads what the report needs from MLflow beyond a row's latest metrics: metric histories and
    artifacts (downloaded once into `workdir`)."""

    def __init__(self, client, workdir: Path):
        self.client = client
        self.workdir = workdir
        self._histories: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def history(self, run: Row, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of `key`, by step."""
        if (run.run_id, key) not in self._histories:
            points = self.client.get_metric_history(run.run_id, key)
            if not points:
                raise ReportError(f"run {run.name} ({run.run_id}) has no history of metric {key}")
            self._histories[run.run_id, key] = sorted((p.step, p.value) for p in points)
        return self._histories[run.run_id, key]

    def artifact(self, run: Row, path: str) -> Path:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        local = self.workdir / run.run_id / path
        if not local.exists():
            try:
                local.parent.mkdir(parents=True, exist_ok=True)  # a file lands in dst_path by its own name
                self.client.download_artifacts(run.run_id, path, str(local.parent))
            except Exception as error:  # MLflow raises its own and OS errors for a missing artifact
                raise ReportError(f"run {run.name} ({run.run_id}) has no artifact {path}: {error}") from None
        return local


# ---------------------------------------------------------------------------------------------
# Numbers and where they come from


def readable(value: float, fmt: str | None = None) -> str:
    """`value` as the text shows it: with `fmt`, else four significant digits, and no exponent
    from 1000 up (119729, not 1.197e+05)."""
    if fmt is None:
        fmt = ".0f" if abs(value) >= 1000 else ".4g"
    return format(value, fmt)


class Numbers:
    """Formats each number the text uses and records its source, so it can be checked.

    Every method returns the text to put in the report. An entry's `kind` says how to recompute
    it: metric (a row's latest value, or the value at `step` of its history), param, count (of
    the runs listed), mean and half_width (of a metric over the runs listed,
    pipeline.core.stats.mean_interval), median and sd (their median and standard deviation), prediction (`bound` low or
    high of pipeline.core.stats.prediction_interval for a rerun of as many seeds), difference (`bound` mean, low or high of
    pipeline.core.stats.difference between two sets of runs by seed, or one set and a fixed value
    `b_value`), change (the mean over the runs listed of a history's value at `to_step` minus at
    `from_step`, with `bound` as for difference), p_holm (the Holm-adjusted p-value of cell `index`
    of a claim's `family`, each member as a difference entry gives it), pairing (the median over a
    family's members of the paired interval's half-width over Welch's). Entries over several runs
    carry each seed's value too (`values`, `a_values`, `b_values`), so that every interval can be
    recomputed from the file alone.
    """

    def __init__(self, source: Source):
        self.source = source
        self.entries: list[dict] = []

    def _add(self, text: str, value, **where) -> str:
        self.entries.append({"text": text, "value": value, **where})
        return text

    def value(self, run: Row, key: str, step: int | None = None) -> float:
        if step is None:
            return run.metrics[key]
        return dict(self.source.history(run, key))[step]

    def metric(self, run: Row, key: str, fmt: str | None = None, step: int | None = None) -> str:
        value = self.value(run, key, step)
        return self._add(readable(value, fmt), value, kind="metric", run_id=run.run_id, key=key, step=step)

    def param(self, run: Row, key: str) -> str:
        return self._add(run.params[key], run.params[key], kind="param", run_id=run.run_id, key=key)

    def count(self, runs: list[Row]) -> str:
        return self._add(str(len(runs)), len(runs), kind="count", run_ids=[r.run_id for r in runs])

    def mean(self, configuration: Configuration, key: str, fmt: str | None = None) -> str:
        """`446.3 ± 95.12`: the mean of `key` over the configuration's seeds and the half-width of its
        95% interval; the mean alone with one seed."""
        interval = configuration.interval(key)
        if interval is None:
            raise ReportError(f"no run of configuration {configuration.id} has metric {key}")
        values = {str(s): v for s, v in configuration.values(key).items()}
        run_ids = [r.run_id for r in configuration.rows if str(r.seed) in values]
        text = self._add(readable(interval.mean, fmt), interval.mean, kind="mean", run_ids=run_ids, key=key,
                         values=values)
        if not interval.has_interval:
            return text
        half = interval.half_width
        return text + " ± " + self._add(two_digits(half), half, kind="half_width", run_ids=run_ids, key=key,
                                        values=values)

    def median(self, configuration: Configuration, key: str, fmt: str | None = None) -> str:
        """The median of `key` over the configuration's seeds."""
        values = configuration.values(key)
        value = statistics.median(values.values())
        return self._add(readable(value, fmt), value, kind="median", key=key,
                         run_ids=[r.run_id for r in configuration.rows if r.seed in values],
                         values={str(s): v for s, v in values.items()})

    def sd(self, configuration: Configuration, key: str) -> str:
        """The standard deviation of `key` over the configuration's seeds (divisor n - 1)."""
        values = configuration.values(key)
        value = statistics.stdev(values.values()) if len(values) > 1 else math.nan
        return self._add(two_digits(value), value, kind="sd", key=key,
                         run_ids=[r.run_id for r in configuration.rows if r.seed in values],
                         values={str(s): v for s, v in values.items()})

    def prediction(self, configuration: Configuration, key: str, fmt: str | None = None) -> str | None:
        """`a to b`: where the mean of a rerun with as many new seeds falls, 95% of the time
        (stats.prediction_interval); None with one seed."""
        values = configuration.values(key)
        interval = prediction_interval(list(values.values()))
        if not interval.has_interval:
            return None
        where = {"key": key, "run_ids": [r.run_id for r in configuration.rows if r.seed in values],
                 "values": {str(s): v for s, v in values.items()}}
        return (self._add(readable(interval.low, fmt), interval.low, kind="prediction", bound="low", **where) + " to "
                + self._add(readable(interval.high, fmt), interval.high, kind="prediction", bound="high", **where))

    def difference(self, a: Configuration, a_key: str, b: Configuration | None, b_key: str | None = None,
                   fmt: str | None = None, against: float | None = None, pair: bool = True) -> tuple[Interval, str]:
        """mean(a's `a_key`) - mean(b's `b_key`) (or minus the fixed value `against`) with its 95%
        interval, paired by seed where the two share seeds and `pair` (pipeline.core.stats.difference);
        and its text, `110 (95% CI 60 to 160, paired over 3 seeds)`."""
        where = cell_where(a, a_key, b, b_key, against, pair)
        interval = difference(_seed_keys(where["a_values"]), _b(where), pair=pair)

        def bound(name: str, value: float) -> str:
            return self._add(readable(value, fmt), value, kind="difference", bound=name, **where)

        text = bound("mean", interval.mean)
        if not interval.has_interval:
            return interval, text
        a_runs = [r for r in a.rows if a_key in r.metrics]
        if b is None:
            how = f"{self.count(a_runs)} seeds"
        elif interval.paired:
            how = f"paired over {self.count([r for r in a_runs if str(r.seed) in where['b']])} seeds"
        else:
            b_runs = [r for r in b.rows if (b_key or a_key) in r.metrics]
            how = f"unpaired, {self.count(a_runs)} and {self.count(b_runs)} seeds"
        return interval, f"{text} (95% CI {bound('low', interval.low)} to {bound('high', interval.high)}, {how})"

    def cell(self, claim: Claim, cell: Cell, fmt: str | None = None) -> tuple[str, str]:
        """A claim's cell: its difference with the interval (`difference`), and its Holm-adjusted
        p-value within the claim's family (`-` where there is no test)."""
        _, text = self.difference(cell.a, cell.a_key, cell.b, cell.b_key, fmt, cell.against, cell.pair)
        if math.isnan(cell.p_adjusted):
            return text, "-"
        family = [cell_where(c.a, c.a_key, c.b, c.b_key, c.against, c.pair) for c in claim.cells]
        p = self._add(format(cell.p_adjusted, ".2g"), cell.p_adjusted, kind="p_holm", family=family,
                      index=claim.cells.index(cell))
        return text, p

    def pairing(self, claim: Claim) -> str:
        """The median over the claim's cells of the paired interval's half-width over Welch's."""
        family = [cell_where(c.a, c.a_key, c.b, c.b_key, c.against) for c in claim.cells if c.b is not None]
        return self._add(format(claim.pairing, ".2g"), claim.pairing, kind="pairing", family=family)

    def change(self, configuration: Configuration, key: str, from_step: int, to_step: int,
               fmt: str | None = None) -> tuple[Interval, str]:
        """The mean over the seeds of a metric history's value at `to_step` minus at `from_step`,
        with its 95% interval: `-12 (95% CI -20 to -4, 5 seeds)`."""
        values = {str(r.seed): self.value(r, key, to_step) - self.value(r, key, from_step) for r in configuration.rows}
        interval = mean_interval(list(values.values()))
        where = {"key": key, "from_step": from_step, "to_step": to_step, "values": values,
                 "run_ids": {str(r.seed): r.run_id for r in configuration.rows}}

        def bound(name: str, value: float) -> str:
            return self._add(readable(value, fmt), value, kind="change", bound=name, **where)

        text = bound("mean", interval.mean)
        if not interval.has_interval:
            return interval, text
        return interval, (f"{text} (95% CI {bound('low', interval.low)} to {bound('high', interval.high)}, "
                          f"{self.count(list(configuration.rows))} seeds)")

    def steps(self, run: Row, key: str) -> int:
        """The last step of a metric's history (an epoch count), to look values up at; not cited itself."""
        return self.source.history(run, key)[-1][0]


def cell_where(a: Configuration, a_key: str, b: Configuration | None, b_key: str | None,
               against: float | None, pair: bool = True) -> dict:
    """What a difference entry cites: each side's runs and values by seed (or the fixed value), and
    whether shared seeds are paired."""
    where = {"a": {str(r.seed): r.run_id for r in a.rows if a_key in r.metrics}, "a_key": a_key,
             "a_values": {str(s): v for s, v in a.values(a_key).items()}, "pair": pair}
    if b is None:
        return where | {"b_value": against}
    key = b_key or a_key
    return where | {"b": {str(r.seed): r.run_id for r in b.rows if key in r.metrics}, "b_key": key,
                    "b_values": {str(s): v for s, v in b.values(key).items()}}


def _seed_keys(values: dict[str, float]) -> dict[int, float]:
    return {int(s): v for s, v in values.items()}


def _b(where: dict) -> dict[int, float] | float:
    return where["b_value"] if "b_value" in where else _seed_keys(where["b_values"])
