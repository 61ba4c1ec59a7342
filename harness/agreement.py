"""Agreement between the maps of two methods (Krishna, Han, Gu, Pombra, Jabbari, Wu & Lakkaraju,
"The Disagreement Problem in Explainable Machine Learning: A Practitioner's Perspective", 2022;
OpenXAI ``openxai/metrics.py``: ``eval_ground_truth_faithfulness``, ``rankcorr``,
``pairwise_comp``).

Per image, two methods' maps ``a`` and ``b`` over the same ``n = H * W`` pixels; a pixel's
importance is its magnitude ``|a|``, its sign the sign of the method's signed variant (the
channel sum of the raw attribution, the CAM before its ReLU; ``+`` for a method without one, whose
maps are non-negative). The top-k of a map are its k pixels of largest magnitude, in decreasing
order (ties: the lower flat index first, a stable sort), ``k`` from ``top_k`` (an integer, or a
fraction of the pixels rounded up as OpenXAI's ``convert_k_to_int``):

- ``feature`` (FA): ``|top_k(a) ∩ top_k(b)| / k``;
- ``rank`` (RA): the share of the k positions holding the same pixel in both top-k lists;
- ``sign`` (SA): ``|{i in top_k(a) ∩ top_k(b): sign a_i = sign b_i}| / k``;
- ``signed_rank`` (SRA): the share of positions holding the same pixel with the same sign;
- ``rank_correlation`` (RC): Spearman's rank correlation of ``|a|`` and ``|b|`` over all pixels
  (average ranks for ties);
- ``pairwise_rank`` (PRA): the share of the ``n (n - 1) / 2`` pixel pairs whose relative order
  is the same in both maps: ``sign(|a_i| - |a_j|) = sign(|b_i| - |b_j|)`` (a pair tied in both
  agrees), counted exactly in O(n log n) (Kendall's concordant pairs plus the pairs tied in both).

Every measure is 1 for a map with itself, symmetric in the two methods, in [0, 1] except RC in
[-1, 1]. Without ties they equal OpenXAI's code (tested). With ties OpenXAI differs: its RC is the
Pearson correlation of dense ranks, its RA also requires equal dense ranks, its PRA counts a
pair tied in one map only by the pairs' index order (``rank_i < rank_j`` is False for a tie), and
its top-k comes from an unstable ``argsort``; the harness's rules above are symmetric and
deterministic. Krishna et al. compute RC and PRA over a chosen feature set F; here F is every
pixel.

A run computes them for every pair of its methods on the maps of its ``figure_images`` images
(the maps the saliency grid shows, kept in ``maps/<method>.npz``; the signed variants are
recomputed for these images), when the config sets ``agreement.top_k``:
``tables/agreement_per_image.csv``, ``tables/agreement_<measure>.{md,csv}`` (method x method
means) and ``figures/agreement/<measure>.png``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from harness.errors import ConfigError, MetricError
from harness.files import atomic_save, atomic_write
from harness.images import preprocess
from harness.methods import get_method, saliency_batched
from harness.targets import resolve_targets

MEASURES = {
    "feature": "feature agreement: share of the top-k pixels common to both maps",
    "rank": "rank agreement: share of the top-k positions holding the same pixel",
    "sign": "sign agreement: share of the top-k pixels common to both maps with the same sign",
    "signed_rank": "signed rank agreement: share of the top-k positions holding the same pixel "
                   "with the same sign",
    "rank_correlation": "rank correlation: Spearman of the pixels' magnitudes",
    "pairwise_rank": "pairwise rank agreement: share of pixel pairs in the same relative order",
}


def top_k_count(top_k: int | float, n_pixels: int) -> int:
    """``top_k`` as a number of pixels: an integer in [1, n], or a fraction in (0, 1] of the
    pixels rounded up (OpenXAI's ``convert_k_to_int``)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int | float):
        raise ConfigError(f"top_k: must be an integer or a fraction in (0, 1], got {top_k!r}")
    if isinstance(top_k, int):
        if not 1 <= top_k <= n_pixels:
            raise ConfigError(f"top_k: {top_k} pixels is not in [1, {n_pixels}]")
        return top_k
    if not 0 < top_k <= 1:
        raise ConfigError(f"top_k: a fraction must be in (0, 1], got {top_k!r}")
    return int(math.ceil(top_k * n_pixels))


def top_pixels(magnitude: np.ndarray, k: int) -> np.ndarray:
    """The flat indices of the ``k`` largest values, in decreasing order, ties to the lower
    index first."""
    return np.argsort(-np.ravel(magnitude), kind="stable")[:k]


def count_inversions(values: np.ndarray) -> int:
    """The number of pairs ``i < j`` with ``values[i] > values[j]`` (strict), exactly, by a
    bottom-up merge of sorted runs done with numpy sorts (O(n log^2 n))."""
    ranks = stats.rankdata(values, method="dense").astype(np.int64)
    n = ranks.size
    width, total, sorted_runs = 1, 0, ranks
    positions = np.arange(n)
    scale = n + 2
    while width < n:
        pair = positions // (2 * width)
        left = (positions % (2 * width)) < width
        keys = pair * scale + sorted_runs
        left_keys, right_keys = keys[left], keys[~left]
        right_pairs = pair[~left]
        # left values of the same pair greater than each right value
        block_end = np.searchsorted(left_keys, (right_pairs + 1) * scale, side="left")
        total += int(np.sum(block_end - np.searchsorted(left_keys, right_keys, side="right")))
        sorted_runs = np.sort(keys) % scale
        width *= 2
    return total


def _tied_pairs(*columns: np.ndarray) -> int:
    """Pairs equal in every column: sum over groups of g (g - 1) / 2."""
    key = np.zeros(columns[0].size, dtype=np.int64)
    for column in columns:  # one integer per distinct row (dense ranks, mixed radix)
        ranks = stats.rankdata(column, method="dense").astype(np.int64)
        key = key * (int(ranks.max()) + 1) + ranks
    _, counts = np.unique(key, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


def pairwise_rank_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The share of pairs whose order by magnitude agrees, ties in both counted as agreeing (see
    the module docstring)."""
    a, b = np.abs(np.ravel(a)).astype(np.float64), np.abs(np.ravel(b)).astype(np.float64)
    n = a.size
    if n < 2:
        raise MetricError("pairwise rank agreement needs at least 2 pixels")
    pairs = n * (n - 1) // 2
    order = np.lexsort((b, a))  # by a, then b: pairs tied in a are never inversions in b
    discordant = count_inversions(b[order])
    tied_a, tied_b, tied_both = _tied_pairs(a), _tied_pairs(b), _tied_pairs(a, b)
    concordant = pairs - discordant - tied_a - tied_b + tied_both
    return (concordant + tied_both) / pairs


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of the magnitudes (NaN where a map is constant)."""
    a, b = np.abs(np.ravel(a)), np.abs(np.ravel(b))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def agreement(a: np.ndarray, b: np.ndarray, k: int, sign_a: np.ndarray | None = None,
              sign_b: np.ndarray | None = None) -> dict[str, float]:
    """The six measures between maps ``a`` and ``b`` (same shape) with ``k`` top pixels; signs
    from ``sign_a`` / ``sign_b`` (signed maps, else the maps' own signs)."""
    a, b = np.ravel(a), np.ravel(b)
    if a.shape != b.shape:
        raise MetricError(f"maps of {a.size} and {b.size} pixels")
    signs_a = np.sign(np.ravel(sign_a if sign_a is not None else a))
    signs_b = np.sign(np.ravel(sign_b if sign_b is not None else b))
    top_a, top_b = top_pixels(np.abs(a), k), top_pixels(np.abs(b), k)
    common = np.intersect1d(top_a, top_b)
    same_place = top_a == top_b
    return {
        "feature": common.size / k,
        "rank": float(np.sum(same_place)) / k,
        "sign": float(np.sum(signs_a[common] == signs_b[common])) / k,
        "signed_rank": float(np.sum(same_place & (signs_a[top_a] == signs_b[top_b]))) / k,
        "rank_correlation": rank_correlation(a, b),
        "pairwise_rank": pairwise_rank_agreement(a, b),
    }


def pairwise_agreement(maps: Mapping[str, torch.Tensor | np.ndarray], top_k: int | float, *,
                       signed: Mapping[str, torch.Tensor | np.ndarray | None] | None = None,
                       ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Every pair of methods (in the mapping's order), every image: a frame with ``method_a``,
    ``method_b``, ``image_id``, ``measure``, ``value``. ``maps``: ``{method: [N, H, W]}``;
    ``signed``: the methods' signed maps (None for a method without a signed variant)."""
    names = list(maps)
    arrays = {name: np.asarray(maps[name], dtype=np.float64) for name in names}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise MetricError(f"the methods' maps differ in shape: {sorted(shapes)}")
    n_images, height, width = shapes.pop()
    k = top_k_count(top_k, height * width)
    ids = list(ids) if ids is not None else [f"#{i}" for i in range(n_images)]
    signs = {name: None if signed is None or signed.get(name) is None
             else np.asarray(signed[name], dtype=np.float64) for name in names}
    rows = []
    for first in range(len(names)):
        for second in range(first + 1, len(names)):
            a_name, b_name = names[first], names[second]
            for index, image_id in enumerate(ids):
                values = agreement(
                    arrays[a_name][index], arrays[b_name][index], k,
                    None if signs[a_name] is None else signs[a_name][index],
                    None if signs[b_name] is None else signs[b_name][index])
                rows += [{"method_a": a_name, "method_b": b_name, "image_id": image_id,
                          "measure": measure, "value": value, "top_k": k}
                         for measure, value in values.items()]
    return pd.DataFrame(rows, columns=["method_a", "method_b", "image_id", "measure", "value",
                                       "top_k"])


def agreement_matrix(frame: pd.DataFrame, measure: str, methods: Sequence[str]) -> pd.DataFrame:
    """The method x method mean over images of ``measure`` (symmetric; 1 on the diagonal)."""
    matrix = pd.DataFrame(np.eye(len(methods)), index=list(methods), columns=list(methods))
    rows = frame[frame["measure"] == measure]
    for (a_name, b_name), values in rows.groupby(["method_a", "method_b"], sort=False):
        mean = float(np.nanmean(values["value"].to_numpy(dtype=float))) \
            if values["value"].notna().any() else math.nan
        matrix.loc[a_name, b_name] = matrix.loc[b_name, a_name] = mean
    return matrix


def write_agreement(frame: pd.DataFrame, methods: Sequence[str], output: str | os.PathLike,
                    caption: str) -> list[Path]:
    """``tables/agreement_per_image.csv``, one table per measure
    (``tables/agreement_<measure>.{md,csv}``) and one heatmap per measure
    (``figures/agreement/<measure>.png``) under ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = Path(output)
    paths = [output / "tables" / "agreement_per_image.csv"]
    atomic_write(paths[0], frame.to_csv(index=False))
    n_images = frame["image_id"].nunique()
    k = int(frame["top_k"].iloc[0]) if len(frame) else 0
    for measure, description in MEASURES.items():
        matrix = agreement_matrix(frame, measure, methods)
        text = (f"{description} (Krishna et al. 2022); mean over {n_images} images, top-k = {k} "
                f"pixels. {caption}")
        header = "| | " + " | ".join(methods) + " |"
        lines = [header, "|" + "---|" * (len(methods) + 1)]
        for name in methods:
            lines.append(f"| {name} | " + " | ".join(
                "n/a" if math.isnan(v) else f"{v:.3f}" for v in matrix.loc[name]) + " |")
        table = output / "tables" / f"agreement_{measure}"
        atomic_write(table.with_suffix(".md"), "\n".join(lines) + f"\n\n{text}\n")
        atomic_write(table.with_suffix(".csv"), matrix.to_csv())
        figure, axis = plt.subplots(figsize=(1.1 * len(methods) + 2.2, 0.9 * len(methods) + 1.6))
        low = -1.0 if measure == "rank_correlation" else 0.0
        image = axis.imshow(matrix.to_numpy(dtype=float), vmin=low, vmax=1.0, cmap="viridis")
        for (row, column), value in np.ndenumerate(matrix.to_numpy(dtype=float)):
            axis.text(column, row, "n/a" if math.isnan(value) else f"{value:.2f}", ha="center",
                      va="center", fontsize=7, color="white" if value < 0.6 else "black")
        axis.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        axis.set_yticks(range(len(methods)), methods, fontsize=8)
        axis.set_title(f"{measure} (top-k {k}, {n_images} images)", fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046)
        figure.tight_layout()
        path = output / "figures" / "agreement" / f"{measure}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(path, lambda temporary, figure=figure: figure.savefig(temporary, dpi=110))
        plt.close(figure)
        paths += [table.with_suffix(".md"), table.with_suffix(".csv"), path]
    return paths


def run_agreement(config, prepared, maps: Mapping[str, torch.Tensor]) -> list[Path]:
    """A run's agreement outputs from the maps of its figure images (``maps``, as the saliency
    grid shows them) and their signed variants, recomputed here for these images."""
    samples = list(prepared.dataset)[: config.figure_images]
    info = prepared.model.harness_info
    with warnings.catch_warnings():  # the run warned about small images already
        warnings.simplefilter("ignore")
        x = preprocess([sample.load() for sample in samples], info, device=prepared.device)
    ids = [sample.id for sample in samples]
    target = resolve_targets(prepared.model, x, [s.label for s in samples], ids,
                             mode=config.target)
    signed = {}
    for method in config.methods:
        signed[method.name] = None if get_method(method.registry_name).signed is None else \
            saliency_batched(method.registry_name, prepared.model, x, target, signed=True,
                             batch_size=config.method_batch_size or config.batch_size,
                             method_params=method.params).cpu()
    frame = pairwise_agreement({name: values.cpu() for name, values in maps.items()},
                               config.agreement.top_k, signed=signed, ids=ids)
    caption = (f"Model {config.model.name}, data {config.data.name}, the first "
               f"{len(ids)} images (figure_images); maps as the saliency grid shows them, signs "
               "from each method's signed variant (+ where it has none).")
    return write_agreement(frame, [m.name for m in config.methods], prepared.output_dir,
                           caption)
