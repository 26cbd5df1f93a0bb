"""`python -m pipeline.tools.compare` (`make compare`): the recorded results of the dataset's MLflow
experiment, one line per configuration (its seeds' mean ± the half-width of the 95% t-interval, and
n), printed as a table and written as CSV, so comparing runs does not need the UI. It also records
each configuration's summary run in MLflow, with its seeds nested under it (pipeline.tracking.summaries).

`--runs` lists the result rows themselves, one line per seed; `--all` adds incomplete and failed
rows, with their status. A result row is a complete one (pipeline.tracking.rows.Row.complete).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline.core.errors import TrackingError
from pipeline.core.io import check_output
from pipeline.tracking import names, store, summaries
from pipeline.tracking.rows import Row, configurations, left_out, read_rows

log = logging.getLogger(__name__)

DEFAULT_CSV = Path("outputs/comparison.csv")

# The table's columns, each read off a row.
COLUMNS = {
    "run": lambda row: row.name,
    "latent_dim": lambda row: row.params.get(names.LATENT_DIM),
    "beta": lambda row: row.params.get(names.BETA),
    "seed": lambda row: row.params.get(names.SEED),
    **{column: (lambda row, key=key: row.metrics.get(key)) for column, key in names.HEADLINE_METRICS.items()},
    "dvc_exp": lambda row: row.tags.get(names.EXP_NAME_TAG),
    "commit": lambda row: row.tags.get(names.COMMIT_TAG, "")[:8],
    "status": lambda row: row.status,
    "stages": lambda row: row.tags.get(names.STAGES_TAG),
    "configuration": lambda row: row.configuration,
    "run_id": lambda row: row.run_id,
}
NUMERIC = ["latent_dim", "beta", "seed", *names.HEADLINE_METRICS]


def comparison(rows: list[Row], include_incomplete: bool = False) -> pd.DataFrame:
    """The comparison table: one line per complete row (every row with `include_incomplete`),
    sorted by latent_dim, then start time. Metrics a row lacks (no scratch GAN, say) are empty."""
    shown = [row for row in sorted(rows, key=lambda row: row.start_time)
             if not row.is_summary and (include_incomplete or row.complete)]
    table = pd.DataFrame([{name: read(row) for name, read in COLUMNS.items()} for row in shown],
                         columns=list(COLUMNS))
    table[NUMERIC] = table[NUMERIC].apply(pd.to_numeric, errors="coerce")
    return table.sort_values("latent_dim", kind="stable").reset_index(drop=True)


def aggregate(rows: list[Row]) -> pd.DataFrame:
    """One line per configuration (pipeline.tracking.rows.configurations): n, its seeds, and for
    each headline metric the mean over the seeds with its 95% t-interval, as the columns `<metric>`,
    `<metric>_low`, `<metric>_high` (empty with one seed) and `<metric>_n`."""
    lines = []
    for configuration in configurations(rows):
        line = {"configuration": configuration.id, "latent_dim": configuration.latent_dim,
                "beta": configuration.beta, "n": configuration.n,
                "seeds": " ".join(map(str, configuration.seeds))}
        for column, key in names.HEADLINE_METRICS.items():
            interval = configuration.interval(key)
            line |= {column: None, f"{column}_low": None, f"{column}_high": None, f"{column}_n": 0}
            if interval is not None:
                line |= {column: interval.mean, f"{column}_n": interval.n}
                if interval.has_interval:
                    line |= {f"{column}_low": interval.low, f"{column}_high": interval.high}
        line["left_out"] = "; ".join(left_out([configuration], names.HEADLINE_METRICS.values()))
        lines.append(line)
    columns = ["configuration", "latent_dim", "beta", "n", "seeds"]
    columns += [f"{c}{suffix}" for c in names.HEADLINE_METRICS for suffix in ("", "_low", "_high", "_n")]
    columns += ["left_out"]
    table = pd.DataFrame(lines, columns=columns)
    numeric = [c for c in columns if c not in ("configuration", "seeds", "left_out")]
    table[numeric] = table[numeric].apply(pd.to_numeric, errors="coerce")
    return table


# What the printed tables show; the CSVs have every column.
PRINTED = ["run", "latent_dim", "beta", "seed", "recon_mse", "kl", "neg_elbo", "active_units", "fid_real",
           "fid_vae", "fid_decoder", "fid_scratch", "commit"]
PRINTED_AGGREGATE = ["recon_mse", "kl", "neg_elbo", "active_units", "fid_real", "fid_vae", "fid_decoder",
                     "fid_scratch"]


def format_table(table: pd.DataFrame, include_incomplete: bool = False) -> str:
    """The table as text, with readable precision and the columns in PRINTED (and status)."""
    shown = PRINTED + (["status", "stages"] if include_incomplete else [])
    return table[shown].to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.5g}")


def two_digits(value: float) -> str:
    """An interval's half-width as tables and the report show it: two significant digits, no
    exponent from 1 up (150, 33, 0.00059): its own uncertainty makes more digits noise."""
    return f"{float(f'{value:.2g}'):g}"


def mean_and_half_width(mean: float, low: float, high: float) -> str:
    """`446.3 ± 95`: the mean, and the interval's half-width (none with one seed)."""
    if pd.isna(mean):
        return "-"
    return f"{mean:.4g}" if pd.isna(low) else f"{mean:.4g} ± {two_digits((high - low) / 2)}"


AGGREGATE_NOTE = "mean ± half-width of the 95% t-interval over n seeds (no interval with n = 1)"


def readable_aggregate(table: pd.DataFrame, columns: list[str] = PRINTED_AGGREGATE) -> pd.DataFrame:
    """`aggregate`'s table as people read it: each metric in `columns` as `mean ± half-width`."""
    shown = table[["configuration", "latent_dim", "beta", "n", "seeds"]].copy()
    for column in columns:
        shown[column] = [mean_and_half_width(*values) for values in
                         zip(table[column], table[f"{column}_low"], table[f"{column}_high"])]
    return shown


def format_aggregate(table: pd.DataFrame) -> str:
    """The configurations as text: each metric as mean ± half-width of its 95% interval; n seeds;
    then each value left out of a mean (NaN or infinite), named."""
    shown = readable_aggregate(table).drop(columns="seeds")
    text = shown.to_string(index=False, float_format=lambda v: f"{v:g}")
    text += f"\n{AGGREGATE_NOTE}; `--runs` lists each seed's row"
    left = [entry for entries in table["left_out"] if entries for entry in entries.split("; ")]
    if left:
        text += (f"\nleft out of the means, as NaN or infinite ({len(left)}; the interval of that metric counts "
                 f"the other seeds, its n in the CSV's <metric>_n): " + "; ".join(left))
    return text


def main(argv: list[str] | None = None) -> None:
    from pipeline.core.config import load_config

    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="MLflow experiment (default: the one params.yaml records into)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"where to write the table (default {DEFAULT_CSV})")
    parser.add_argument("--runs", action="store_true", help="one line per result row (each seed), not per configuration")
    parser.add_argument("--all", action="store_true", help="with --runs: also list incomplete and failed rows")
    args = parser.parse_args(argv)
    if args.all and not args.runs:
        parser.error("--all lists rows: use it with --runs")

    check_output(args.csv)
    experiment = args.experiment or load_config().experiment_name
    store.check_store()
    rows = read_rows(experiment)
    if not any(row.complete for row in rows) and not args.all:
        raise TrackingError(f"experiment {experiment!r} holds no complete result yet (see --runs --all)")
    if args.runs:
        table = comparison(rows, include_incomplete=args.all)
        print(format_table(table, args.all))
    else:
        table = aggregate(rows)
        print(format_aggregate(table))
        summaries.record(experiment, configurations(rows), rows)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    log.info("%d %s of experiment %r written to %s", len(table), "rows" if args.runs else "configurations",
             experiment, args.csv)


if __name__ == "__main__":
    from pipeline.stages.cli import run_command

    run_command("compare", main)
