"""Seeds trained together (pipeline.core.replicas): each seed starts from the weights it draws
alone, trains as it would alone to float32 rounding, and draws its own streams, which pair across
configurations."""

from __future__ import annotations

import statistics

import pytest
import torch
from conftest import tiny_params

from pipeline.core import data, replicas, training
from pipeline.core.config import parse_config
from pipeline.core.losses import vae_loss
from pipeline.core.models import VAE, Decoder, Discriminator, VAEArchitecture
from pipeline.core.replicas import Stack, build_seeded, stream
from pipeline.stages import train_vae

ARCH = VAEArchitecture("mlp", (1, 28, 28), 4, 32)
# Batched matmuls add in another order than one seed's matmul: gradients agree to float32 rounding
# (about 1e-7 relative), and Adam, which divides by the gradient's running scale, turns that into
# parameter differences of a small fraction of one step (lr 1e-3) where a gradient is near zero.
ONE_EPOCH_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    return data.build_splits(parse_config(tiny_params()).data, tmp_path_factory.mktemp("data"))


def config(**overrides):
    return parse_config(tiny_params(overrides))


def test_each_purpose_and_seed_has_its_own_stream_and_it_is_the_same_every_time():
    seeds = {(seed, purpose): replicas.stream_seed(seed, purpose) for seed in range(4)
             for purpose in ("weights", "batches", "noise", "samples", "vae/weights", "gan/weights")}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= value < 2**63 for value in seeds.values())
    assert replicas.stream_seed(3, "vae/noise") == replicas.stream_seed(3, "vae/noise")
    assert torch.equal(torch.rand(5, generator=stream(3, "noise")), torch.rand(5, generator=stream(3, "noise")))
    with pytest.raises(ValueError, match="unknown stream purpose 'weight'"):
        replicas.stream_seed(0, "weight")


def test_building_with_a_seed_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_seeded(lambda: VAE(ARCH), 0)
    assert torch.equal(torch.rand(3), expected)


def weights_of(monkeypatch, config, splits) -> dict[int, dict[str, torch.Tensor]]:
    """Each seed's VAE weights when train_vae stacks them, before the first step."""
    seen = {}

    class Recording(Stack):
        def __init__(self, modules):
            super().__init__(modules)
            seen.update({seed: self.state_dict(i) for i, seed in enumerate(config.seeds)})

    monkeypatch.setattr(train_vae, "Stack", Recording)
    train_vae.run(config, splits, "cpu")
    return seen


def test_a_seed_trained_among_others_starts_from_exactly_the_weights_it_gets_alone(tiny_splits, monkeypatch):
    alone = weights_of(monkeypatch, config(seeds=[1], vae={"epochs": 1}), tiny_splits)[1]
    among = weights_of(monkeypatch, config(seeds=[4, 1, 0], vae={"epochs": 1}), tiny_splits)
    assert all(torch.equal(alone[name], among[1][name]) for name in alone)
    assert not torch.equal(among[4]["decoder.net.0.weight"], among[1]["decoder.net.0.weight"])


def final_weights(config, splits) -> dict[int, dict[str, torch.Tensor]]:
    return {result.seed: result.model.state_dict() for result in train_vae.run(config, splits, "cpu").results}


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def test_after_one_epoch_a_seeds_weights_agree_with_its_single_seed_run(tiny_splits):
    alone = final_weights(config(seeds=[1], vae={"epochs": 1}), tiny_splits)[1]
    among = final_weights(config(seeds=[4, 1, 0], vae={"epochs": 1}), tiny_splits)
    assert largest_difference(alone, among[1]) < ONE_EPOCH_TOLERANCE
    assert largest_difference(among[4], among[1]) > 100 * ONE_EPOCH_TOLERANCE  # the tolerance tells seeds apart


def test_the_stacked_step_is_the_plain_networks_step(tiny_splits):
    """The stacked loop against a plain loop over one seed's own module, written out here."""
    x = training.to_unit_float(torch.from_numpy(tiny_splits.x_train))
    seeds = [2, 5]
    stack = Stack([build_seeded(lambda: VAE(ARCH), seed) for seed in seeds])
    optimizer = training.adam(stack.parameters(), lr=1e-3)
    training.vae_epoch(stack, optimizer, x, latent_dim=4, batch_size=64, kind="bce", kl_scale=1.0,
                       orders=[stream(s, "batches") for s in seeds], noises=[stream(s, "noise") for s in seeds], epoch=0)

    model = build_seeded(lambda: VAE(ARCH), 5)
    plain = training.adam(model.parameters(), lr=1e-3)
    order, noise = stream(5, "batches"), stream(5, "noise")
    for index in training.shuffled_batches(len(x), 64, order, "cpu"):
        batch = x[index]
        logits, mu, logvar = model(batch, training.vae_noise(model, batch, noise))
        plain.zero_grad()
        vae_loss(logits, batch, mu, logvar, kind="bce", kl_scale=1.0)["loss"].backward()
        plain.step()
    assert largest_difference(model.state_dict(), stack.state_dict(1)) < ONE_EPOCH_TOLERANCE


def test_the_stacked_gan_step_is_each_seeds_own(tiny_splits):
    x = training.to_unit_float(torch.from_numpy(tiny_splits.x_train))

    def train(seeds):
        pairs = [build_seeded(lambda: (Decoder(ARCH), Discriminator(ARCH, 16)), seed) for seed in seeds]
        generators, discriminators = Stack([g for g, _ in pairs]), Stack([d for _, d in pairs])
        options = {"lr": 2e-4, "betas": (0.5, 0.999)}
        measures = training.gan_epoch(generators, discriminators, training.adam(generators.parameters(), **options),
                                      training.adam(discriminators.parameters(), **options), x, latent_dim=4,
                                      batch_size=64, orders=[stream(s, "batches") for s in seeds],
                                      noises=[stream(s, "noise") for s in seeds], epoch=0)
        return generators, discriminators, measures

    g_alone, d_alone, alone = train([3])
    g_among, d_among, among = train([0, 3])
    assert largest_difference(g_alone.state_dict(0), g_among.state_dict(1)) < ONE_EPOCH_TOLERANCE
    assert largest_difference(d_alone.state_dict(0), d_among.state_dict(1)) < ONE_EPOCH_TOLERANCE
    assert alone[0] == pytest.approx(among[1], rel=1e-4) and alone[0] != among[0]


def test_a_seeds_final_numbers_move_far_less_than_the_seed_to_seed_spread(tiny_splits):
    settings = {"epochs": 4, "learning_rate": 0.003}
    alone = train_vae.run(config(seeds=[0], vae=settings), tiny_splits, "cpu").results[0].final["test_neg_elbo"]
    among = {r.seed: r.final["test_neg_elbo"] for r in train_vae.run(
        config(seeds=[0, 1, 2, 3], vae=settings), tiny_splits, "cpu").results}
    spread = statistics.stdev(among.values())
    assert abs(alone - among[0]) < spread / 100, (alone, among)


def test_a_seeds_batch_order_is_the_same_in_every_latent_dim(tiny_splits, monkeypatch):
    def orders(latent_dim):
        seen = []
        real = training.seed_batches

        def recording(*args, **kwargs):
            for index in real(*args, **kwargs):
                seen.append(index.clone())
                yield index

        monkeypatch.setattr(training, "seed_batches", recording)
        train_vae.run(config(latent_dim=latent_dim, seeds=[0, 1], vae={"epochs": 2}), tiny_splits, "cpu")
        return torch.cat(seen, dim=1)  # (seeds, epochs x images): each seed's orders, epoch after epoch

    small, large = orders(2), orders(8)
    images = len(tiny_splits.y_train)
    assert small.shape == (2, 2 * images) and torch.equal(small, large)
    assert not torch.equal(small[0], small[1])  # each seed its own order
    assert not torch.equal(small[:, :images], small[:, images:])  # a new order every epoch
