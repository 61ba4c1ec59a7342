"""Figures: the seed notebook's saliency grid (images on top, one hot-colormap row per method),
mean perturbation curves and randomization curves."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from harness.files import atomic_save  # noqa: E402
from harness.metrics.registry import as_frame, metric_curves  # noqa: E402
from harness.sanity.figures import similarity_curves  # noqa: E402
from harness.sanity.randomization import RandomizationResult  # noqa: E402

# their curves run over randomization steps, not fractions: figures of their own
RANDOMIZATION_METRICS = ("model_randomization", "smooth_mprt", "efficient_mprt")


def saliency_grid(images: np.ndarray, titles: Sequence[str],
                  maps: Mapping[str, torch.Tensor | np.ndarray], path: str | os.PathLike, *,
                  cell_inches: float = 2.2, dpi: int = 110) -> str:
    """Save the grid: row 0 the uint8 images ``[N, H, W, 3]`` titled with their class names, then
    one
    row per method of its maps ``[N, H, W]`` in the ``hot`` colormap, each map scaled to its own
    [min, max] (as ``plt.imshow`` does in the seed). Returns the path written."""
    n_images = len(images)
    rows = 1 + len(maps)
    figure, axes = plt.subplots(rows, n_images, figsize=(cell_inches * n_images + 1.2,
                                                         cell_inches * rows), squeeze=False)
    for column in range(n_images):
        axes[0, column].imshow(images[column])
        axes[0, column].set_title(_wrap(titles[column]), fontsize=8)
    for row, (name, values) in enumerate(maps.items(), start=1):
        values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        for column in range(n_images):
            axes[row, column].imshow(values[column], cmap=plt.cm.hot)
        axes[row, 0].text(-0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90,
                          ha="right", va="center", fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda temporary: figure.savefig(temporary, dpi=dpi))
    plt.close(figure)
    return str(path)


def _wrap(title: str, width: int = 22) -> str:
    title = title.split(",")[0]
    return title if len(title) <= width else title[: width - 1] + "…"


def plot_mean_curves(records: Sequence[dict], path: str | os.PathLike, *, seed: int = 0
                     ) -> str | None:
    """Mean curves as small multiples: one panel per metric whose records carry curves
    (deletion, insertion, MoRF/LeRF, ROAD, ...; the randomization checks apart), at most three
    panels a row, each method one line of the same colour in every panel with a light 95%
    bootstrap band, and one legend outside the panels. The AUCs are in the run's table."""
    curves = metric_curves(records, exclude=RANDOMIZATION_METRICS)
    if not curves:
        return None
    methods = list(dict.fromkeys(m for by_method in curves.values() for m in by_method))
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    colours = {method: palette(i % palette.N) for i, method in enumerate(methods)}
    columns = min(3, len(curves))
    rows = -(-len(curves) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns + 1.8, 3.0 * rows),
                                squeeze=False, layout="constrained")
    rng = np.random.default_rng(seed)
    for axis, (name, by_method) in zip(axes.flat, curves.items(), strict=False):
        bounded = True
        even = True
        for method, (xs, values) in by_method.items():
            mean = np.nanmean(values, axis=0)
            picks = rng.integers(0, len(values), (2000, len(values)))
            low, high = np.nanquantile(np.nanmean(values[picks], axis=1), [0.025, 0.975], axis=0)
            even = bool(np.allclose(xs, np.linspace(0, 1, len(xs))))
            axis.plot(xs, mean, marker=None if even else "o", markersize=3, linewidth=1.2,
                      color=colours[method], label=method)
            axis.fill_between(xs, low, high, alpha=0.1, color=colours[method], linewidth=0)
            bounded &= bool(np.nanmin(values) >= 0 and np.nanmax(values) <= 1)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("fraction of pixels changed" if even else "fraction", fontsize=8)
        axis.tick_params(labelsize=7)
        if bounded:
            axis.set_ylim(0, 1.02)
    for axis in list(axes.flat)[len(curves):]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel("score of the target class", fontsize=8)
    handles = [plt.Line2D([], [], color=colours[m], linewidth=1.5) for m in methods]
    figure.legend(handles, methods, loc="outside right upper", fontsize=8, frameon=False)
    atomic_save(path, lambda temporary: figure.savefig(temporary, dpi=110))
    plt.close(figure)
    return str(path)


def plot_randomization(records: Sequence[dict] | pd.DataFrame, path: str | os.PathLike, *,
                       seed: int = 0, metric: str = "model_randomization") -> str | None:
    """Similarity-versus-block curves with 95% bands, from the records of a randomization
    metric (``model_randomization`` or ``smooth_mprt``)."""
    frame = as_frame(records)
    if frame.empty or "metric" not in frame:
        return None
    frame = frame[frame["metric"] == metric]
    if frame.empty:
        return None
    frame = frame.drop(columns=[c for c in ("curve", "curve_x") if c in frame])
    results = []
    for method, rows in frame.groupby("method", sort=False):
        mine = rows.sort_values("step", kind="stable").to_dict("records")
        blocks = tuple(dict.fromkeys(r["block"] for r in mine))
        normalisation = mine[0].get("map_normalisation")
        order = mine[0].get("order")  # records before ``order``: top-down
        results.append(RandomizationResult(
            method, mine[0]["mode"], mine[0]["target_mode"], seed, blocks, mine,
            map_normalisation="method" if normalisation is None or pd.isna(normalisation)
            else normalisation,
            order="top_down" if order is None or pd.isna(order) else order))
    measures = tuple(dict.fromkeys(frame["measure"]))
    return similarity_curves(results, path, measures=measures, seed=seed)
