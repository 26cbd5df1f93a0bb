"""How often does each 95% interval cover the true mean, at the seed counts we use (n = 3, 4, 5)?

    python benchmarks/interval_coverage.py [--repetitions 1000]

Draws `n` values from a distribution with a known mean, many times, and counts how often the
interval contains that mean: Student's t-interval (pipeline.core.stats.mean_interval, what the
project uses) against the percentile and BCa bootstrap of scipy.stats.bootstrap. Two distributions:
normal, and a right-skewed lognormal (seed-to-seed spreads of FID-style scores are skewed). The
figures justify the choice written in pipeline/core/stats.py.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from scipy import stats as scipy_stats

from pipeline.core.stats import mean_interval

DISTRIBUTIONS = {
    "normal": (lambda rng, n: rng.normal(446.0, 90.0, size=n), 446.0),
    "lognormal": (lambda rng, n: rng.lognormal(0.0, 0.5, size=n), float(np.exp(0.5**2 / 2))),
}


def bootstrap_covers(values: np.ndarray, truth: float, method: str, rng) -> bool:
    with warnings.catch_warnings():  # degenerate resamples at n = 3 warn; the interval is still returned
        warnings.simplefilter("ignore")
        result = scipy_stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=999, method=method,
                                       random_state=rng)
    low, high = result.confidence_interval
    return bool(low <= truth <= high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=1000)
    args = parser.parse_args()
    print(f"coverage of nominal 95% intervals of the mean over {args.repetitions} repetitions")
    print("distribution  n  t-interval  bootstrap(percentile)  bootstrap(BCa)")
    for name, (draw, truth) in DISTRIBUTIONS.items():
        for n in (3, 4, 5):
            rng = np.random.default_rng(n)
            covered = {"t": 0, "percentile": 0, "BCa": 0}
            for _ in range(args.repetitions):
                values = draw(rng, n)
                covered["t"] += mean_interval(values).includes(truth)
                covered["percentile"] += bootstrap_covers(values, truth, "percentile", rng)
                covered["BCa"] += bootstrap_covers(values, truth, "BCa", rng)
            rates = {k: v / args.repetitions for k, v in covered.items()}
            print(f"{name:<12}  {n}  {rates['t']:>10.3f}  {rates['percentile']:>21.3f}  {rates['BCa']:>14.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
