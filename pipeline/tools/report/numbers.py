"""Every number the report's text uses, formatted once and kept with where it came from, and the
MLflow reads behind them (metric histories and artifacts)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.stats import Interval, difference
from pipeline.tools.compare import two_digits
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


def rises(values: list[float]) -> int:
    """How many times a sequence went up from one value to the next (a curve's setbacks)."""
    return sum(later > earlier for earlier, later in zip(values, values[1:]))


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
    the runs listed), ratio (of two metrics), rises (of a metric's history, see `rises`), mean and
    half_width (of a metric over the runs listed, pipeline.core.stats.mean_interval), difference
    (`bound` mean, low or high of pipeline.core.stats.difference between two sets of runs by seed).
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

    def ratio(self, run: Row, key: str, over: Row, over_key: str) -> str:
        value = run.metrics[key] / over.metrics[over_key]
        return self._add(readable(value), value, kind="ratio", run_id=run.run_id, key=key,
                         over_run_id=over.run_id, over_key=over_key)

    def rises(self, run: Row, key: str) -> str:
        value = rises([v for _, v in self.source.history(run, key)])
        return self._add(str(value), value, kind="rises", run_id=run.run_id, key=key)

    def mean(self, configuration: Configuration, key: str, fmt: str | None = None) -> str:
        """`446.3 ± 95.12`: the mean of `key` over the configuration's seeds and the half-width of its
        95% interval; the mean alone with one seed."""
        interval = configuration.interval(key)
        if interval is None:
            raise ReportError(f"no run of configuration {configuration.id} has metric {key}")
        run_ids = [r.run_id for r in configuration.rows if key in r.metrics]
        text = self._add(readable(interval.mean, fmt), interval.mean, kind="mean", run_ids=run_ids, key=key)
        if not interval.has_interval:
            return text
        half = interval.half_width
        return text + " ± " + self._add(two_digits(half), half, kind="half_width", run_ids=run_ids, key=key)

    def difference(self, a: Configuration, a_key: str, b: Configuration, b_key: str,
                   fmt: str | None = None) -> tuple[Interval, str]:
        """mean(a's `a_key`) - mean(b's `b_key`) with its 95% interval, paired by seed where the two
        share seeds (pipeline.core.stats.difference); and its text, `110 (95% CI 60 to 160, paired
        over 3 seeds)`."""
        a_runs = {r.seed: r for r in a.rows if a_key in r.metrics}
        b_runs = {r.seed: r for r in b.rows if b_key in r.metrics}
        interval = difference({s: r.metrics[a_key] for s, r in a_runs.items()},
                              {s: r.metrics[b_key] for s, r in b_runs.items()})
        where = {"a": {str(s): r.run_id for s, r in a_runs.items()}, "a_key": a_key,
                 "b": {str(s): r.run_id for s, r in b_runs.items()}, "b_key": b_key}

        def bound(name: str, value: float) -> str:
            return self._add(readable(value, fmt), value, kind="difference", bound=name, **where)

        text = bound("mean", interval.mean)
        if not interval.has_interval:
            return interval, text
        shared = [a_runs[s] for s in sorted(set(a_runs) & set(b_runs))]
        how = (f"paired over {self.count(shared)} seeds" if interval.paired else
               f"unpaired, {self.count(list(a_runs.values()))} and {self.count(list(b_runs.values()))} seeds")
        return interval, f"{text} (95% CI {bound('low', interval.low)} to {bound('high', interval.high)}, {how})"

    def steps(self, run: Row, key: str) -> int:
        """The last step of a metric's history (an epoch count), to look values up at; not cited itself."""
        return self.source.history(run, key)[-1][0]
