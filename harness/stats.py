"""Statistics for papers: per-image values are the unit.

- ``bootstrap_ci``: percentile bootstrap of the mean (Efron & Tibshirani 1993), seeded;
- ``paired_wilcoxon``: Wilcoxon signed-rank test of paired per-image values (scipy, two-sided,
  zero differences dropped by Wilcoxon's rule, exact distribution for small n without ties/zeros,
  normal approximation otherwise; scipy's ``method="auto"``);
- ``holm``: Holm's step-down correction of a family of p-values (Holm 1979).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    level: float


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, level: float = 0.95,
                 n_resamples: int = 10_000, seed: int = 0) -> Interval:
    """Mean of ``values`` with a percentile-bootstrap ``level`` interval from ``n_resamples``
    resamples drawn with ``numpy.random.default_rng(seed)``. n = 1 gives a degenerate interval."""
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one finite value")
    mean = float(data.mean())
    if data.size == 1:
        return Interval(mean, mean, mean, 1, level)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):  # bounded memory for large n
        count = min(1000, n_resamples - start)
        indices = rng.integers(0, data.size, (count, data.size))
        means[start:start + count] = data[indices].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(mean, float(low), float(high), int(data.size), level)


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the paired differences a - b (NaN pairs dropped;
    1.0 when every difference is zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in size: {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    differences = a[keep] - b[keep]
    if differences.size == 0 or np.all(differences == 0):
        return 1.0
    return float(stats.wilcoxon(differences, alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values: sort ascending, p_(i) * (m - i + 1), running maximum, capped at 1,
    returned in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, p[index] * (m - rank)))
        adjusted[index] = running
    return adjusted.tolist()
