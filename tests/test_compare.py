"""The comparison table: one line per complete result, from MLflow's runs frame, and its command."""

from __future__ import annotations

import pandas as pd

from pipeline import compare

COMPLETE = "train_vae,train_gan,evaluate"


def frame(*rows: dict) -> pd.DataFrame:
    """A stand-in for `mlflow.search_runs`' frame: the columns it names, as it names them."""
    return pd.DataFrame([{"run_id": f"id{i}", "start_time": i, "status": "FINISHED",
                          "tags.pipeline.stages": COMPLETE, "tags.git.commit": "0123456789abcdef", **row}
                         for i, row in enumerate(rows)])


def test_rows_are_sorted_by_latent_dim_as_a_number_and_metrics_named_plainly():
    runs = frame({"params.latent_dim": "32", "metrics.eval/vae/kl": 30.0, "metrics.eval/scores/vae_prior/fid": 9.0},
                 {"params.latent_dim": "4", "metrics.eval/vae/kl": 10.0, "metrics.eval/scores/vae_prior/fid": 7.0},
                 {"params.latent_dim": "16", "metrics.eval/vae/kl": 20.0, "metrics.eval/scores/vae_prior/fid": 8.0})
    table = compare.comparison(runs)
    assert list(table["latent_dim"]) == [4, 16, 32]  # not "16" < "32" < "4"
    assert list(table["kl"]) == [10.0, 20.0, 30.0] and list(table["fid_vae_prior"]) == [7.0, 8.0, 9.0]
    assert list(table.columns) == list(compare.COLUMNS)
    assert table["fid_gan_scratch"].isna().all()  # no run logged it: empty, not an error
    assert set(table["commit"]) == {"01234567"}


def test_only_finished_rows_holding_every_stage_count_unless_all_are_asked_for():
    runs = frame({"params.latent_dim": "2"},
                 {"params.latent_dim": "4", "status": "FAILED"},
                 {"params.latent_dim": "8", "status": "RUNNING"},
                 {"params.latent_dim": "16", "tags.pipeline.stages": "train_vae"})
    assert list(compare.comparison(runs)["latent_dim"]) == [2]
    everything = compare.comparison(runs, include_incomplete=True)
    assert list(everything["status"]) == ["FINISHED", "FAILED", "RUNNING", "FINISHED"]
    assert "status" in compare.format_table(everything, include_incomplete=True)


def test_an_empty_store_gives_an_empty_table_with_the_columns():
    assert list(compare.comparison(pd.DataFrame()).columns) == list(compare.COLUMNS)


def test_command_without_a_store_says_so_and_creates_nothing(project):
    result = project.stage("compare", check=False)
    assert result.returncode == 2 and "there is no MLflow store at" in result.stderr
    assert not project.store.exists() and project.files() == []
