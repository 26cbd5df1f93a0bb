"""`python -m pipeline.compare`: every recorded result of the dataset's MLflow experiment, one line
per row, printed as a table and written as CSV, so comparing runs does not need the UI.

A result row is one that holds all three result stages (VAE, GAN, evaluation) and finished;
`--all` also lists incomplete and failed rows, with their status.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline import tracking
from pipeline.errors import TrackingError

log = logging.getLogger(__name__)

DEFAULT_CSV = Path("outputs/comparison.csv")
COMPLETE = "train_vae,train_gan,evaluate"

# Table column: column of `mlflow.search_runs`' frame. Keys as the stages log them.
COLUMNS = {
    "run": "tags.mlflow.runName",
    "latent_dim": "params.latent_dim",
    "beta": "params.vae.beta",
    "recon_mse": "metrics.eval/vae/recon_mse_per_pixel",
    "kl": "metrics.eval/vae/kl",
    "neg_elbo": "metrics.eval/vae/neg_elbo",
    "iwae_nll": "metrics.eval/vae/iwae_nll",
    "active_units": "metrics.eval/vae/active_units",
    "fid_real": "metrics.eval/scores/real_train/fid",
    "fid_vae_recon": "metrics.eval/scores/vae_reconstructions/fid",
    "fid_vae_prior": "metrics.eval/scores/vae_prior/fid",
    "fid_gan_decoder": "metrics.eval/scores/gan_decoder/fid",
    "fid_gan_scratch": "metrics.eval/scores/gan_scratch/fid",
    "dvc_exp": "tags.dvc.exp_name",
    "commit": "tags.git.commit",
    "status": "status",
    "stages": "tags.pipeline.stages",
    "run_id": "run_id",
}
NUMERIC = ["latent_dim", "beta", "recon_mse", "kl", "neg_elbo", "iwae_nll", "active_units",
           "fid_real", "fid_vae_recon", "fid_vae_prior", "fid_gan_decoder", "fid_gan_scratch"]


def comparison(runs: pd.DataFrame, include_incomplete: bool = False) -> pd.DataFrame:
    """The comparison table from `mlflow.search_runs`' frame: one line per result row, sorted by
    latent_dim, then start time. Metrics a row lacks (no scratch GAN, say) are empty."""
    if runs.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    runs = runs.sort_values("start_time")
    table = pd.DataFrame({name: runs[column] if column in runs else pd.NA for name, column in COLUMNS.items()})
    table[NUMERIC] = table[NUMERIC].apply(pd.to_numeric, errors="coerce")
    table["commit"] = table["commit"].str[:8]
    if not include_incomplete:
        table = table[(table["status"] == "FINISHED") & (table["stages"] == COMPLETE)]
    return table.sort_values("latent_dim", kind="stable").reset_index(drop=True)


def open_experiment(experiment: str):
    """(client, experiment id) of `experiment` in the store (side effect: connects to MLflow). A
    missing local store or experiment is an error here, not created empty."""
    database = tracking.missing_local_store()
    if database is not None:
        raise TrackingError(f"there is no MLflow store at {database}: run the pipeline first (make repro)")
    _, client = tracking.connect()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"the MLflow store {tracking.shown_uri()} has no experiment {experiment!r}: "
                            "run the pipeline first, or name another with --experiment")
    return client, found.experiment_id


def load_runs(experiment: str) -> pd.DataFrame:
    """All rows of `experiment` in the store, as `mlflow.search_runs`' frame (see open_experiment)."""
    import mlflow

    _, experiment_id = open_experiment(experiment)
    return mlflow.search_runs(experiment_ids=[experiment_id], max_results=50_000)


# What the printed table shows; the CSV has every column.
PRINTED = ["run", "latent_dim", "beta", "recon_mse", "kl", "neg_elbo", "active_units", "fid_real", "fid_vae_prior",
           "fid_gan_decoder", "fid_gan_scratch", "commit"]


def format_table(table: pd.DataFrame, include_incomplete: bool = False) -> str:
    """The table as text, with readable precision and the columns in PRINTED (and status)."""
    shown = PRINTED + (["status", "stages"] if include_incomplete else [])
    return table[shown].to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.5g}")


def main(argv: list[str] | None = None) -> None:
    from pipeline.config import load_config

    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="MLflow experiment (default: the one params.yaml records into)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"where to write the table (default {DEFAULT_CSV})")
    parser.add_argument("--all", action="store_true", help="also list incomplete and failed rows")
    args = parser.parse_args(argv)

    experiment = args.experiment or load_config().experiment_name
    tracking.check_server()
    table = comparison(load_runs(experiment), include_incomplete=args.all)
    if table.empty:
        raise TrackingError(f"experiment {experiment!r} holds no complete result yet (see --all)")
    print(format_table(table, args.all))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    log.info("%d rows of experiment %r written to %s", len(table), experiment, args.csv)


if __name__ == "__main__":
    from pipeline.cli import run_command

    run_command("compare", main)
