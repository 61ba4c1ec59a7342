"""Sanity-check figures in the style of Adebayo et al. 2018 (figures 2 and 4)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from harness.errors import MetricError
from harness.files import atomic_save  # noqa: E402
from harness.sanity.randomization import RandomizationResult  # noqa: E402
from harness.stats import bootstrap_ci  # noqa: E402


def cascading_grid(image: np.ndarray, results: Sequence[RandomizationResult],
                   path: str | os.PathLike, *, image_index: int = 0, title: str = "") -> str:
    """Rows: methods; columns: the image's original map, then the map after each cascading step
    (blocks randomized in the result's order: from the logits down, or from the input up).
    Needs results computed with ``keep_maps=True``.
    ``image`` is the uint8 ``[H, W, 3]`` picture shown in the first column."""
    columns = 2 + max(len(result.blocks) for result in results)
    figure, axes = plt.subplots(len(results), columns, squeeze=False,
                                figsize=(1.35 * columns, 1.45 * len(results) + 0.5))
    for row, result in enumerate(results):
        if result.original is None:
            raise MetricError(f"{result.method}: run model_randomization with keep_maps=True")
        axes[row, 0].imshow(image)
        axes[row, 0].set_ylabel(result.method, fontsize=8)
        maps = [result.original[image_index]] + [result.randomized[b][image_index]
                                                 for b in result.blocks]
        labels = ["original"] + list(result.blocks)
        for column, (values, label) in enumerate(zip(maps, labels, strict=True), start=1):
            axes[row, column].imshow(values.numpy(), cmap="gray")
            if row == 0:
                axes[row, column].set_title(label, fontsize=7, rotation=45)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda temporary: figure.savefig(temporary, dpi=110))
    plt.close(figure)
    return str(path)


def similarity_curves(results: Sequence[RandomizationResult], path: str | os.PathLike, *,
                      measures: Sequence[str] = ("spearman_abs", "spearman_signed", "ssim",
                                                 "hog"),
                      seed: int = 0) -> str:
    """One panel per measure: mean similarity to the original map after each randomization step
    (x: the block randomized), with a 95% bootstrap confidence band over images, one line per
    method. Undefined values are left out of the mean and counted in the legend."""
    figure, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.6),
                                squeeze=False)
    _draw_similarity(axes[0], results, measures, seed)
    return _save(figure, path)


def convention_comparison(results: dict[str, Sequence[RandomizationResult]],
                          path: str | os.PathLike, *,
                          measures: Sequence[str] = ("spearman_abs", "ssim", "hog"),
                          seed: int = 0) -> str:
    """``similarity_curves`` once per map normalisation (rows; e.g. ``{"reference": [...],
    "method": [...]}``) on shared axes, so the two conventions can be read side by side."""
    figure, axes = plt.subplots(len(results), len(measures),
                                figsize=(4.2 * len(measures), 3.4 * len(results)), squeeze=False)
    for row, chosen in zip(axes, results.values(), strict=True):
        _draw_similarity(row, chosen, measures, seed)
    return _save(figure, path)


def _draw_similarity(axes, results: Sequence[RandomizationResult], measures: Sequence[str],
                     seed: int) -> None:
    for axis, measure in zip(axes, measures, strict=True):
        for result in results:
            table = result.table()
            table = table[table["measure"] == measure]
            means, lows, highs, undefined = [], [], [], 0
            for block in result.blocks:
                values = table[table["block"] == block]["value"].dropna().to_numpy(float)
                undefined += int((table["block"] == block).sum()) - values.size
                if values.size == 0:
                    means.append(np.nan)
                    lows.append(np.nan)
                    highs.append(np.nan)
                    continue
                interval = bootstrap_ci(values, seed=seed, n_resamples=2000)
                means.append(interval.mean)
                lows.append(interval.low)
                highs.append(interval.high)
            steps = np.arange(len(result.blocks))
            label = result.method + (f" ({undefined} undefined)" if undefined else "")
            axis.plot(steps, means, marker="o", markersize=3, label=label)
            axis.fill_between(steps, lows, highs, alpha=0.2)
            axis.set_xticks(steps, result.blocks, rotation=90, fontsize=7)
        first = results[0]
        axis.set_title(f"{measure} ({first.mode}, {first.order.replace('_', '-')}, "
                       f"{first.target_mode}, maps: {first.map_normalisation})", fontsize=8)
        axis.axhline(0, color="gray", linewidth=0.5)
        axis.set_ylim(-0.5, 1.05)
    axes[0].set_ylabel("similarity to original map")
    axes[-1].legend(fontsize=7)


def _save(figure, path: str | os.PathLike) -> str:
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda temporary: figure.savefig(temporary, dpi=110))
    plt.close(figure)
    return str(path)
