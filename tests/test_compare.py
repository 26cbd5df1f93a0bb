"""The comparison table: one line per complete result, from the recorded rows, and its command."""

from __future__ import annotations

from pipeline.tools import compare
from pipeline.tracking.names import RESULT_STAGES
from pipeline.tracking.rows import Row

COMPLETE = ",".join(RESULT_STAGES)


def rows(*specs: dict) -> list[Row]:
    """Rows as the reader returns them: params and tags as text, metrics as numbers."""
    made = []
    for i, spec in enumerate(specs):
        tags = {"pipeline.stages": COMPLETE, "git.commit": "0123456789abcdef", **spec.get("tags", {})}
        made.append(Row(f"id{i}", f"run{i}", spec.get("status", "FINISHED"), i, spec.get("params", {}),
                        spec.get("metrics", {}), tags))
    return made


def test_rows_are_sorted_by_latent_dim_as_a_number_and_metrics_named_plainly():
    table = compare.comparison(rows(
        {"params": {"latent_dim": "32"}, "metrics": {"eval/vae/kl": 30.0, "eval/scores/vae_prior/fid": 9.0}},
        {"params": {"latent_dim": "4"}, "metrics": {"eval/vae/kl": 10.0, "eval/scores/vae_prior/fid": 7.0}},
        {"params": {"latent_dim": "16"}, "metrics": {"eval/vae/kl": 20.0, "eval/scores/vae_prior/fid": 8.0}}))
    assert list(table["latent_dim"]) == [4, 16, 32]  # not "16" < "32" < "4"
    assert list(table["kl"]) == [10.0, 20.0, 30.0] and list(table["fid_vae_prior"]) == [7.0, 8.0, 9.0]
    assert list(table.columns) == list(compare.COLUMNS)
    assert table["fid_gan_scratch"].isna().all()  # no run logged it: empty, not an error
    assert set(table["commit"]) == {"01234567"}


def test_only_finished_rows_holding_every_result_stage_count_unless_all_are_asked_for():
    recorded = rows({"params": {"latent_dim": "2"}},
                    {"params": {"latent_dim": "4"}, "status": "FAILED"},
                    {"params": {"latent_dim": "8"}, "status": "RUNNING"},
                    {"params": {"latent_dim": "16"}, "tags": {"pipeline.stages": "train_vae"}},
                    # a stage added later that records into the row too does not make it incomplete
                    {"params": {"latent_dim": "32"}, "tags": {"pipeline.stages": COMPLETE + ",calibrate"}})
    assert list(compare.comparison(recorded)["latent_dim"]) == [2, 32]
    everything = compare.comparison(recorded, include_incomplete=True)
    assert list(everything["status"]) == ["FINISHED", "FAILED", "RUNNING", "FINISHED", "FINISHED"]
    assert "status" in compare.format_table(everything, include_incomplete=True)


def test_no_rows_give_an_empty_table_with_the_columns():
    assert list(compare.comparison([]).columns) == list(compare.COLUMNS)


def test_command_without_a_store_says_so_and_creates_nothing(project):
    result = project.stage("compare", check=False)
    assert result.returncode == 2 and "there is no MLflow store at" in result.stderr
    assert not project.store.exists() and project.files() == []
