"""train_vae end to end on tiny data: outputs, determinism, divergence, and the MLflow record. (A
diverging stage's exit and FAILED row are test_reliability.py's.)"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import tiny_params

from pipeline.core import data, training
from pipeline.core.checkpoints import load_vae
from pipeline.core.config import parse_config
from pipeline.core.errors import TrainingDiverged
from pipeline.stages import train_vae

EXPECTED_OUTPUTS = [
    "outputs/data/facts.json",
    "outputs/data/splits.npz",
    "outputs/vae/checkpoints/seed-0.pt",
    "outputs/vae/checkpoints/seed-1.pt",
    "outputs/vae/history.csv",
    "outputs/vae/metrics.json",
    "outputs/vae/mlflow_run.json",
    "outputs/vae/reconstructions.png",
    "outputs/vae/samples.png",
    "outputs/vae/seed_history.csv",
]


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    config = parse_config(tiny_params())
    return data.build_splits(config.data, tmp_path_factory.mktemp("data"))


def tiny_config(**vae):
    return parse_config(tiny_params({"vae": vae}))


def histories(config, splits) -> dict[int, list[dict]]:
    return {result.seed: result.history for result in train_vae.run(config, splits, "cpu").results}


def test_same_params_give_the_same_numbers_to_the_last_digit(tiny_splits):
    first = histories(tiny_config(), tiny_splits)
    assert list(first) == [0, 1] and first[0] != first[1]  # TINY's two seeds, each its own model
    assert histories(tiny_config(), tiny_splits) == first


def test_training_lowers_the_test_loss(tiny_splits):
    for history in histories(tiny_config(epochs=5, learning_rate=0.003), tiny_splits).values():
        assert history[-1]["test_neg_elbo"] < history[0]["test_neg_elbo"]


def test_the_reconstruction_gradient_reaches_the_encoder_only_through_the_reparameterised_sample(tiny_splits,
                                                                                                 monkeypatch):
    model = train_vae.run(tiny_config(), tiny_splits, "cpu").results[0].model
    x = training.to_unit_float(torch.from_numpy(tiny_splits.x_train[:32]))

    def norms_of(model):
        return training.encoder_gradient_norms(model, x, kind="bce", generator=torch.Generator().manual_seed(0))

    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.zero_grad(set_to_none=True)
    norms = norms_of(model)
    assert norms["reconstruction"] > 0 and norms["kl"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())  # measured, not accumulated
    assert norms_of(model) == norms

    from pipeline.core import models

    sample = models.reparameterize
    monkeypatch.setattr(models, "reparameterize", lambda mu, logvar, eps: sample(mu, logvar, eps).detach())
    cut = norms_of(model)
    assert cut["reconstruction"] == 0.0 and cut["kl"] == pytest.approx(norms["kl"])


def test_history_records_the_encoder_gradients_every_epoch(tiny_splits):
    for history in histories(tiny_config(epochs=2), tiny_splits).values():
        assert all(row["encoder_grad_reconstruction"] > 0 and row["encoder_grad_kl"] > 0 for row in history)


def test_conv_architecture_trains(tiny_splits):
    for history in histories(tiny_config(architecture="conv", epochs=1), tiny_splits).values():
        assert len(history) == 1 and all(torch.isfinite(torch.tensor(v)) for v in history[0].values())


def test_nan_loss_stops_training_naming_epoch_and_term(tiny_splits, monkeypatch):
    real_loss = training.vae_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real_loss(*args, **kwargs)
        if torch.is_inference_mode_enabled():  # the test split's measures, not a training step
            return terms
        calls["n"] += 1
        # The first epoch: 4 training steps of 64 images (both seeds in each), then each seed's
        # encoder-gradient probe. Fail in the second epoch's first step.
        if calls["n"] > 4 + 2:
            terms["kl"] = terms["kl"] * float("nan")
        return terms

    monkeypatch.setattr(training, "vae_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 2: the training loss term 'kl' became nan"):
        train_vae.run(tiny_config(), tiny_splits, "cpu")


@pytest.mark.slow
def test_stage_end_to_end_records_one_complete_mlflow_row_and_reproduces_the_studys_bytes(project, study):
    """The stage as DVC runs it, a fresh process: its outputs, its row, and, bit for bit, the same
    checkpoint, metrics, history and pictures as the study's run of the same params and seed (made
    in another process, after other trainings)."""
    project.call("download", check=True)
    project.stage("train_vae")
    assert project.files() == EXPECTED_OUTPUTS
    for name in ("metrics.json", "history.csv", "seed_history.csv", "checkpoints/seed-0.pt", "checkpoints/seed-1.pt",
                 "samples.png", "reconstructions.png"):
        assert (project.root / "outputs/vae" / name).read_bytes() == (study.root / "outputs/vae" / name).read_bytes(), name

    metrics = json.loads((project.root / "outputs/vae/metrics.json").read_text())  # by seed
    history = list(csv.DictReader(open(project.root / "outputs/vae/history.csv")))  # the seeds' mean
    per_seed = list(csv.DictReader(open(project.root / "outputs/vae/seed_history.csv")))
    assert sorted(metrics) == ["0", "1"] and len(history) == metrics["0"]["epochs"] == 2 and len(per_seed) == 4
    assert float(history[-1]["test_neg_elbo"]) == pytest.approx(
        (metrics["0"]["test_neg_elbo"] + metrics["1"]["test_neg_elbo"]) / 2)
    for seed in (0, 1):
        model, checkpoint = load_vae(project.root / f"outputs/vae/checkpoints/seed-{seed}.pt",
                                     {"architecture": {"latent_dim": 4}})
        assert checkpoint["epoch"] == 2 and checkpoint["config"]["vae"]["hidden_dim"] == 32
        assert checkpoint["config"]["seed"] == seed

    rows = {int(row.data.params["seed"]): row for row in project.runs("mnist5k")}
    run_file = json.loads((project.root / "outputs/vae/mlflow_run.json").read_text())
    assert sorted(rows) == [0, 1] and run_file["runs"] == {str(seed): row.info.run_id for seed, row in rows.items()}
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project.store}")
    facts = json.loads((project.root / "outputs/data/facts.json").read_text())
    for seed, row in rows.items():  # one row per seed, each with that seed's numbers and artifacts
        assert row.info.status == "FINISHED" and row.info.run_name == f"vae-gan-ld4-s{seed}-workspace"
        assert row.data.params["latent_dim"] == "4" and row.data.params["vae.epochs"] == "2"
        assert "seeds" not in row.data.params  # a seed's row reads as one of the one-seed code
        assert row.data.tags["pipeline.stages"] == "train_vae" and row.data.tags["dvc.exp_name"] == "workspace"
        assert "git.commit" in row.data.tags and "pipeline.pending_stages" not in row.data.tags
        assert row.data.metrics["vae/test_neg_elbo"] == pytest.approx(metrics[str(seed)]["test_neg_elbo"])
        curve = client.get_metric_history(row.info.run_id, "vae/test_loss")
        assert [point.step for point in curve] == [1, 2]
        artifacts = {a.path for a in client.list_artifacts(row.info.run_id, "vae")}
        assert {"vae/samples.png", "vae/reconstructions.png", "vae/checkpoint.pt", "vae/history.csv"} <= artifacts
        assert {d.dataset.digest for d in row.inputs.dataset_inputs} == {facts["content_hash"]}
    assert {m.source_run_id for m in client.search_logged_models([row.info.experiment_id])} == {
        row.info.run_id for row in rows.values()}
    assert (project.root / "mlartifacts").is_dir()  # artifacts sit beside the store

    project.call("train_vae", check=True)  # each execution makes its own rows
    assert len(project.runs("mnist5k")) == 4


@pytest.mark.slow
def test_store_follows_dvc_root(project, tmp_path_factory):
    """Inside a DVC experiment's temporary copy, runs go to the real project's store."""
    project.call("download", check=True)
    real_root = tmp_path_factory.mktemp("real-root")
    project.call("train_vae", check=True, env={"DVC_ROOT": str(real_root), "DVC_EXP_NAME": "tiny-exp"})
    assert not project.store.exists() or project.runs("mnist5k") == []
    rows = sorted(mlflow_rows(real_root / "mlflow.db"), key=lambda row: row.info.run_name)
    assert [row.info.run_name for row in rows] == ["vae-gan-ld4-s0-tiny-exp", "vae-gan-ld4-s1-tiny-exp"]
    assert all(row.data.tags["dvc.exp_name"] == "tiny-exp" for row in rows)
    assert (real_root / "mlartifacts").is_dir()


def mlflow_rows(store):
    from conftest import mlflow_runs

    return mlflow_runs(store, "mnist5k")
