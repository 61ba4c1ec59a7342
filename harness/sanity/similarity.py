"""Similarity between an original and a randomized saliency map (Adebayo et al. 2018, "Sanity
Checks for Saliency Maps", section 3 and reference code ``sanity_checks_saliency``).

Each measure takes two 2-D maps ``[H, W]`` (numpy) and returns a float. A measure that is
undefined for the pair (a constant map has no ranks, no correlation and no structure) raises
``UndefinedSimilarity`` with the reason, so callers record it instead of a silent NaN.

- ``spearman_abs``: Spearman rank correlation of |a| and |b| (ties get average ranks);
- ``spearman_signed``: Spearman of the signed maps (a method's signed variant);
- ``ssim``: SSIM (``skimage.metrics.structural_similarity``, ``gaussian_weights=True``,
  ``sigma=1.5``, ``use_sample_covariance=False``, ``data_range=1``) of the maps each min-max
  scaled to [0, 1], as 2-D images;
- ``hog``: Spearman between ``skimage.feature.hog`` descriptors (``pixels_per_cell=(16, 16)``,
  ``cells_per_block=(1, 1)``) of the [0, 1]-scaled maps;
- ``pearson``: Pearson correlation of |a| and |b|.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats
from skimage.feature import hog
from skimage.metrics import structural_similarity


class UndefinedSimilarity(ValueError):
    """The similarity of this pair of maps is undefined (e.g. a constant map)."""


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"maps must be 2-D and equal in shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UndefinedSimilarity("a map contains NaN or inf")
    return a, b


def _not_constant(*maps: np.ndarray) -> None:
    for index, array in enumerate(maps):
        if np.ptp(array) == 0:
            which = "original" if index == 0 else "randomized"
            raise UndefinedSimilarity(f"the {which} map is constant ({float(array.flat[0])!r})")


def scale01(array: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (the maps must not be constant)."""
    low, high = array.min(), array.max()
    return (array - low) / (high - low)


def spearman_abs(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _check(a, b)
    a, b = np.abs(a), np.abs(b)
    _not_constant(a, b)
    return float(stats.spearmanr(a.ravel(), b.ravel()).statistic)


def spearman_signed(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _check(a, b)
    _not_constant(a, b)
    return float(stats.spearmanr(a.ravel(), b.ravel()).statistic)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _check(a, b)
    a, b = np.abs(a), np.abs(b)
    _not_constant(a, b)
    return float(stats.pearsonr(a.ravel(), b.ravel()).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _check(a, b)
    _not_constant(a, b)
    return float(structural_similarity(scale01(a), scale01(b), data_range=1.0,
                                       gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def hog_features(array: np.ndarray) -> np.ndarray:
    return hog(scale01(array), pixels_per_cell=(16, 16), cells_per_block=(1, 1),
               feature_vector=True)


def hog_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _check(a, b)
    _not_constant(a, b)
    features_a, features_b = hog_features(a), hog_features(b)
    _not_constant(features_a[None], features_b[None])
    return float(stats.spearmanr(features_a, features_b).statistic)


MEASURES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "spearman_abs": spearman_abs,
    "spearman_signed": spearman_signed,
    "ssim": ssim,
    "hog": hog_similarity,
    "pearson": pearson,
}
SIGNED_MEASURES = {"spearman_signed"}
