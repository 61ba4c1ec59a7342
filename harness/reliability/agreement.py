"""Agreement statistics of metric columns, from per-image values alone (nothing is recomputed).

Input: the per-image table of a run (``harness.report.per_image_table``: one row per method, table
column, image, with ``value`` and ``direction``). Every statistic first aligns the direction,
``score = value`` for higher-is-better columns and ``-value`` for lower-is-better ones, so that in
every column a higher score is better and a positive correlation means "the two columns agree
which method is better".

- ``krippendorff_alpha``: inter-rater reliability of one column (Tomsett et al. 2020, "Sanity
  Checks for Saliency Metrics", AAAI; Gevaert et al. 2024, attrbench's
  ``krippendorff_alpha_bar_plot.py``): each image is a rater that ranks the methods (rank 1 the
  best, ties averaged, among the methods with a finite value on that image); the units rated are
  the methods. Computed by the ``krippendorff`` package (``alpha(reliability_data=ranks
  [images, methods], level_of_measurement=...)``), ordinal (attrbench's choice) and interval
  levels. 1: every image ranks the methods alike; 0: the ranks agree no better than chance;
  below 0: systematic disagreement.
- ``alpha_interval``: a bootstrap interval of alpha over images (images resampled with
  replacement, ``numpy.random.default_rng(seed)``; BCa by default, percentile on request); alpha
  depends on the ranks only through the per-method counts of each rank value, so a resample is
  its rank-value counts weighted by how often each image was drawn, given to the package as
  ``value_counts`` (the same number as passing the resampled rows; a test checks it).
- ``agreement``: for every pair of columns, Spearman and Kendall (tau-b) correlation of the
  method means (pandas ``DataFrame.corr``, pairwise-complete methods) and the mean over images of
  the per-image Spearman correlation of the methods' scores (Tomsett et al.'s inter-method view of
  two metrics on the same image; images where it is undefined are left out).
- ``consistency``: internal consistency of the variants of one metric: the pairs of a variant
  group with their per-image rank correlation, the Kendall correlation of the method means and
  the Spearman correlation over all (method, image) cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import krippendorff
import numpy as np
import pandas as pd
from scipy import stats

from harness.reliability.ranking import value_cube
from harness.settings import check_choice

LEVELS = ("ordinal", "interval")


def aligned(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (per_image_table) with ``score``: ``value`` for ``up`` columns, ``-value`` for
    ``down`` ones (higher is better everywhere; NaN where undefined)."""
    values = table["value"].to_numpy(dtype=float, na_value=np.nan)
    sign = np.where(table["direction"].to_numpy() == "down", -1.0, 1.0)
    return table.assign(score=values * sign)


def score_cube(table: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """(``[methods, columns, images]`` aligned scores, NaN where undefined or not run; the
    methods, columns and images in the table's order)."""
    cube, methods, columns, images = value_cube(table)
    directions = table.drop_duplicates("metric").set_index("metric")["direction"]
    sign = np.where(directions.reindex(columns).to_numpy() == "down", -1.0, 1.0)
    return cube * sign[None, :, None], methods, columns, images


def score_matrix(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """``[images, methods]`` aligned scores of one column (NaN where undefined), in the table's
    order; methods and images without any finite value in the column are left out."""
    rows = table[table["metric"] == column]
    cube, methods, _, images = score_cube(rows)
    matrix = pd.DataFrame(cube[:, 0, :].T, index=pd.Index(images, name="image_id"),
                          columns=pd.Index(methods, name="method"))
    finite = np.isfinite(matrix.to_numpy())
    return matrix.loc[finite.any(axis=1), finite.any(axis=0)]


def image_ranks(matrix: pd.DataFrame) -> pd.DataFrame:
    """``[images, methods]`` rank of each method on each image: 1 the best score, ties averaged,
    among the methods with a finite score (NaN elsewhere)."""
    finite = matrix.where(np.isfinite(matrix.to_numpy(dtype=float)))
    return finite.rank(axis=1, ascending=False, method="average")


def _alpha(level: str, *, reliability_data=None, value_counts=None, value_domain=None) -> float:
    """The ``krippendorff`` package's alpha, NaN where it is undefined (fewer than two values in
    the domain, no unit rated twice, no expected disagreement)."""
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = krippendorff.alpha(reliability_data=reliability_data,
                                       value_counts=value_counts, value_domain=value_domain,
                                       level_of_measurement=level)
    except ValueError:
        return float("nan")
    return float(value)


def check_level(level: str) -> None:
    """``ConfigError("level: ...")`` unless ``level`` is one of ``LEVELS``."""
    check_choice("level", level, LEVELS)


def krippendorff_alpha(matrix: pd.DataFrame, level: str = "ordinal") -> float:
    """Krippendorff's alpha of the method ranking across the images of ``matrix`` ``[images,
    methods]`` (aligned scores): images are the raters, methods the units, values the per-image
    ranks. NaN when undefined (fewer than two methods or images, or every image ties every
    method)."""
    check_level(level)
    ranks = image_ranks(matrix).to_numpy(dtype=float)
    if ranks.shape[0] < 2 or ranks.shape[1] < 2 or not np.isfinite(ranks).any():
        return float("nan")
    return _alpha(level, reliability_data=ranks)


@dataclass(frozen=True)
class AlphaInterval:
    alpha: float
    low: float
    high: float
    n_images: int
    n_methods: int
    level: str
    resamples: int  # resamples with a defined alpha


def rank_counts(ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``[images, methods, V]`` one-hot of each image's rank of each method, ``[V]`` the sorted
    rank values): the per-rater part of Krippendorff's value counts."""
    domain = np.unique(ranks[np.isfinite(ranks)])
    onehot = (ranks[..., None] == domain[None, None, :]).astype(np.float64)
    return onehot, domain


def bca_quantiles(point: float, boots: np.ndarray, jackknife: np.ndarray, confidence: float
                  ) -> tuple[float, float]:
    """The BCa interval (Efron 1987; Efron & Tibshirani 1993, eqs. 14.10-14.15) of a statistic
    with value ``point``, bootstrap values ``boots`` ``[B]`` and leave-one-out values
    ``jackknife`` ``[n]``: bias correction z0 = Phi^-1(#{boots < point} / B, ties half),
    acceleration a = sum(d^3) / (6 sum(d^2)^(3/2)) with d = mean(jackknife) - jackknife, levels
    Phi(z0 + (z0 + z) / (1 - a (z0 + z))) of the bootstrap values."""
    below = (np.count_nonzero(boots < point) + 0.5 * np.count_nonzero(boots == point)) / boots.size
    below = min(max(below, 0.5 / boots.size), 1 - 0.5 / boots.size)
    z0 = stats.norm.ppf(below)
    jackknife = jackknife[np.isfinite(jackknife)]
    d = jackknife.mean() - jackknife if jackknife.size else np.zeros(1)
    spread = float(np.sum(d**2))
    acceleration = float(np.sum(d**3)) / (6 * spread**1.5) if spread > 0 else 0.0
    z = stats.norm.ppf([(1 - confidence) / 2, (1 + confidence) / 2])
    levels = stats.norm.cdf(z0 + (z0 + z) / (1 - acceleration * (z0 + z)))
    low, high = np.quantile(boots, levels)
    return float(low), float(high)


def alpha_interval(matrix: pd.DataFrame, level: str = "ordinal", *, n_resamples: int = 1000,
                   seed: int = 0, confidence: float = 0.95, method: str = "bca"
                   ) -> AlphaInterval:
    """Alpha of ``matrix`` ``[images, methods]`` with a ``confidence`` bootstrap interval over
    images: ``n_resamples`` resamples of the images with replacement drawn by
    ``numpy.random.default_rng(seed)`` (resamples where alpha is undefined are left out).

    ``method="bca"`` (default) corrects the percentile interval for the bootstrap's bias and
    skew (``bca_quantiles``, acceleration from leaving each image out): an image drawn twice is
    two raters that agree perfectly, so resampled alphas run high (median +0.04 at 8 images,
    +0.01 at 30, measured), which the bias correction removes; ``"percentile"`` takes the plain
    quantiles."""
    check_level(level)
    check_choice("method", method, ("bca", "percentile"))
    point = krippendorff_alpha(matrix, level)
    n_images, n_methods = matrix.shape
    if not np.isfinite(point) or n_images < 2:
        return AlphaInterval(point, float("nan"), float("nan"), n_images, n_methods, level, 0)
    ranks = image_ranks(matrix).to_numpy(dtype=float)
    onehot, domain = rank_counts(ranks)
    flat = onehot.reshape(n_images, -1)
    rng = np.random.default_rng(seed)
    values = []
    block = max(1, min(500, 5_000_000 // max(1, n_images)))
    for start in range(0, n_resamples, block):
        count = min(block, n_resamples - start)
        picks = rng.integers(0, n_images, (count, n_images))
        weights = np.stack([np.bincount(row, minlength=n_images) for row in picks])
        counts = (weights @ flat).reshape(count, n_methods, domain.size)
        values += [_alpha(level, value_counts=np.rint(c).astype(np.int64), value_domain=domain)
                   for c in counts]
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return AlphaInterval(point, float("nan"), float("nan"), n_images, n_methods, level, 0)
    if method == "percentile":
        low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    else:
        total = flat.sum(axis=0)
        jackknife = np.array([_alpha(level, value_counts=np.rint(total - flat[i]).astype(
            np.int64).reshape(n_methods, domain.size), value_domain=domain)
            for i in range(n_images)])
        low, high = bca_quantiles(point, values, jackknife, confidence)
    return AlphaInterval(point, float(low), float(high), n_images, n_methods, level,
                         int(values.size))


def method_means(table: pd.DataFrame) -> pd.DataFrame:
    """``[methods, columns]`` mean aligned score over the images with a finite value."""
    scores = aligned(table)
    scores = scores[np.isfinite(scores["score"])]
    means = scores.pivot_table(index="method", columns="metric", values="score", aggfunc="mean",
                               sort=False)
    return means.reindex(index=list(dict.fromkeys(table["method"])),
                         columns=list(dict.fromkeys(table["metric"])))


def row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[images]`` Spearman correlation of the rows of ``a`` and ``b`` ``[images, methods]``
    over the methods finite in both (NaN with fewer than two, or a constant row)."""
    out = np.full(a.shape[0], np.nan)
    both = np.isfinite(a) & np.isfinite(b)
    full = both.all(axis=1)
    if full.any() and a.shape[1] >= 2:
        ra = stats.rankdata(a[full], axis=1)
        rb = stats.rankdata(b[full], axis=1)
        ra -= ra.mean(axis=1, keepdims=True)
        rb -= rb.mean(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[full] = (ra * rb).sum(axis=1) / np.sqrt((ra**2).sum(axis=1) *
                                                        (rb**2).sum(axis=1))
    for index in np.flatnonzero(~full & (both.sum(axis=1) >= 2)):
        keep = both[index]
        ra, rb = stats.rankdata(a[index, keep]), stats.rankdata(b[index, keep])
        if np.ptp(ra) > 0 and np.ptp(rb) > 0:
            out[index] = np.corrcoef(ra, rb)[0, 1]
    return out


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """One row per ordered pair of columns (``first``, ``second``; the diagonal included):
    ``spearman_means`` and ``kendall_means`` (correlation of the method means, pandas), and
    ``per_image`` (the mean over images of the per-image Spearman correlation of the methods'
    scores), with ``n_methods`` and ``n_images`` behind them."""
    means = method_means(table)
    spearman = means.corr(method="spearman")
    kendall = means.corr(method="kendall")
    cube, _, columns, _ = score_cube(table)
    per_image: dict[tuple[int, int], tuple[float, int]] = {}
    for i in range(len(columns)):
        for j in range(i, len(columns)):
            values = row_spearman(cube[:, i, :].T, cube[:, j, :].T)
            defined = values[np.isfinite(values)]
            per_image[i, j] = per_image[j, i] = (
                float(defined.mean()) if defined.size else float("nan"), int(defined.size))
    rows = []
    for i, first in enumerate(columns):
        for j, second in enumerate(columns):
            both = means[[first, second]].dropna()
            rows.append({"first": first, "second": second,
                         "spearman_means": float(spearman.loc[first, second]),
                         "kendall_means": float(kendall.loc[first, second]),
                         "per_image": per_image[i, j][0], "n_methods": int(len(both)),
                         "n_images": per_image[i, j][1]})
    return pd.DataFrame(rows)


def cell_correlation(table: pd.DataFrame, first: str, second: str) -> float:
    """Spearman correlation of the aligned scores of two columns over every (method, image) cell
    finite in both."""
    scores = aligned(table[table["metric"].isin([first, second])])
    wide = scores.pivot_table(index=["method", "image_id"], columns="metric", values="score",
                              aggfunc="first")
    if first not in wide or second not in wide:
        return float("nan")
    both = wide[[first, second]].dropna()
    if len(both) < 2 or both[first].nunique() < 2 or both[second].nunique() < 2:
        return float("nan")
    return float(stats.spearmanr(both[first], both[second]).statistic)


def consistency(table: pd.DataFrame, groups: Sequence[Sequence[str]],
                pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Internal consistency of each variant group (two or more columns that measure one metric
    differently): per pair, ``per_image`` and ``kendall_means`` (from ``agreement``; computed
    here when ``pairs`` is None) and ``cells`` (``cell_correlation``)."""
    pairs = agreement(table) if pairs is None else pairs
    lookup = pairs.set_index(["first", "second"])
    rows = []
    for group in groups:
        name = " / ".join(group)
        for first, second in combinations(group, 2):
            if (first, second) not in lookup.index:
                continue
            row = lookup.loc[(first, second)]
            rows.append({"group": name, "first": first, "second": second,
                         "per_image": float(row["per_image"]),
                         "kendall_means": float(row["kendall_means"]),
                         "cells": cell_correlation(table, first, second),
                         "n_images": int(row["n_images"])})
    return pd.DataFrame(rows, columns=["group", "first", "second", "per_image",
                                       "kendall_means", "cells", "n_images"])
