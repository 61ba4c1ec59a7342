"""Coverage of the bootstrap intervals of ``harness.stats.bootstrap_ci`` (README, Statistics).

For each distribution, draws ``--trials`` samples of size n with known mean, builds the 95%
interval of each (``--resamples`` resamples, seed = trial index) and prints the fraction that
covers the true mean, for the percentile and BCa methods. Usage:

    .venv/bin/python benchmarks/bootstrap_coverage.py [--trials 2000] [--resamples 2000]
"""

from __future__ import annotations

import argparse

import numpy as np

from harness.stats import CI_METHODS, bootstrap_ci

CASES = {
    "normal, n = 40": (lambda rng: rng.normal(2.0, 1.0, 40), 2.0),
    "exponential, n = 40": (lambda rng: rng.exponential(1.0, 40), 1.0),
    "exponential, n = 15": (lambda rng: rng.exponential(1.0, 15), 1.0),
    "lognormal(0, 1), n = 20": (lambda rng: rng.lognormal(0.0, 1.0, 20), float(np.exp(0.5))),
    "beta(0.5, 4), n = 20": (lambda rng: rng.beta(0.5, 4.0, 20), 0.5 / 4.5),
}


def coverage(method: str, draw, true_mean: float, trials: int, resamples: int) -> float:
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(trials):
        interval = bootstrap_ci(draw(rng), n_resamples=resamples, seed=trial, method=method)
        covered += interval.low <= true_mean <= interval.high
    return covered / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    print(f"coverage of the true mean by 95% intervals, {args.trials} samples each, "
          f"{args.resamples} resamples")
    print("| data | " + " | ".join(CI_METHODS) + " |")
    print("|---|" + "---|" * len(CI_METHODS))
    for name, (draw, mean) in CASES.items():
        rates = [coverage(m, draw, mean, args.trials, args.resamples) for m in CI_METHODS]
        print(f"| {name} | " + " | ".join(f"{r:.3f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
