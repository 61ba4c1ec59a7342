"""Figures: the seed notebook's saliency grid (images on top, one hot-colormap row per method)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.io import atomic_save  # noqa: E402


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
