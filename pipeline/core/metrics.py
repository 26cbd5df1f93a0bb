"""Evaluation metrics as small pure functions, plus `Scorer`, which holds a real reference set.

Sample-quality scores live in the feature space of the project's own classifier (its
penultimate layer), because Inception weights cannot be downloaded here. They are "FID-style":
comparable between runs that share the classifier, not with published FIDs.

- Fréchet distance and KID: torchmetrics (`FrechetInceptionDistance`, `KernelInceptionDistance`)
  with the classifier as a custom feature extractor; a maintained implementation, computed in
  float64.
- Precision and recall on k-nearest-neighbour manifolds: written here, because torchmetrics has
  no such metric for images; it is twenty lines on top of `torch.cdist`.
- VAE quantities (KL per dimension, active units, the importance-weighted likelihood bound): written
  here from the papers they cite, on the encoder and decoder of this project.
"""

from __future__ import annotations

import math
import warnings

import torch

from pipeline.core.losses import gaussian_kl, gaussian_kl_terms, reconstruction_loss
from pipeline.core.models import Precomputed, reparameterize, standard_normal

LOG_2PI = math.log(2 * math.pi)
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016, section 5.2
CLASS_SHARE = 0.01  # a class "appears" among samples when it has at least this share of them


# ---------------------------------------------------------------------------------------------
# VAE


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over images of KL(q(z_j|x) || N(0, 1)) for each latent dimension j, in nats.

    mu, logvar: (N, D) -> (D,). Sums to the mean of `gaussian_kl` over the same images.
    """
    return gaussian_kl_terms(mu, logvar).mean(dim=0)


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of latent dimensions j with Var_x(E[z_j | x]) > threshold (Burda et al. 2016).

    mu: (N, D), the posterior means of N images. A dimension whose mean does not move with the
    input carries no information about it: posterior collapse.
    """
    return int((mu.var(dim=0, unbiased=True) > threshold).sum())


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension. (..., D) -> (...)."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=-1)


def log_diagonal_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension. (..., D) -> (...)."""
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + LOG_2PI).sum(dim=-1)


@torch.inference_mode()
def importance_log_weights(model, x: torch.Tensor, k: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for z_i ~ q(z|x), i = 1..k.

    x: (B, C, H, W) -> (k, B). `kind` is the VAE's reconstruction likelihood (bce or mse), so the
    weights are in the same units as its negative ELBO.
    """
    mu, logvar = model.encoder(x)  # (B, D)
    z = reparameterize(mu, logvar, standard_normal(mu, generator, samples=k))  # (k, B, D)
    logits = model.decoder.logits(z.flatten(0, 1))  # (k * B, C, H, W)
    log_px = -reconstruction_loss(logits, x.repeat(k, 1, 1, 1), kind).view(k, -1)  # (k, B)
    return log_px + log_standard_normal(z) - log_diagonal_normal(z, mu, logvar)


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound log (1/k) sum_i w_i (Burda et al. 2016, eq. 8). (k, B) -> (B,).

    By Jensen's inequality it is >= the mean of log w_i (the ELBO estimate from the same samples),
    and it tightens towards log p(x) as k grows; its negation estimates the NLL.
    """
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


@torch.inference_mode()
def vae_test_metrics(model, x: torch.Tensor, *, kind: str, iwae_samples: int, seed: int,
                     batch_size: int = 250) -> dict:
    """The VAE's numbers on `x` (N, C, H, W) in [0, 1], per image unless named otherwise.

    recon_mse_per_pixel: squared error of the reconstruction decoded from the posterior mean.
    kl: KL(q(z|x) || p(z)) in nats. neg_elbo: single-sample negative ELBO. iwae_nll: negative
    importance-weighted bound with `iwae_samples` samples. kl_per_dim (list) and active_units.
    latent_means is the (N, D) tensor of posterior means the last three are computed from.
    """
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    mus, logvars, sq_errors, neg_elbos, iwaes = [], [], [], [], []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        mu, logvar = model.encoder(batch)
        sq_errors.append((model.decoder(mu) - batch).pow(2).flatten(1).mean(dim=1))
        log_weights = importance_log_weights(model, batch, iwae_samples, kind, generator)
        neg_elbos.append(-log_weights[0])  # one sample: the usual ELBO estimate
        iwaes.append(-iwae_bound(log_weights))
        mus.append(mu)
        logvars.append(logvar)
    mu, logvar = torch.cat(mus), torch.cat(logvars)
    per_dim = kl_per_dimension(mu, logvar)
    return {
        "recon_mse_per_pixel": torch.cat(sq_errors).mean().item(),
        "kl": gaussian_kl(mu, logvar).mean().item(),
        "neg_elbo": torch.cat(neg_elbos).mean().item(),
        "iwae_nll": torch.cat(iwaes).mean().item(),
        "iwae_samples": iwae_samples,
        "active_units": active_units(mu),
        "kl_per_dim": per_dim.tolist(),
        "latent_mean_variance": mu.var(dim=0).tolist(),
        "latent_means": mu,
    }


def gradient_estimator_variance(log_likelihood, mu: torch.Tensor, logvar: torch.Tensor, samples: int,
                                generator: torch.Generator) -> dict[str, float]:
    """How noisy two single-sample estimators of d/dmu E_q[log p(x|z)] are, q = N(mu, diag(sigma^2)).

    reparameterised:  g = d/dmu f(mu + sigma * eps)           (the gradient flows through the sample)
    score_function:   g = f(z) * d/dmu log q(z) = f(z) * eps / sigma      (REINFORCE, no path needed)
    score_function_baseline: the same with f(z) - mean_s f(z_s), the usual variance reduction.
    Both are unbiased for the same gradient. `log_likelihood(z)` maps codes (S, B, D) to log p(x|z)
    per sample and image (S, B); mu, logvar: (B, D). Returns, per estimator, the variance over
    `samples` draws averaged over images and dimensions, and the squared mean gradient on the same
    scale (`signal`), so the variances read against the size of what they estimate.
    """
    mu, logvar = mu.detach(), logvar.detach()
    eps = standard_normal(mu, generator, samples=samples)  # (S, B, D)
    z = reparameterize(mu, logvar, eps).requires_grad_(True)
    sigma = torch.exp(0.5 * logvar)
    with torch.enable_grad():
        f = log_likelihood(z)  # (S, B)
        (path,) = torch.autograd.grad(f.sum(), z)  # df/dz per sample = the reparameterised gradient (dz/dmu = 1)
    f = f.detach()[..., None]  # (S, B, 1)
    score = eps / sigma
    estimates = {"reparameterised": path, "score_function": f * score,
                 "score_function_baseline": (f - f.mean(dim=0, keepdim=True)) * score}
    result = {name: g.var(dim=0).mean().item() for name, g in estimates.items()}
    result["signal"] = path.mean(dim=0).pow(2).mean().item()
    return result


def knn_correct(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                k: int = 5, batch_size: int = 500) -> torch.Tensor:
    """Whether each `test` point (M, F) is classified correctly (M,) by the majority label of its k
    nearest `train` points (N, F).

    A probe of what a representation keeps: class information that a k-NN vote can read off.
    Ties go to the smallest label, so the result is deterministic.
    """
    if len(train) < k:
        raise ValueError(f"a {k}-NN probe needs at least {k} training points, got {len(train)}")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = []
    for start in range(0, len(test), batch_size):
        nearest = torch.cdist(test[start : start + batch_size], train).topk(k, largest=False).indices  # (b, k)
        votes = torch.nn.functional.one_hot(train_labels[nearest], num_classes).sum(dim=1)  # (b, classes)
        correct.append(votes.argmax(dim=1) == test_labels[start : start + batch_size])
    return torch.cat(correct)


def knn_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                 k: int = 5, batch_size: int = 500) -> float:
    """Share of `test` points that `knn_correct` classifies correctly."""
    return knn_correct(train, train_labels, test, test_labels, k, batch_size).float().mean().item()


def mcnemar_p(correct_a: torch.Tensor, correct_b: torch.Tensor) -> float:
    """McNemar's exact test of two classifiers' accuracies on the same items (M,) bool: the two-sided
    binomial test that the items only `a` gets right and those only `b` gets right are equally
    likely (1.0 when there are none). Whether an accuracy difference on one test set is more than
    the set's own sampling noise."""
    from scipy.stats import binomtest

    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((correct_b & ~correct_a).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def sharpness(images: torch.Tensor) -> float:
    """Mean over images of the variance of their Laplacian (N, C, H, W) in [0, 1]: the usual blur
    measure. Blurred images have weak second derivatives, so a low value means blur."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=images.device)
    channels = images.shape[1]
    laplacian = torch.nn.functional.conv2d(images.float(), kernel.expand(channels, 1, 3, 3), groups=channels)
    return laplacian.flatten(1).var(dim=1).mean().item()


# ---------------------------------------------------------------------------------------------
# Sets of images in a feature space


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of feature sets (N, F), (M, F).

    Each set's manifold is the union of balls around its points, of radius the distance to the
    point's k-th nearest neighbour in the same set. Precision: the share of fake points inside the
    real manifold (are samples realistic?). Recall: the share of real points inside the fake
    manifold (is the data's variety covered?). Both in [0, 1].
    """
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points in each set")

    def radii(points: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(points, points)  # (N, N), 0 on the diagonal
        return distances.kthvalue(k + 1, dim=1).values  # k-th neighbour, skipping the point itself

    real, fake = real.double(), fake.double()
    between = torch.cdist(fake, real)  # (M, N)
    precision = (between <= radii(real)[None, :]).any(dim=1).double().mean().item()
    recall = (between <= radii(fake)[:, None]).any(dim=0).double().mean().item()
    return precision, recall


def class_spread(labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """How the classifier's predicted labels of generated images spread over the classes.

    classes: how many classes hold at least CLASS_SHARE of the samples (a collapsed generator
    shows few). label_entropy: entropy of the label histogram in nats (ln 10 = 2.303 for ten
    equally common classes, 0 when every sample gets one label).
    """
    share = torch.bincount(labels.flatten().long(), minlength=num_classes).double() / labels.numel()
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    return {"classes": int((share >= CLASS_SHARE).sum()), "label_entropy": entropy.item()}


FEATURE_BATCH = 100  # images per pass of the classifier: fits a core's caches (1.8x faster than 500, same bytes)


class Scorer:
    """Scores image sets against one real reference set in a classifier's feature space.

    Each image goes through the classifier once: its features feed the FID and KID states (which
    torchmetrics is given as precomputed, through an identity extractor) and the precision/recall,
    and the classifier's head reads its label off the same features. The reference's features are
    computed once; each `score` call returns the FID-style score, KID (mean and std over subsets),
    precision, recall, the class spread and the sharpness of one generated set.
    """

    def __init__(self, classifier, reference: torch.Tensor, *, seed: int, kid_subset_size: int | None = None,
                 pr_neighbours: int | None = None, batch_size: int = 500):
        """Without `kid_subset_size` and `pr_neighbours` only `fid_and_labels` is available."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        # channels_last: the convolutions' fast layout on CPU (4.5x with FEATURE_BATCH on one thread,
        # features within float32 rounding of the default layout's: docs/benchmarks.md).
        self.classifier = classifier.eval().to(memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.pr_neighbours = pr_neighbours
        self.kid_subset_size = kid_subset_size
        self.seed = seed
        features = Precomputed(classifier.num_features)
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False)
        self.kid = None
        if kid_subset_size:
            with warnings.catch_warnings():  # that it keeps every feature: a few thousand small vectors here
                warnings.filterwarnings("ignore", message=".*will save all extracted features")
                self.kid = KernelInceptionDistance(feature=features, subset_size=kid_subset_size,
                                                   reset_real_features=False)
        self.fid.to(reference.device)
        if self.kid is not None:
            self.kid.to(reference.device)
        self.reference_size = len(reference)
        self.reference_features, _ = self._features(reference)
        self._update(self.reference_features, real=True)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's features (N, F) and predicted labels (N,) of `images`, in batches."""
        features, labels = [], []
        for start in range(0, len(images), FEATURE_BATCH):
            batch = images[start : start + FEATURE_BATCH].contiguous(memory_format=torch.channels_last)
            batch_features = self.classifier.features(batch)
            features.append(batch_features)
            labels.append(self.classifier.head(batch_features).argmax(dim=1))
        return torch.cat(features), torch.cat(labels)

    def _update(self, features: torch.Tensor, real: bool, kid: bool = True) -> None:
        """Feed features to the FID state (and the KID state, if any and `kid`), in batches."""
        for start in range(0, len(features), self.batch_size):
            batch = features[start : start + self.batch_size]
            self.fid.update(batch, real=real)
            if kid and self.kid is not None:
                self.kid.update(batch, real=real)

    @torch.no_grad()
    def fid_and_labels(self, images: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The FID-style score of `images` (N, C, H, W) in [0, 1] and their predicted labels (for
        training curves: no KID or precision/recall)."""
        return self.fids_and_labels(images.unsqueeze(0))[0]

    @torch.no_grad()
    def fids_and_labels(self, sets: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
        """`fid_and_labels` of each of S image sets (S, N, C, H, W), the seeds' samples: the
        classifier's feature pass runs once over all of them."""
        features, labels = self._features(sets.flatten(0, 1))
        count, scored = sets.shape[1], []
        for start in range(0, len(features), count):
            self.fid.reset()
            self._update(features[start : start + count], real=False, kid=False)
            scored.append((self.fid.compute().item(), labels[start : start + count]))
        return scored

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> dict[str, float]:
        """All scores of `images` (N, C, H, W) in [0, 1] against the reference."""
        if self.kid is None or self.pr_neighbours is None:
            raise ValueError("this Scorer was made for FID alone (no kid_subset_size, pr_neighbours)")
        if min(len(images), self.reference_size) < self.kid_subset_size:
            raise ValueError(f"KID with subsets of {self.kid_subset_size} needs at least that many images, "
                             f"got {len(images)}")
        self.fid.reset()
        self.kid.reset()
        features, labels = self._features(images)
        self._update(features, real=False)
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global RNG
            torch.manual_seed(self.seed)
            kid_mean, kid_std = self.kid.compute()
        precision, recall = precision_recall(self.reference_features, features, self.pr_neighbours)
        spread = class_spread(labels, self.classifier.num_classes)
        return {"fid": self.fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item(),
                "precision": precision, "recall": recall, **spread, "sharpness": sharpness(images)}
