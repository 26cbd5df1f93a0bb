"""`python -m pipeline.tools.compare` (`make compare`): every recorded result of the dataset's MLflow
experiment, one line per row, printed as a table and written as CSV, so comparing runs does not
need the UI.

A result row is a complete one (see pipeline.tracking.rows.Row.complete); `--all` also lists
incomplete and failed rows, with their status.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline.core.errors import TrackingError
from pipeline.tracking import names, store
from pipeline.tracking.rows import Row, read_rows

log = logging.getLogger(__name__)

DEFAULT_CSV = Path("outputs/comparison.csv")

# The table's columns, each read off a row.
COLUMNS = {
    "run": lambda row: row.name,
    "latent_dim": lambda row: row.params.get(names.LATENT_DIM),
    "beta": lambda row: row.params.get(names.BETA),
    **{column: (lambda row, key=key: row.metrics.get(key)) for column, key in names.HEADLINE_METRICS.items()},
    "dvc_exp": lambda row: row.tags.get(names.EXP_NAME_TAG),
    "commit": lambda row: row.tags.get(names.COMMIT_TAG, "")[:8],
    "status": lambda row: row.status,
    "stages": lambda row: row.tags.get(names.STAGES_TAG),
    "run_id": lambda row: row.run_id,
}
NUMERIC = ["latent_dim", "beta", *names.HEADLINE_METRICS]


def comparison(rows: list[Row], include_incomplete: bool = False) -> pd.DataFrame:
    """The comparison table: one line per complete row (every row with `include_incomplete`),
    sorted by latent_dim, then start time. Metrics a row lacks (no scratch GAN, say) are empty."""
    shown = [row for row in sorted(rows, key=lambda row: row.start_time) if include_incomplete or row.complete]
    table = pd.DataFrame([{name: read(row) for name, read in COLUMNS.items()} for row in shown],
                         columns=list(COLUMNS))
    table[NUMERIC] = table[NUMERIC].apply(pd.to_numeric, errors="coerce")
    return table.sort_values("latent_dim", kind="stable").reset_index(drop=True)


def load_table(experiment: str, include_incomplete: bool = False) -> pd.DataFrame:
    """The comparison table of `experiment` in the store (a missing store or experiment raises)."""
    return comparison(read_rows(experiment), include_incomplete)


# What the printed table shows; the CSV has every column.
PRINTED = ["run", "latent_dim", "beta", "recon_mse", "kl", "neg_elbo", "active_units", "fid_real", "fid_vae_prior",
           "fid_gan_decoder", "fid_gan_scratch", "commit"]


def format_table(table: pd.DataFrame, include_incomplete: bool = False) -> str:
    """The table as text, with readable precision and the columns in PRINTED (and status)."""
    shown = PRINTED + (["status", "stages"] if include_incomplete else [])
    return table[shown].to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.5g}")


def main(argv: list[str] | None = None) -> None:
    from pipeline.core.config import load_config

    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="MLflow experiment (default: the one params.yaml records into)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"where to write the table (default {DEFAULT_CSV})")
    parser.add_argument("--all", action="store_true", help="also list incomplete and failed rows")
    args = parser.parse_args(argv)

    experiment = args.experiment or load_config().experiment_name
    store.check_server()
    table = load_table(experiment, include_incomplete=args.all)
    if table.empty:
        raise TrackingError(f"experiment {experiment!r} holds no complete result yet (see --all)")
    print(format_table(table, args.all))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    log.info("%d rows of experiment %r written to %s", len(table), experiment, args.csv)


if __name__ == "__main__":
    from pipeline.stages.cli import run_command

    run_command("compare", main)
