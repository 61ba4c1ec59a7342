"""Similarity between an original and a randomized saliency map (Adebayo et al. 2018, "Sanity
Checks for Saliency Maps", section 3, and its reference code ``adebayoj/sanity_checks_saliency``,
``notebooks/inceptionv3_cascading_randomization.ipynb``, run with scikit-image 0.15 and PAIR
``saliency`` 0.0.4).

A measure compares one *view* of the two maps. Views come from a map normalisation convention:

``reference`` (the notebook's pipeline) starts from the raw attribution ``R`` ``[H, W, C]`` (the
pixel-space attribution before any channel reduction; a method with only a 2-D map, such as
Grad-CAM, gives ``C = 1``, which equals the notebook's ``three_dims=True`` copy of the map into 3
channels for every view below):

- ``abs``: PAIR's ``VisualizeImageGrayscale``: ``s = sum_c |R|``, ``(s - min s) / (p99(s) - min s)``
  clipped to [0, 1] (``p99`` = ``numpy.percentile(s, 99)``);
- ``signed``: PAIR's ``VisualizeImageDiverging``: ``s = sum_c R``, ``span = |p99(s)|``,
  ``(s + span) / (2 span)`` clipped to [-1, 1];
- ``unit``: the notebook's ``normalize_image``: ``R`` cast to float32, min-max scaled to [0, 1]
  over all pixels and channels, kept ``[H, W, C]`` (SSIM and HOG then run multichannel, as the
  notebook's ``compare_ssim(..., multichannel=True)`` and skimage 0.15's ``hog``, which detects a
  3-D image as multichannel, did).

``method`` (the method's own map ``m`` ``[H, W]`` as the table reports it, e.g. the max over
channels of |gradient| for ``vanilla``): ``abs`` = ``|m|``, ``signed`` = the method's signed
variant, ``unit`` = ``m`` min-max scaled to [0, 1].

``second_moment`` (Binder, Weber, Lapuschkin, Montavon, Müller & Samek, CVPR 2023, "Shortcomings
of Top-Down Randomization-Based Sanity Checks"; Quantus 0.6
``normalise_by_average_second_moment_estimate``): each map divided by the square root of its
average second moment, ``m / sqrt(mean(m^2))`` (every value's mean squared distance to zero is
1; no shift, no clipping): ``abs`` = ``|m| / rms(m)``, ``signed`` = ``s / rms(s)`` of the signed
variant, ``unit`` = ``m / rms(m)``. The rank measures (Spearman, HOG) do not change under this
positive per-map scale; SSIM does: the maps are no longer in [0, 1], so SSIM on these views uses
the pair's joint range ``max(a, b) - min(a, b)`` as its data range (Quantus' ``ssim``). Quantus
0.6 divides a whole batch of maps by one batch-wide second moment (its default normalise axes
include the batch axis); the harness normalises each map, as Binder et al. define it (no
difference for rank measures or for an equal-width histogram's entropy).

Measures (``MEASURES``; each ``(view, comparison)``):

- ``spearman_abs`` / ``spearman_signed``: Spearman rank correlation of the ``abs`` / ``signed``
  views (ties get average ranks; ``scipy.stats.spearmanr``, as the notebook);
- ``ssim``: SSIM of the ``unit`` views exactly as the reference computed it with skimage 0.15's
  ``compare_ssim(a, b, gaussian_weights=True, multichannel=True)``: Gaussian weights (sigma 1.5,
  truncate 3.5: an 11 x 11 window), the *sample* covariance (N / (N - 1), N = 121), and a data
  range of 2.0, which 0.15 inferred from the float dtype's range [-1, 1] although the maps lie in
  [0, 1]; channels averaged. This is the convention of the paper's figures;
- ``ssim_wang``: SSIM as Wang et al. 2004 define it for [0, 1] images: data range 1, population
  covariance, the same Gaussian window (lower values than ``ssim`` on the same pair: C1 and C2 are
  4x smaller);
- ``hog``: Spearman rank correlation between ``skimage.feature.hog`` descriptors of the ``unit``
  views with the reference's call ``hog(map, pixels_per_cell=(16, 16))`` and skimage's defaults:
  9 orientations, 3 x 3 cells per block, L2-Hys block normalisation (multichannel for C > 1).
  Maps under 48 x 48 pixels hold no 3 x 3-cell block: undefined, named;
- ``pearson``: Pearson correlation of the ``abs`` views (not in the paper).

A measure that is undefined for a pair (a constant map has no ranks, no correlation and no
structure; a map too small for the SSIM window or a HOG block) raises ``UndefinedSimilarity`` with
the reason, so callers record it instead of a silent NaN.

``MEASURE_VERSION`` numbers these definitions; records carry it. Version 1 (records without the
field, harness 0.1) computed ``ssim`` with data range 1 and population covariance (what is now
``ssim_wang``) and ``hog`` with 1 x 1-cell blocks, both on the method's own map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats
from skimage.feature import hog
from skimage.metrics import structural_similarity

from harness.errors import MetricError

MEASURE_VERSION = 2
NORMALISATIONS = ("reference", "method", "second_moment")
VIEWS = ("abs", "signed", "unit")
HOG_CELL = 16
HOG_BLOCK = 3
SSIM_WINDOW = 11  # 2 * int(3.5 * 1.5 + 0.5) + 1, skimage's window for sigma 1.5, truncate 3.5


class UndefinedSimilarity(MetricError):
    """The similarity of this pair of maps is undefined (e.g. a constant map)."""


# ----------------------------------------------------------------------------- views


def _finite(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if not np.isfinite(array).all():
        raise UndefinedSimilarity("contains NaN or inf")
    return array


def scale01(array: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant array is ``UndefinedSimilarity``."""
    low, high = array.min(), array.max()
    if high == low:
        raise UndefinedSimilarity(f"is constant ({float(low)!r})")
    return (array - low) / (high - low)


def _as_raw(raw: np.ndarray) -> np.ndarray:
    """``[H, W]`` or ``[H, W, C]`` -> ``[H, W, C]`` float64."""
    raw = _finite(raw)
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if raw.ndim != 3:
        raise MetricError(f"a raw attribution must be [H, W] or [H, W, C], got {raw.shape}")
    return raw


def abs_norm(raw: np.ndarray, percentile: float = 99) -> np.ndarray:
    """PAIR saliency 0.0.4 ``VisualizeImageGrayscale``: ``[H, W(, C)]`` -> ``[H, W]`` in [0, 1]."""
    summed = np.abs(_as_raw(raw)).sum(axis=2)
    vmax, vmin = np.percentile(summed, percentile), summed.min()
    if vmax == vmin:
        raise UndefinedSimilarity(f"has its {percentile}th percentile equal to its minimum "
                                  f"({float(vmin)!r}): no grayscale normalisation")
    return np.clip((summed - vmin) / (vmax - vmin), 0, 1)


def diverging_norm(raw: np.ndarray, percentile: float = 99) -> np.ndarray:
    """PAIR saliency 0.0.4 ``VisualizeImageDiverging``: ``[H, W(, C)]`` -> ``[H, W]`` in [-1, 1].
    """
    summed = _as_raw(raw).sum(axis=2)
    span = abs(np.percentile(summed, percentile))
    if span == 0:
        raise UndefinedSimilarity(f"has a signed {percentile}th percentile of 0: no diverging "
                                  "normalisation")
    return np.clip((summed + span) / (2 * span), -1, 1)


def unit_norm(raw: np.ndarray) -> np.ndarray:
    """The reference notebook's ``normalize_image``: float32, min-max over all pixels and
    channels, ``[H, W, C]`` (returned as float64 holding the float32 values)."""
    values = _as_raw(raw).astype(np.float32)
    low, high = values.min(), values.max()
    if high == low:
        raise UndefinedSimilarity(f"is constant ({float(low)!r})")
    return ((values - low) / (high - low)).astype(np.float64)


def reference_views(raw: np.ndarray) -> dict[str, np.ndarray | UndefinedSimilarity]:
    """The ``reference`` convention's views of a raw attribution ``[H, W(, C)]``; a view that is
    undefined holds the ``UndefinedSimilarity`` saying why."""
    return {name: _attempt(fn, raw) for name, fn in
            (("abs", abs_norm), ("signed", diverging_norm), ("unit", unit_norm))}


def method_views(saliency_map: np.ndarray, signed_map: np.ndarray | None
                 ) -> dict[str, np.ndarray | UndefinedSimilarity]:
    """The ``method`` convention's views of a method's map ``[H, W]`` and its signed variant."""
    saliency_map = np.asarray(saliency_map)
    if saliency_map.ndim != 2:
        raise MetricError(f"a map must be 2-D, got shape {saliency_map.shape}")
    signed = (UndefinedSimilarity("has no signed variant (the method has none)")
              if signed_map is None else _attempt(_finite, signed_map))
    return {"abs": _attempt(lambda m: np.abs(_finite(m)), saliency_map), "signed": signed,
            "unit": _attempt(lambda m: scale01(_finite(m)), saliency_map)}


def second_moment(array: np.ndarray) -> np.ndarray:
    """``a / sqrt(mean(a^2))`` (Binder et al. 2023; Quantus ``normalise_by_average_second_moment_
    estimate`` applied to one map); a map that is zero everywhere is ``UndefinedSimilarity``."""
    array = _finite(array)
    root = float(np.sqrt(np.mean(array * array)))
    if root == 0:
        raise UndefinedSimilarity("is zero everywhere: no second-moment normalisation")
    return array / root


def second_moment_views(saliency_map: np.ndarray, signed_map: np.ndarray | None
                        ) -> dict[str, np.ndarray | UndefinedSimilarity]:
    """The ``second_moment`` convention's views of a method's map ``[H, W]`` and its signed
    variant."""
    saliency_map = np.asarray(saliency_map)
    if saliency_map.ndim != 2:
        raise MetricError(f"a map must be 2-D, got shape {saliency_map.shape}")
    normalised = _attempt(second_moment, saliency_map)
    signed = (UndefinedSimilarity("has no signed variant (the method has none)")
              if signed_map is None else _attempt(second_moment, signed_map))
    return {"abs": normalised if isinstance(normalised, UndefinedSimilarity)
            else np.abs(normalised), "signed": signed, "unit": normalised}


def _attempt(fn, array):
    try:
        return fn(array)
    except UndefinedSimilarity as reason:
        return reason


# ----------------------------------------------------------------------------- comparisons


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _finite(a), _finite(b)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise MetricError(f"maps must be [H, W] or [H, W, C] and equal in shape, got {a.shape} "
                         f"and {b.shape}")
    for which, array in (("original", a), ("randomized", b)):
        if np.ptp(array) == 0:
            raise UndefinedSimilarity(f"the {which} map is constant ({float(array.flat[0])!r})")
    return a, b


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _pair(a, b)
    return float(stats.spearmanr(a.ravel(), b.ravel()).statistic)


def _checked_map(array: np.ndarray, which: str) -> np.ndarray:
    """One map of a pair, checked as ``_pair`` checks it: finite, 2-D or 3-D, not constant."""
    array = _finite(array)
    if array.ndim not in (2, 3):
        raise MetricError(f"maps must be [H, W] or [H, W, C], got {array.shape}")
    if np.ptp(array) == 0:
        raise UndefinedSimilarity(f"the {which} map is constant ({float(array.flat[0])!r})")
    return array


def spearman_part(array: np.ndarray, which: str) -> tuple[tuple[int, ...], np.ndarray]:
    """The per-map part of ``spearman``: the map's shape and its average ranks."""
    array = _checked_map(array, which)
    return array.shape, stats.rankdata(array.ravel())


def spearman_of_parts(a: tuple, b: tuple) -> float:
    """``spearman`` from two ``spearman_part``s, bit for bit: ``scipy.stats.spearmanr`` of two
    vectors is ``np.corrcoef`` of their stacked average ranks."""
    if a[0] != b[0]:
        raise MetricError(f"maps must be equal in shape, got {a[0]} and {b[0]}")
    return float(np.corrcoef(np.column_stack((a[1], b[1])), rowvar=False)[1, 0])


def pearson_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _pair(a, b)
    return float(stats.pearsonr(a.ravel(), b.ravel()).statistic)


def _ssim(a: np.ndarray, b: np.ndarray, *, data_range: float, sample_covariance: bool) -> float:
    a, b = _pair(a, b)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise UndefinedSimilarity(f"maps of {a.shape[0]}x{a.shape[1]} pixels are smaller than the "
                                  f"{SSIM_WINDOW}x{SSIM_WINDOW} SSIM window")
    return float(structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=sample_covariance, channel_axis=-1 if a.ndim == 3 else None))


def ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as the reference computed it (skimage 0.15 ``compare_ssim`` defaults on float maps):
    Gaussian weights sigma 1.5, sample covariance, data range 2.0, channels averaged."""
    return _ssim(a, b, data_range=2.0, sample_covariance=True)


def ssim_wang(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of [0, 1] maps as Wang et al. 2004: data range 1, population covariance."""
    return _ssim(a, b, data_range=1.0, sample_covariance=False)


def joint_range(a: np.ndarray, b: np.ndarray) -> float:
    """``max(a, b) - min(a, b)`` over both maps: the SSIM data range of maps that are not in a
    fixed interval (Quantus 0.6 ``ssim``)."""
    return float(max(a.max(), b.max()) - min(a.min(), b.min()))


def ssim_reference_joint(a: np.ndarray, b: np.ndarray) -> float:
    """``ssim_reference`` (sample covariance) with the pair's joint range as data range."""
    a, b = _pair(a, b)
    return _ssim(a, b, data_range=joint_range(a, b), sample_covariance=True)


def ssim_wang_joint(a: np.ndarray, b: np.ndarray) -> float:
    """``ssim_wang`` (population covariance) with the pair's joint range as data range."""
    a, b = _pair(a, b)
    return _ssim(a, b, data_range=joint_range(a, b), sample_covariance=False)


def hog_features(unit_map: np.ndarray) -> np.ndarray:
    """HOG descriptor of a [0, 1] map ``[H, W]`` or ``[H, W, C]`` with the reference's settings:
    9 orientations, 16 x 16-pixel cells, 3 x 3 cells per block, L2-Hys."""
    unit_map = np.asarray(unit_map, dtype=np.float64)
    if min(unit_map.shape[:2]) < HOG_CELL * HOG_BLOCK:
        side = HOG_CELL * HOG_BLOCK
        raise UndefinedSimilarity(f"maps of {unit_map.shape[0]}x{unit_map.shape[1]} pixels hold no "
                                  f"HOG block of 3x3 cells of 16x16 pixels (needs {side}x{side})")
    return hog(unit_map, orientations=9, pixels_per_cell=(HOG_CELL, HOG_CELL),
               cells_per_block=(HOG_BLOCK, HOG_BLOCK), block_norm="L2-Hys", feature_vector=True,
               channel_axis=-1 if unit_map.ndim == 3 else None)


def hog_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of the HOG descriptors of two [0, 1] maps."""
    a, b = _pair(a, b)
    features_a, features_b = hog_features(a), hog_features(b)
    for which, features in (("original", features_a), ("randomized", features_b)):
        if np.ptp(features) == 0:
            raise UndefinedSimilarity(f"the {which} map's HOG descriptor is constant")
    return float(stats.spearmanr(features_a, features_b).statistic)


def hog_part(array: np.ndarray, which: str) -> tuple[tuple[int, ...], np.ndarray]:
    """The per-map part of ``hog_similarity``: the map's shape and its HOG descriptor."""
    array = _checked_map(array, which)
    features = hog_features(array)
    if np.ptp(features) == 0:
        raise UndefinedSimilarity(f"the {which} map's HOG descriptor is constant")
    return array.shape, features


def hog_of_parts(a: tuple, b: tuple) -> float:
    """``hog_similarity`` from two ``hog_part``s."""
    if a[0] != b[0]:
        raise MetricError(f"maps must be equal in shape, got {a[0]} and {b[0]}")
    return float(stats.spearmanr(a[1], b[1]).statistic)


# ----------------------------------------------------------------------------- measures


@dataclass(frozen=True)
class Measure:
    """A similarity measure: the view it compares and the comparison. Calling it on two 2-D maps
    applies the ``method`` convention (for ``spearman_signed``, pass the signed maps)."""

    name: str
    view: str
    compare: Callable[[np.ndarray, np.ndarray], float]
    description: str
    # the comparison on ``second_moment`` views where it differs (SSIM: the joint data range)
    unbounded: Callable[[np.ndarray, np.ndarray], float] | None = None
    # ``compare`` split into a per-map part (ranks, a HOG descriptor) and the comparison of two
    # parts, equal to ``compare`` bit for bit: a map compared many times (the original map, at
    # every randomization step) is prepared once (``compare_views``' ``original_parts``)
    part: Callable[[np.ndarray, str], object] | None = None
    compare_parts: Callable[[object, object], float] | None = None

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        if self.view == "signed":
            return self.compare(a, b)
        view_a, view_b = (method_views(m, None)[self.view] for m in (a, b))
        for which, view in (("original", view_a), ("randomized", view_b)):
            if isinstance(view, UndefinedSimilarity):
                raise UndefinedSimilarity(f"the {which} map {view}")
        return self.compare(view_a, view_b)


MEASURES: dict[str, Measure] = {measure.name: measure for measure in (
    Measure("spearman_abs", "abs", spearman, "Spearman of the absolute maps",
            part=spearman_part, compare_parts=spearman_of_parts),
    Measure("spearman_signed", "signed", spearman, "Spearman of the signed maps",
            part=spearman_part, compare_parts=spearman_of_parts),
    Measure("ssim", "unit", ssim_reference,
            "SSIM as the reference (skimage 0.15: Gaussian sigma 1.5, sample covariance, "
            "data range 2)", ssim_reference_joint),
    Measure("ssim_wang", "unit", ssim_wang,
            "SSIM as Wang et al. 2004 (Gaussian sigma 1.5, population covariance, data range 1)",
            ssim_wang_joint),
    Measure("hog", "unit", hog_similarity,
            "Spearman of HOG descriptors (9 orientations, 16x16-pixel cells, 3x3-cell blocks, "
            "L2-Hys)", part=hog_part, compare_parts=hog_of_parts),
    Measure("pearson", "abs", pearson_correlation, "Pearson of the absolute maps"),
)}

# The same names, version 1 (harness 0.1, records without ``measure_version``).
LEGACY_DESCRIPTIONS = {
    "ssim": "SSIM with data range 1 and population covariance on the method's map (the present "
            "ssim_wang)",
    "hog": "Spearman of HOG descriptors with 1x1-cell blocks on the method's map",
}

spearman_abs = MEASURES["spearman_abs"]
spearman_signed = MEASURES["spearman_signed"]
ssim = MEASURES["ssim"]
pearson = MEASURES["pearson"]


def compare_views(measure: str, original: dict, other: dict,
                  normalisation: str | None = None, *,
                  original_parts: dict | None = None) -> float:
    """Measure ``measure`` between two views dicts (``reference_views`` / ``method_views`` /
    ``second_moment_views``, as ``normalisation`` names); an undefined view raises
    ``UndefinedSimilarity`` naming the map. ``original_parts``: a dict the caller keeps for the
    ``original`` views (one per original map), where the measures' per-map parts of the
    original (its ranks, its HOG descriptor) are kept once computed, so comparing one original
    with many maps prepares it once; the values are the same with or without it."""
    entry = MEASURES[measure]
    view_a, view_b = original[entry.view], other[entry.view]
    for which, view in (("original", view_a), ("randomized", view_b)):
        if isinstance(view, UndefinedSimilarity):
            raise UndefinedSimilarity(f"the {which} map {view}")
    if normalisation == "second_moment" and entry.unbounded is not None:
        return entry.unbounded(view_a, view_b)
    if entry.part is None or original_parts is None:
        return entry.compare(view_a, view_b)
    key = (entry.view, entry.part)
    if key not in original_parts:  # an UndefinedSimilarity is raised again next time
        original_parts[key] = entry.part(view_a, "original")
    return entry.compare_parts(original_parts[key], entry.part(view_b, "randomized"))


def describe(measures, normalisation: str | None, version: int | None,
             order: str | None = None, mode: str | None = None) -> str:
    """One sentence naming the measure settings, map normalisation and (where known) the
    randomization's mode and layer order behind a set of records."""
    if version is None:
        current = {m: MEASURES[m].description if m in MEASURES else m for m in measures}
        parts = [f"{m}: {LEGACY_DESCRIPTIONS.get(m, current[m])}" for m in measures]
        return ("similarity measures of harness 0.1 (records without measure_version) on the "
                "method's own maps; " + "; ".join(parts))
    parts = [f"{m}: {MEASURES[m].description}" for m in measures if m in MEASURES]
    convention = {
        "reference": "maps normalised as the reference notebook (abs: channel sum of |R|, "
                     "99th-percentile clip; signed: diverging; SSIM/HOG: min-max of the raw "
                     "attribution)",
        "method": "the method's own maps (|m|, signed variant, min-max)",
        "second_moment": "the method's own maps divided by the square root of their average "
                         "second moment (Binder et al. 2023; SSIM with the pair's joint range)",
    }.get(normalisation or "method", str(normalisation))
    randomized = ""
    if mode is not None or order is not None:
        randomized = (f"; {mode or 'cascading'} randomization, "
                      f"{(order or 'top_down').replace('_', '-')} layer order")
    return f"similarity on {convention}; " + "; ".join(parts) + randomized
