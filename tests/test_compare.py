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
    assert list(table["kl"]) == [10.0, 20.0, 30.0] and list(table["fid_vae"]) == [7.0, 8.0, 9.0]
    assert list(table.columns) == list(compare.COLUMNS)
    assert table["fid_scratch"].isna().all()  # no run logged it: empty, not an error
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
    result = project.call("compare")
    assert result.returncode == 2 and "there is no MLflow store at" in result.stderr
    assert not project.store.exists() and project.files() == []


def seeded(latent_dim: str, seed: int, fid: float, beta: str = "1.0", tags: dict | None = None, **extra) -> dict:
    return {"params": {"latent_dim": latent_dim, "vae.beta": beta, "seed": str(seed), **extra},
            "metrics": {"eval/scores/vae_prior/fid": fid}, "tags": tags or {}}


def test_a_configuration_is_its_seeds_mean_with_the_t_interval_and_n():
    from pipeline.core.stats import mean_interval

    table = compare.aggregate(rows(
        seeded("16", 0, 446.0), seeded("8", 0, 565.0), seeded("16", 1, 595.0), seeded("8", 1, 708.0),
        seeded("16", 2, 363.0), seeded("8", 2, 479.0),
        seeded("16", 2, 1e6, tags={"pipeline.stages": "train_vae"}),  # incomplete: not a replicate
        seeded("16", 0, 1e6, **{"vae.epochs": "1"}),  # another configuration
        seeded("4", 0, 300.0),
        {"params": {"latent_dim": "16"}, "metrics": {"eval/scores/vae_prior/fid": 1e6},
         "tags": {"pipeline.summary_of": "x", "pipeline.stages": ""}}))  # a summary run: never a result
    lines = list(zip(table["latent_dim"], table["n"]))
    assert lines[:2] == [(4, 1), (8, 3)] and sorted(lines[2:]) == [(16, 1), (16, 3)]
    at_16 = table[(table["latent_dim"] == 16) & (table["n"] == 3)].iloc[0]
    expected = mean_interval([446.0, 595.0, 363.0])
    assert at_16["seeds"] == "0 1 2" and at_16["fid_vae_n"] == 3
    assert (at_16["fid_vae"], at_16["fid_vae_low"], at_16["fid_vae_high"]) == (
        expected.mean, expected.low, expected.high)
    single = table[table["latent_dim"] == 4].iloc[0]
    assert single["fid_vae"] == 300.0 and single[["fid_vae_low", "fid_vae_high"]].isna().all()
    assert table["fid_scratch_n"].eq(0).all()
    text = compare.format_aggregate(table)
    assert f"{expected.mean:.4g} ± {compare.two_digits(expected.half_width)}" in text and "\n" in text
    assert " 300 " in text + " "  # one seed: the value, no interval


def test_a_seed_run_twice_counts_once_the_newer_row():
    table = compare.aggregate(rows(seeded("16", 0, 400.0), seeded("16", 1, 500.0), seeded("16", 0, 410.0)))
    assert table["n"].tolist() == [2] and table["fid_vae"].tolist() == [455.0]
