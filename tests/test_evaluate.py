"""evaluate and train_classifier as stages: the numbers, their scale, the figures and the MLflow row."""

from __future__ import annotations

import csv
import json

import mlflow
import pytest
import torch
from conftest import Project, assert_refused, copy_project, tiny_params

from pipeline.core import data
from pipeline.core.config import parse_config
from pipeline.core.models import VAE, VAEArchitecture
from pipeline.stages import evaluate, train_classifier
from pipeline.tracking import names

SETS = {"real_train", "noise", "vae_reconstructions", "vae_prior", "vae_posterior", "gan_decoder", "gan_scratch"}


@pytest.fixture
def evaluated(study) -> Project:
    """The study (read-only): its workspace holds the evaluation of latent_dim 4, seeds 0 and 1."""
    return study


@pytest.fixture(scope="module")
def evaluate_project(study, tmp_path_factory) -> Project:
    """This module's copy of the study, to rerun the stage in and to refuse params in."""
    return Project(copy_project(study.root, tmp_path_factory.mktemp("evaluate") / "project"))


@pytest.mark.slow
def test_evaluation_measures_the_vae_and_every_set_with_its_scale(evaluated):
    details = json.loads((evaluated.root / "outputs/eval/details.json").read_text())  # by seed
    assert sorted(details) == ["0", "1"] and details["0"] != details["1"]
    metrics = details["0"]
    assert set(metrics["scores"]) == SETS and metrics["num_samples"] == 60
    vae = metrics["vae"]
    assert vae["iwae_samples"] == 4 and 0 <= vae["active_units"] <= 4
    assert 0 < vae["recon_mse_per_pixel"] < 1 and vae["kl"] > 0
    assert vae["iwae_nll"] <= vae["neg_elbo"] + 1.0  # a tighter bound, up to the single-sample ELBO's noise
    scores = metrics["scores"]
    assert scores["real_train"]["fid"] < scores["vae_prior"]["fid"] < scores["noise"]["fid"]
    assert vae["prior_hole_fid"] == scores["vae_prior"]["fid"] - scores["vae_posterior"]["fid"]
    assert scores["real_train"]["recall"] > scores["noise"]["recall"]
    classifier = json.loads((evaluated.root / "outputs/classifier/metrics.json").read_text())
    assert metrics["classifier_test_accuracy"] == classifier["test_accuracy"]

    assert scores["real_train"]["sharpness"] > scores["vae_reconstructions"]["sharpness"]  # VAE blur

    gradients = metrics["reparameterisation"]
    assert gradients["images"] == 60 and gradients["samples"] == evaluate.GRADIENT_SAMPLES
    assert 0 < gradients["reparameterised"] < gradients["score_function_baseline"] < gradients["score_function"]
    probes = metrics["probes"]
    assert set(probes) == {"pixels", "encoder", "discriminator_decoder", "discriminator_scratch"}
    assert all(0.1 < accuracy <= 1 for accuracy in probes.values())  # ten classes: chance is 0.1
    assert set(metrics["probe_tests"]) == {"encoder_vs_pixels", "encoder_vs_discriminator_decoder",
                                           "encoder_vs_discriminator_scratch"}
    assert all(0 < p <= 1 for p in metrics["probe_tests"].values())
    assert set(metrics["discriminators"]) == {"decoder", "scratch"}
    for verdicts in metrics["discriminators"].values():
        assert set(verdicts) == SETS and all(0 < v < 1 for v in verdicts.values())

    rows = list(csv.DictReader(open(evaluated.root / "outputs/eval/kl_per_dim.csv")))  # the first seed's
    assert [int(r["dim"]) for r in rows] == [0, 1, 2, 3]
    assert sum(float(r["kl"]) for r in rows) == pytest.approx(vae["kl"], rel=1e-4)
    assert sum(int(r["active"]) for r in rows) == vae["active_units"]
    assert sorted(p.name for p in (evaluated.root / "outputs/eval/figures").iterdir()) == ["seed-0", "seed-1"]
    for seed in ("seed-0", "seed-1"):
        figures = {p.name for p in (evaluated.root / "outputs/eval/figures" / seed).iterdir()}
        assert figures == {"test_images.png", "reconstructions.png", "vae_prior.png", "gan_decoder.png",
                           "gan_scratch.png", "interpolation.png", "traversal.png"}


@pytest.mark.slow
def test_evaluation_lands_in_each_seeds_row_of_the_vae_and_gan_and_leads_with_the_aggregate(evaluated):
    files = {s: json.loads((evaluated.root / f"outputs/{s}/mlflow_run.json").read_text()) for s in ("vae", "gan", "eval")}
    assert files["vae"]["runs"] == files["gan"]["runs"] == files["eval"]["runs"]
    rows = {run.data.params["seed"]: run for run in evaluated.runs("mnist5k")
            if run.info.run_id in files["eval"]["runs"].values()}
    assert {seed: row.info.run_id for seed, row in rows.items()} == files["eval"]["runs"]
    details = json.loads((evaluated.root / "outputs/eval/details.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{evaluated.store}")
    for seed, row in rows.items():
        metrics = details[seed]
        assert row.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"
        assert row.data.metrics["eval/scores/gan_decoder/fid"] == pytest.approx(metrics["scores"]["gan_decoder"]["fid"])
        assert row.data.metrics["eval/vae/iwae_nll"] == pytest.approx(metrics["vae"]["iwae_nll"])
        assert row.data.metrics["eval/probes/encoder"] == metrics["probes"]["encoder"]
        assert row.data.metrics["eval/discriminators/decoder/real_train"] == pytest.approx(
            metrics["discriminators"]["decoder"]["real_train"])
        assert {"vae/test_neg_elbo", "gan/decoder/fid", "eval/classifier_test_accuracy", "eval/seconds"} <= set(
            row.data.metrics)
        assert [p.step for p in client.get_metric_history(row.info.run_id, "eval/vae/kl_per_dim")] == [0, 1, 2, 3]
        artifacts = {a.path for a in client.list_artifacts(row.info.run_id, "eval")}
        assert {"eval/gan_decoder.png", "eval/vae_prior.png", "eval/reconstructions.png", "eval/test_images.png",
                "eval/kl_per_dim.csv"} <= artifacts
    # Each seed's headline numbers, as recorded in its row, are a plain output.
    per_seed = {row["seed"]: row for row in csv.DictReader(open(evaluated.root / "outputs/eval/seed_metrics.csv"))}
    assert {seed: {short: float(value) for short, value in numbers.items() if short != "seed"}
            for seed, numbers in per_seed.items()} == {
        seed: {short: row.data.metrics[names.HEADLINE_METRICS[short]] for short in names.SHOWN_FIRST}
        for seed, row in rows.items()}
    # DVC's metrics lead with the aggregate: n, and each headline number's mean and 95% half-width,
    # the numbers the configuration's summary run holds.
    headline = json.loads((evaluated.root / "outputs/eval/metrics.json").read_text())
    assert list(headline) == list(names.DVC_METRICS) and headline["n"] == 2
    summary = client.get_run(files["eval"]["summary_run_id"]).data
    for short in names.SHOWN_FIRST:
        key = names.HEADLINE_METRICS[short]
        assert headline[short] == pytest.approx(sum(row.data.metrics[key] for row in rows.values()) / 2)
        assert headline[short] == pytest.approx(summary.metrics[key])
        assert headline[short + names.CI_SUFFIX] == pytest.approx(summary.metrics[f"{key}/ci95_half_width"])
    assert {row.data.tags["mlflow.parentRunId"] for row in rows.values()} == {files["eval"]["summary_run_id"]}
    (classifier_run,) = evaluated.runs("classifiers")
    assert classifier_run.data.metrics["classifier/test_accuracy"] == details["0"]["classifier_test_accuracy"]


@pytest.mark.slow
def test_rerun_in_a_fresh_process_reproduces_metrics_and_figures(evaluate_project):
    """The stage as DVC runs it, a fresh process, gives the bytes the study's run gave."""
    out = evaluate_project.root / "outputs/eval"
    files = ["metrics.json", "details.json", "kl_per_dim.csv", "seed_metrics.csv",
             *(str(p.relative_to(out)) for p in (out / "figures").rglob("*.png"))]
    first = {name: (out / name).read_bytes() for name in files}
    rows_before = len(evaluate_project.runs("mnist5k"))
    evaluate_project.stage("evaluate")
    assert {name: (out / name).read_bytes() for name in files} == first
    # The stage had already been recorded in the seeds' rows, so the rerun got a row per seed of
    # its own that carries the training numbers it evaluated.
    rows = evaluate_project.runs("mnist5k")
    assert len(rows) == rows_before + 2
    for newest in sorted(rows, key=lambda r: r.info.start_time)[-2:]:
        assert newest.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"
        assert {"vae/test_neg_elbo", "gan/decoder/fid", "eval/scores/vae_prior/fid"} <= set(newest.data.metrics)


@pytest.mark.parametrize("override, message", [
    ({"evaluate": {"num_samples": 5000}}, "evaluate.num_samples = 5000 is more than the data has"),
    ({"evaluate": {"kid_subset_size": 61}}, "evaluate.kid_subset_size = 61 is more than evaluate.num_samples"),
    ({"evaluate": {"iwae_samples": 0}}, "evaluate.iwae_samples = 0 is not allowed; expected an integer >= 1"),
])
@pytest.mark.slow
def test_bad_evaluation_params_fail_before_any_work(evaluate_project, override, message):
    assert_refused(evaluate_project, "evaluate", override, message)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = parse_config(tiny_params())
    splits = data.build_splits(config.data, tmp_path_factory.mktemp("data"))
    return config, splits


def test_classifier_learns_the_digits(tiny):
    config, splits = tiny
    config = parse_config(tiny_params({"classifier": {"epochs": 10, "feature_dim": 64}, "evaluate": {"num_samples": 100}}))
    result = train_classifier.run(config, splits, "cpu")
    assert result.final["test_accuracy"] > 0.6  # ten classes: chance is 0.1; 240 training images only
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_latent_plane_figures_when_latent_dim_is_two(tiny, tmp_path):
    config, splits = tiny
    config = parse_config(tiny_params({"latent_dim": 2}))
    classifier = train_classifier.run(config, splits, "cpu").model
    torch.manual_seed(0)
    vae = VAE(VAEArchitecture("mlp", splits.image_shape, 2, 32))
    result = evaluate.run(config, splits, vae, classifier, {}, "cpu", "bce", seed=0)
    assert {"latent_lattice", "interpolation", "traversal"} <= set(result.grids)
    assert result.latent_means.shape == (len(splits.y_test), 2)
    # 15 x 15 lattice of 28-pixel images with 2-pixel gaps: 15 * 30 + 2 pixels a side
    assert result.grids["latent_lattice"].shape == (3, 452, 452)
    assert result.grids["traversal"].shape[1] == 2 * 30 + 2  # two dimensions, one row each
    evaluate.save_latent_scatter(tmp_path / "scatter.png", result.latent_means, splits.y_test)
    assert (tmp_path / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result.metrics["scores"]) == {"real_train", "noise", "vae_reconstructions", "vae_prior", "vae_posterior"}
