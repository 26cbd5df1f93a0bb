"""Each evaluation metric on cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.core import metrics
from pipeline.core.losses import gaussian_kl
from pipeline.core.models import VAE, Classifier, VAEArchitecture

ARCH = VAEArchitecture("mlp", (1, 28, 28), latent_dim=6, hidden_dim=32)


def images(n: int, seed: int) -> torch.Tensor:
    """Smooth random 'images' in [0, 1]: blurred noise, so features vary but are not uniform noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 7, 7, generator=g)
    return torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear")


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    classifier = Classifier((1, 28, 28), num_classes=10, feature_dim=8)
    return metrics.Scorer(classifier, images(400, seed=1), seed=0, kid_subset_size=50, pr_neighbours=3)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_noise(scorer):
    reference = images(400, seed=1)
    assert scorer.fid_and_labels(reference)[0] == pytest.approx(0.0, abs=1e-6)
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(2))
    scores = [scorer.fid_and_labels((reference + level * noise).clamp(0, 1))[0] for level in (0.05, 0.2, 0.5)]
    assert 0 < scores[0] < scores[1] < scores[2]


def test_full_scores_rank_a_matching_set_above_noise(scorer):
    same_distribution = scorer.score(images(400, seed=3))
    noise = scorer.score(torch.rand(400, 1, 28, 28, generator=torch.Generator().manual_seed(4)))
    assert same_distribution["fid"] < noise["fid"]
    assert same_distribution["kid"] < noise["kid"]
    assert same_distribution["recall"] > noise["recall"]
    assert same_distribution["sharpness"] < noise["sharpness"]  # pixel noise is all edges
    assert set(same_distribution) == {"fid", "kid", "kid_std", "precision", "recall", "classes", "label_entropy",
                                     "sharpness"}
    assert scorer.score(images(400, seed=3)) == same_distribution  # KID's subsets are seeded


def test_precision_and_recall_on_constructed_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 4, generator=g)
    assert metrics.precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    far = torch.randn(300, 4, generator=g) + 100.0
    assert metrics.precision_recall(real, far, k=3) == (0.0, 0.0)
    # Mode collapse: every sample sits near one real point. Realistic (precision 1), no variety (recall low).
    collapsed = real[:1] + 0.001 * torch.randn(300, 4, generator=g)
    precision, recall = metrics.precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.05


def test_class_spread_counts_classes_and_measures_entropy():
    uniform = metrics.class_spread(torch.arange(1000) % 10, num_classes=10)
    assert uniform["classes"] == 10 and uniform["label_entropy"] == pytest.approx(math.log(10))
    collapsed = metrics.class_spread(torch.full((1000,), 7), num_classes=10)
    assert collapsed == {"classes": 1, "label_entropy": 0.0}
    stray = metrics.class_spread(torch.tensor([3] * 995 + [1] * 5), num_classes=10)
    assert stray["classes"] == 1  # 0.5% is below the 1% share that counts as present


def test_kl_per_dimension_sums_to_the_kl_and_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(50, 6, generator=g), torch.randn(50, 6, generator=g) * 0.5
    per_dim = metrics.kl_per_dimension(mu, logvar)
    assert per_dim.sum().item() == pytest.approx(gaussian_kl(mu, logvar).mean().item(), rel=1e-5)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(20000, 50, 6, generator=g)  # (S, N, D)
    log_q = -0.5 * ((z - mu) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    monte_carlo = (log_q - log_p).mean(dim=(0, 1))  # E_q[log q - log p] per dimension
    assert torch.allclose(monte_carlo, per_dim, atol=0.03)


def test_importance_weighted_bound_is_at_least_as_tight_as_the_elbo():
    g = torch.Generator().manual_seed(0)
    log_weights = torch.randn(64, 30, generator=g) * 3
    assert (metrics.iwae_bound(log_weights) >= log_weights.mean(dim=0)).all()  # Jensen, sample by sample
    assert torch.equal(metrics.iwae_bound(log_weights[:1]), log_weights[0])  # k = 1 is the ELBO

    torch.manual_seed(0)
    model = VAE(ARCH)
    x = images(40, seed=5)
    one = metrics.vae_test_metrics(model, x, kind="bce", iwae_samples=1, seed=0)
    many = metrics.vae_test_metrics(model, x, kind="bce", iwae_samples=200, seed=0)
    assert one["iwae_nll"] == pytest.approx(one["neg_elbo"])
    assert many["iwae_nll"] < many["neg_elbo"]
    # The single-sample ELBO matches the closed-form KL plus the reconstruction term on average.
    assert many["kl"] == pytest.approx(gaussian_kl(*model.encoder(x)).mean().item(), rel=1e-5)


def test_active_units_counts_dimensions_whose_mean_moves_with_the_input():
    torch.manual_seed(0)
    model = VAE(ARCH)
    with torch.no_grad():
        model.encoder.mu.weight[[1, 4]] = 0.0  # these two means ignore the input: collapsed
        model.encoder.mu.weight[[0, 2, 3, 5]] *= 50.0  # these vary well above the 0.01 threshold
    mu, _ = model.encoder(images(200, seed=6))
    assert metrics.active_units(mu) == 4
    numbers = metrics.vae_test_metrics(model, images(200, seed=6), kind="bce", iwae_samples=2, seed=0)
    assert numbers["active_units"] == 4
    assert [v > 0.01 for v in numbers["latent_mean_variance"]] == [True, False, True, True, False, True]


def test_both_gradient_estimators_agree_on_the_mean_and_the_reparameterised_one_is_far_less_noisy():
    # f(z) = -|z - a|^2 / 2: the gradient of E_q[f] with respect to mu is a - mu exactly, and the
    # reparameterised single-sample estimate a - mu - sigma * eps has variance sigma^2.
    g = torch.Generator().manual_seed(0)
    mu, a = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    logvar = torch.full((4, 3), math.log(0.25))  # sigma = 0.5
    result = metrics.gradient_estimator_variance(lambda z: -0.5 * (z - a).pow(2).sum(-1), mu, logvar, 20_000,
                                                 torch.Generator().manual_seed(1))
    assert result["reparameterised"] == pytest.approx(0.25, rel=0.05)
    assert result["signal"] == pytest.approx((a - mu).pow(2).mean().item(), rel=0.05)
    assert result["score_function"] > 10 * result["reparameterised"]
    assert result["reparameterised"] < result["score_function_baseline"] < result["score_function"]


def test_knn_accuracy_reads_separable_classes_and_falls_to_chance_on_shuffled_labels():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 5, generator=g) * 10
    labels = torch.arange(300) % 3
    points = centres[labels] + torch.randn(300, 5, generator=g)
    assert metrics.knn_accuracy(points[:200], labels[:200], points[200:], labels[200:], k=5) == 1.0
    shuffled = labels[torch.randperm(300, generator=g)]
    assert metrics.knn_accuracy(points[:200], shuffled[:200], points[200:], shuffled[200:], k=5) < 0.6
    with pytest.raises(ValueError, match="at least 5 training points"):
        metrics.knn_accuracy(points[:4], labels[:4], points, labels, k=5)
    correct = metrics.knn_correct(points[:200], shuffled[:200], points[200:], shuffled[200:], k=5)
    assert correct.shape == (100,) and correct.float().mean().item() == metrics.knn_accuracy(
        points[:200], shuffled[:200], points[200:], shuffled[200:], k=5)


def test_mcnemar_is_the_exact_test_on_the_items_only_one_classifier_gets_right():
    from statsmodels.stats.contingency_tables import mcnemar

    # 100 items: both right on 80, only a on 12, only b on 3, both wrong on 5.
    a = torch.tensor([True] * 80 + [True] * 12 + [False] * 3 + [False] * 5)
    b = torch.tensor([True] * 80 + [False] * 12 + [True] * 3 + [False] * 5)
    expected = mcnemar([[80, 12], [3, 5]], exact=True).pvalue
    assert metrics.mcnemar_p(a, b) == pytest.approx(expected) and metrics.mcnemar_p(b, a) == pytest.approx(expected)
    assert metrics.mcnemar_p(a, b) < 0.05  # 12 against 3 is more than the items' noise
    assert metrics.mcnemar_p(a, a) == 1.0  # no item on which they differ
    # An accuracy difference of 0.011 on 1,000 items, from 11 against 0 discordant items, is one; from
    # 61 against 50 it is not: the test reads the disagreements, not the accuracies.
    few = torch.tensor([True] * 11 + [False] * 989), torch.zeros(1000, dtype=torch.bool)
    many = (torch.tensor([True] * 61 + [False] * 50 + [False] * 889),
            torch.tensor([False] * 61 + [True] * 50 + [False] * 889))
    assert metrics.mcnemar_p(*few) < 0.01 and metrics.mcnemar_p(*many) > 0.3


def test_sharpness_is_zero_for_flat_images_and_drops_when_images_are_blurred():
    sharp = (images(20, seed=4) > 0.5).float()
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, stride=1, padding=1)
    assert metrics.sharpness(torch.full((3, 1, 28, 28), 0.7)) == 0.0
    assert metrics.sharpness(sharp) > 2 * metrics.sharpness(blurred) > 0
