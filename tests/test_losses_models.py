"""Loss terms against closed forms and Monte Carlo; models' shapes and checkpoint round trips."""


import pytest
import torch

from pipeline.core.checkpoints import VAE_KIND as CHECKPOINT_KIND
from pipeline.core.checkpoints import load_vae, save_checkpoint
from pipeline.core.errors import CheckpointError
from pipeline.core.losses import gaussian_kl, kl_weight, reconstruction_loss, vae_loss
from pipeline.core.models import VAE, VAEArchitecture, reparameterize, standard_normal


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 5), torch.randn(3, 5) * 0.5
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5), torch.ones(5))
    z = q.sample((200_000,))  # (S, 3, 5)
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)  # E_q[log q(z) - log p(z)]
    assert torch.allclose(gaussian_kl(mu, logvar), monte_carlo, rtol=0.02, atol=0.02)


def test_kl_is_zero_exactly_at_the_prior_and_positive_elsewhere():
    assert torch.equal(gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(2))
    assert (gaussian_kl(torch.full((2, 4), 0.1), torch.zeros(2, 4)) > 0).all()


def test_reconstruction_losses_match_their_formulas():
    torch.manual_seed(0)
    logits, x = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    p = torch.sigmoid(logits)
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(reconstruction_loss(logits, x, "bce"), bce, atol=1e-5)
    assert torch.allclose(reconstruction_loss(logits, x, "mse"), (p - x).pow(2).flatten(1).sum(1))


def test_vae_loss_returns_each_term_and_weights_only_the_objective():
    torch.manual_seed(0)
    logits, x, mu, logvar = torch.randn(4, 1, 2, 2), torch.rand(4, 1, 2, 2), torch.randn(4, 3), torch.randn(4, 3)
    terms = vae_loss(logits, x, mu, logvar, kind="bce", kl_scale=0.5)
    assert torch.isclose(terms["loss"], terms["reconstruction"] + 0.5 * terms["kl"])
    assert torch.isclose(terms["neg_elbo"], terms["reconstruction"] + terms["kl"])


def test_kl_warmup_ramps_linearly_to_beta():
    assert [kl_weight(e, 2.0, 4) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert kl_weight(0, 2.0, 0) == 2.0


def test_reparameterisation_passes_gradients_to_mu_and_logvar():
    mu = torch.zeros(4, 3, requires_grad=True)
    logvar = torch.zeros(4, 3, requires_grad=True)
    eps = standard_normal(mu, torch.Generator().manual_seed(0))
    reparameterize(mu, logvar, eps).pow(2).sum().backward()
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


def test_several_draws_per_image_follow_the_posterior():
    mu, logvar = torch.tensor([[2.0, -1.0]]), torch.log(torch.tensor([[0.25, 4.0]]))
    z = reparameterize(mu, logvar, standard_normal(mu, torch.Generator().manual_seed(0), samples=100_000))
    assert z.shape == (100_000, 1, 2)
    assert torch.allclose(z.mean(dim=0), mu, atol=0.02)
    assert torch.allclose(z.std(dim=0), torch.tensor([[0.5, 2.0]]), atol=0.02)


def test_kl_terms_add_up_to_the_kl_and_average_to_the_kl_per_dimension():
    from pipeline.core.losses import gaussian_kl_terms
    from pipeline.core.metrics import kl_per_dimension

    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    terms = gaussian_kl_terms(mu, logvar)
    assert torch.equal(terms.sum(dim=1), gaussian_kl(mu, logvar))
    assert torch.equal(terms.mean(dim=0), kl_per_dimension(mu, logvar))
    assert (terms >= 0).all()


def test_architectures_are_a_registry_that_config_offers():
    import dataclasses

    from pipeline.core.config import VAEConfig
    from pipeline.core.models import ARCHITECTURES, Discriminator

    rule = {f.name: f.metadata["rule"] for f in dataclasses.fields(VAEConfig)}["architecture"]
    assert rule.choices == tuple(ARCHITECTURES)
    for kind in ARCHITECTURES:
        arch = VAEArchitecture(kind, (1, 28, 28), latent_dim=3, hidden_dim=16)
        assert Discriminator(arch, 8)(torch.rand(2, 1, 28, 28)).shape == (2,)
    with pytest.raises(ValueError, match="unknown architecture 'rnn'"):
        VAEArchitecture("rnn", (1, 28, 28), latent_dim=3, hidden_dim=16)
    with pytest.raises(ValueError, match="divisible by 4"):
        VAEArchitecture("conv", (1, 30, 30), latent_dim=3, hidden_dim=16)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_vae_shapes_and_decoder_range(kind):
    arch = VAEArchitecture(kind, (1, 28, 28), latent_dim=6, hidden_dim=32)
    model = VAE(arch)
    logits, mu, logvar = model(torch.rand(5, 1, 28, 28), torch.randn(5, 6))
    assert logits.shape == (5, 1, 28, 28) and mu.shape == logvar.shape == (5, 6)
    images = model.decoder(torch.randn(5, 6))
    assert images.shape == (5, 1, 28, 28) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path, kind):
    arch = VAEArchitecture(kind, (1, 28, 28), latent_dim=6, hidden_dim=32)
    model = VAE(arch).eval()
    path = tmp_path / "vae.pt"
    save_checkpoint(path, kind=CHECKPOINT_KIND, config={"architecture": arch.to_dict()},
                    state_dict=model.state_dict(), epoch=3)
    loaded, checkpoint = load_vae(path, {"architecture": {"latent_dim": 6}})
    z = torch.randn(2, 6)
    assert torch.equal(loaded.decoder(z), model.decoder(z)) and checkpoint["epoch"] == 3
    with pytest.raises(CheckpointError, match="was trained with latent_dim = 6 where params.yaml says 8"):
        load_vae(path, {"architecture": {"latent_dim": 8}})


def test_missing_truncated_or_foreign_checkpoint_says_which_stage_to_rerun(tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist; run `dvc repro train_vae`"):
        load_vae(tmp_path / "none.pt")
    arch = VAEArchitecture("mlp", (1, 28, 28), 2, 8)
    path = tmp_path / "vae.pt"
    save_checkpoint(path, kind=CHECKPOINT_KIND, config={"architecture": arch.to_dict()}, state_dict=VAE(arch).state_dict())
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="could not be read"):
        load_vae(path)
    torch.save({"kind": "something else"}, path)
    with pytest.raises(CheckpointError, match="is not a vae checkpoint"):
        load_vae(path)


def test_conv_architecture_needs_sides_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        VAEArchitecture("conv", (1, 30, 30), 2, 8)


def test_aggregate_posterior_samples_decode_each_images_own_posterior_draw():
    from pipeline.core import latent

    torch.manual_seed(0)
    vae = VAE(VAEArchitecture("mlp", (1, 28, 28), 4, 32)).eval()
    x = torch.rand(6, 1, 28, 28)
    # eps = 0 is the posterior mean: exactly the reconstruction.
    assert torch.equal(latent.posterior_samples(vae, x, torch.zeros(6, 4)), latent.reconstruct(vae, x))
    eps = torch.randn(6, 4)
    with torch.no_grad():
        mu, logvar = vae.encoder(x)
        expected = vae.decoder(mu + torch.exp(0.5 * logvar) * eps)
    assert torch.allclose(latent.posterior_samples(vae, x, eps), expected)
    assert not torch.equal(latent.posterior_samples(vae, x, eps), latent.reconstruct(vae, x))
