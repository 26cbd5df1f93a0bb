"""train_gan: the generator's start, the named D and G steps, the checkpoint, and the MLflow row."""

from __future__ import annotations

import csv
import json

import mlflow
import pytest
import torch
from conftest import Project, assert_refused, copy_project, tiny_params

from pipeline.core import data, losses, training
from pipeline.core.checkpoints import load_gan, load_gans
from pipeline.core.config import parse_config
from pipeline.core.errors import TrainingDiverged
from pipeline.core.models import VAE, Discriminator, VAEArchitecture
from pipeline.core.replicas import Stack
from pipeline.stages import train_classifier, train_gan

ARCH = VAEArchitecture("mlp", (1, 28, 28), latent_dim=4, hidden_dim=32)


def trained_vae() -> VAE:
    """A VAE whose decoder differs from a fresh one (as after training)."""
    torch.manual_seed(123)
    return VAE(ARCH)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_generator_equals_the_decoder_with_init_decoder_and_differs_from_scratch(kind):
    vae = VAE(VAEArchitecture(kind, (1, 28, 28), latent_dim=4, hidden_dim=32))
    decoder_weights = vae.decoder.state_dict()
    from_decoder = training.make_generator(vae, "decoder").state_dict()
    assert from_decoder.keys() == decoder_weights.keys()
    assert all(torch.equal(from_decoder[k], decoder_weights[k]) for k in decoder_weights)
    from_scratch = training.make_generator(vae, "scratch").state_dict()
    assert all(not torch.equal(from_scratch[k], decoder_weights[k]) for k in decoder_weights)
    # A copy, not the same tensors: training the generator leaves the VAE's decoder as it was.
    assert all(from_decoder[k].data_ptr() != decoder_weights[k].data_ptr() for k in decoder_weights)


def test_one_discriminator_step_and_one_generator_step_each_update_only_their_network():
    torch.manual_seed(0)
    pairs = [(training.make_generator(trained_vae(), "decoder"), Discriminator(ARCH, 32)) for _ in range(2)]
    generators, discriminators = Stack([g for g, _ in pairs]), Stack([d for _, d in pairs])
    optimizer_g = torch.optim.Adam(generators.parameters(), lr=1e-3)
    optimizer_d = torch.optim.Adam(discriminators.parameters(), lr=1e-3)
    real = torch.rand(2, 8, 1, 28, 28)  # (seeds, batch, ...)
    z = torch.randn(2, 8, 4)
    fake = generators(z)
    g_before = [p.detach().clone() for p in generators.parameters()]
    d_before = [p.detach().clone() for p in discriminators.parameters()]

    with pytest.raises(ValueError, match="detached"):
        training.discriminator_step(discriminators, optimizer_d, real, fake)
    d_steps = training.discriminator_step(discriminators, optimizer_d, real, fake.detach())
    assert all(torch.equal(a, b) for a, b in zip(g_before, generators.parameters()))
    assert all(not torch.equal(a[i], b[i]) for a, b in zip(d_before, discriminators.parameters()) for i in (0, 1))
    assert len(d_steps) == 2 and all(set(step) == {"d_loss", "d_real", "d_fake"} and 0 < step["d_real"] < 1
                                     for step in d_steps)

    d_after = [p.detach().clone() for p in discriminators.parameters()]
    with torch.no_grad():
        fooled_before = torch.sigmoid(discriminators(generators(z))).mean(dim=1)
    g_steps = training.generator_step(discriminators, optimizer_g, fake)
    assert all(torch.equal(a, b) for a, b in zip(d_after, discriminators.parameters()))
    assert all(not torch.equal(a[i], b[i]) for a, b in zip(g_before, generators.parameters()) for i in (0, 1))
    with torch.no_grad():  # the step moved each seed's G towards fooling its D on the same noise
        assert (torch.sigmoid(discriminators(generators(z))).mean(dim=1) > fooled_before).all()
    assert len(g_steps) == 2 and all(step["g_loss"] > 0 for step in g_steps)


def test_gan_losses_are_the_non_saturating_objective():
    real_logits, fake_logits = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    d_real, d_fake = torch.sigmoid(real_logits), torch.sigmoid(fake_logits)
    expected_d = -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean())
    assert losses.discriminator_loss(real_logits, fake_logits).item() == pytest.approx(expected_d.item(), rel=1e-6)
    assert losses.generator_loss(fake_logits).item() == pytest.approx(-torch.log(d_fake).mean().item(), rel=1e-6)


def test_snapshot_epochs_are_spread_before_the_last():
    assert train_gan.snapshot_epochs(20, 4) == [4, 8, 12, 16]
    assert train_gan.snapshot_epochs(2, 4) == [1]
    assert train_gan.snapshot_epochs(5, 0) == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = parse_config(tiny_params())
    splits = data.build_splits(config.data, tmp_path_factory.mktemp("data"))
    classifier = train_classifier.run(config, splits, "cpu").model
    return config, splits, classifier


def seed_vaes(config) -> list[VAE]:
    """A VAE per seed of `config`, each with a decoder of its own (as after training)."""
    vaes = []
    for seed in config.seeds:
        torch.manual_seed(123 + seed)
        vaes.append(VAE(ARCH))
    return vaes


def test_training_from_the_decoder_starts_at_the_vae_prior_score(tiny):
    config, splits, classifier = tiny
    seeds = train_gan.run(config, splits, seed_vaes(config), classifier, "cpu")
    assert [result.seed for result in seeds] == [0, 1]
    for result in seeds:
        runs = result.runs
        assert set(runs) == {"decoder", "scratch"}
        # Epoch 0 is scored before the first step: the decoder-initialised generator is the decoder.
        assert runs["decoder"].history[0]["fid"] == result.vae_prior_fid
        assert runs["scratch"].history[0]["fid"] != pytest.approx(result.vae_prior_fid, rel=1e-3)
        for gan in runs.values():
            assert [row["epoch"] for row in gan.history] == [0, 1, 2]
            assert all(0 < row["d_real"] < 1 and 0 < row["d_fake"] < 1 for row in gan.history[1:])
            assert sorted(gan.grids) == [1, 2]  # one snapshot, and the last epoch
    assert seeds[0].runs["decoder"].history != seeds[1].runs["decoder"].history
    again = train_gan.run(config, splits, seed_vaes(config), classifier, "cpu")
    assert again[1].runs["decoder"].history == seeds[1].runs["decoder"].history  # seeded: the same numbers


def test_nan_stops_gan_training_naming_the_gan_and_the_term(tiny, monkeypatch):
    config, splits, classifier = tiny
    monkeypatch.setattr(training, "generator_loss", lambda logits: logits.mean(dim=-1) * float("nan"))  # per seed
    with pytest.raises(TrainingDiverged, match=r"epoch 1: the GAN \(decoder\) loss term 'g_loss' became nan"):
        train_gan.run(config, splits, seed_vaes(config), classifier, "cpu")


# ---------------------------------------------------------------------------------------------
# The stage as DVC runs it: the study's outputs (latent_dim 4, seeds 0 and 1) and record


@pytest.mark.slow
def test_stage_writes_checkpoints_history_and_samples(study):
    root = study.root
    generators = root / "outputs/gan/generators"
    assert sorted(p.name for p in generators.iterdir()) == ["seed-0", "seed-1"]
    assert all(sorted(p.name for p in (generators / seed).iterdir()) == ["decoder.pt", "scratch.pt"]
               for seed in ("seed-0", "seed-1"))
    assert sorted(p.name for p in (root / "outputs/gan/samples").iterdir()) == ["decoder.png", "scratch.png"]
    metrics = json.loads((root / "outputs/gan/metrics.json").read_text())  # by seed
    history = list(csv.DictReader(open(root / "outputs/gan/history.csv")))  # the seeds' means
    per_seed = list(csv.DictReader(open(root / "outputs/gan/seed_history.csv")))
    assert [row["epoch"] for row in history] == ["0", "1", "2"] and len(per_seed) == 6
    mean = (metrics["0"]["vae_prior_fid"] + metrics["1"]["vae_prior_fid"]) / 2
    assert history[0]["decoder_d_loss"] == "" and float(history[0]["decoder_fid"]) == pytest.approx(mean)
    assert float(history[-1]["scratch_fid"]) == pytest.approx((metrics["0"]["scratch"]["fid"]
                                                               + metrics["1"]["scratch"]["fid"]) / 2)
    for seed in ("0", "1"):
        for init in ("decoder", "scratch"):
            assert metrics[seed][init]["classes"] >= 1 and 0 <= metrics[seed][init]["label_entropy"] <= 2.31


@pytest.mark.slow
def test_checkpoint_round_trip_rebuilds_the_same_generator_and_discriminator(study):
    path = study.root / "outputs/gan/generators/seed-0/decoder.pt"
    generator, discriminator, checkpoint = load_gan(path, {"architecture": {"latent_dim": 4}})
    assert checkpoint["config"]["init"] == "decoder" and checkpoint["epoch"] == 2
    assert checkpoint["config"]["architecture"]["latent_dim"] == 4
    stored = torch.load(path, weights_only=True)
    assert all(torch.equal(generator.state_dict()[k], v) for k, v in stored["state_dict"].items())
    assert all(torch.equal(discriminator.state_dict()[k], v) for k, v in stored["discriminator_state_dict"].items())
    z = torch.randn(5, 4)
    again, again_d, _ = load_gan(path)
    assert torch.equal(generator(z), again(z)) and torch.equal(discriminator(again(z)), again_d(again(z)))
    assert discriminator.features(generator(z)).shape == (5, checkpoint["config"]["gan"]["discriminator_hidden"])
    assert set(load_gans(path.parent, {"architecture": {"latent_dim": 4}})) == {"decoder", "scratch"}
    from pipeline.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="latent_dim = 4 where params.yaml says 8"):
        load_gan(path, {"architecture": {"latent_dim": 8}})
    with pytest.raises(CheckpointError, match="is not a gan_generator checkpoint"):
        load_gan(study.root / "outputs/vae/checkpoints/seed-0.pt")
    with pytest.raises(CheckpointError, match="holds no generator"):
        load_gans(study.root / "outputs/vae")


@pytest.mark.slow
def test_stage_records_into_the_vae_row(study):
    vae_runs = json.loads((study.root / "outputs/vae/mlflow_run.json").read_text())["runs"]
    gan_runs = json.loads((study.root / "outputs/gan/mlflow_run.json").read_text())["runs"]
    assert vae_runs == gan_runs and sorted(gan_runs) == ["0", "1"]  # each seed's row, added to
    (row,) = [run for run in study.runs("mnist5k") if run.info.run_id == gan_runs["0"]]
    assert row.info.status == "FINISHED" and row.data.params["seed"] == "0"
    assert row.data.tags["pipeline.stages"] == "train_vae,train_gan,evaluate"  # and the evaluation after it
    assert row.data.params["gan.init"] == "decoder" and row.data.params["latent_dim"] == "4"
    assert {"vae/test_neg_elbo", "gan/vae_prior_fid", "gan/decoder/fid", "gan/scratch/fid",
            "gan/decoder/d_real", "gan/decoder/classes"} <= set(row.data.metrics)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{study.store}")
    assert [p.step for p in client.get_metric_history(row.info.run_id, "gan/decoder/fid")] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(row.info.run_id, "gan/decoder")}
    assert {"gan/decoder/samples_epoch_001.png", "gan/decoder/samples_epoch_002.png"} <= artifacts


@pytest.fixture(scope="module")
def gan_project(study, tmp_path_factory) -> Project:
    """This module's copy of the study, to rerun the stage in and to refuse params in."""
    return Project(copy_project(study.root, tmp_path_factory.mktemp("gan") / "project"))


@pytest.mark.slow
def test_stage_rerun_in_a_fresh_process_reproduces_its_outputs_bit_for_bit(gan_project):
    """The stage as DVC runs it, a fresh process, gives the bytes the study's run gave."""
    root = gan_project.root
    names = ["generators/seed-0/decoder.pt", "generators/seed-1/scratch.pt", "samples/decoder.png", "metrics.json",
             "history.csv", "seed_history.csv"]
    first = {name: (root / "outputs/gan" / name).read_bytes() for name in names}
    gan_project.stage("train_gan")
    assert {name: (root / "outputs/gan" / name).read_bytes() for name in names} == first


@pytest.mark.slow
def test_without_comparison_only_the_chosen_gan_is_trained(study, tmp_path):
    project = Project(copy_project(study.root, tmp_path / "project"))
    project.write_params({"gan": {"compare_scratch": False, "epochs": 1}})
    project.call("train_gan", check=True)
    assert [p.name for p in (project.root / "outputs/gan/generators/seed-1").iterdir()] == ["decoder.pt"]
    history = list(csv.DictReader(open(project.root / "outputs/gan/history.csv")))
    assert history[-1]["scratch_fid"] == "" and history[-1]["decoder_fid"] != ""
    assert "scratch" not in json.loads((project.root / "outputs/gan/metrics.json").read_text())["1"]


@pytest.mark.parametrize("override, message", [
    ({"gan": {"epochs": 0}}, "gan.epochs = 0 is not allowed; expected an integer >= 1"),
    ({"gan": {"learning_rate": 0}}, "gan.learning_rate = 0 is not allowed; expected a number > 0"),
    ({"gan": {"init": "vae"}}, "gan.init = 'vae' is not allowed; expected one of: decoder, scratch"),
    ({"gan": {"compare_scratch": "yes please"}}, "gan.compare_scratch = 'yes please' is not allowed"),
])
@pytest.mark.slow
def test_bad_gan_params_fail_before_any_work(gan_project, override, message):
    assert_refused(gan_project, "train_gan", override, message)
