"""IROF, Iterative Removal Of Features (Rieger & Hansen 2020, "IROF: a low resource evaluation
metric for explanation methods", arXiv:2003.08747; compared with Quantus ``IROF`` 0.6).

Per image: SLIC superpixels (scikit-image defaults), ordered by mean relevance (highest first,
ties to the lower label), replaced cumulatively by the baseline (default each image's channel
means); c_k = f(x^(k)) / f(x) for k = 0..K; IROF = 1 - (sum_k c_k - c_0 / 2 - c_K / 2) / K, the
area over the curve on [0, 1]; higher is better. ``unnormalised`` = K - trapz(c_1..c_K, dx=1),
Quantus' number for the images with their batch's largest K.

Segmentation, baselines and Quantus' padding and batch-mean fill: docs/faithfulness.md (IROF) and
the metric reference (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from skimage.segmentation import slic
from torch import nn

from harness.errors import MetricError
from harness.metrics._common import (
    POSITIVE_HINTS,
    SCORES,
    baseline_fill,
    clean_scores,
    image_name,
    pixel_scale,
    resolve_batch_size,
    score_stream,
    validate_maps,
)
from harness.metrics.registry import register_metric
from harness.settings import check, check_choice, check_int, check_number, check_seed

BASELINES = ("mean", "zero", "black")


@dataclass(frozen=True)
class IROFResult:
    """Per-image IROF ``values`` ``[N]`` (normalised area over the curve), Quantus' unnormalised
    form ``unnormalised`` ``[N]``, ``curves`` ``[N, max K + 1]`` of c_k (float64, NaN after an
    image's K + 1 points), ``n_segments`` ``[N]``, ``segments`` ``[N, H, W]`` (the removal rank of
    each pixel's segment: 0 is removed first), and the settings."""

    values: torch.Tensor
    unnormalised: torch.Tensor
    curves: torch.Tensor
    n_segments: torch.Tensor
    segments: torch.Tensor
    baseline: str
    score: str
    slic: dict


def superpixels(pixels: np.ndarray, *, n_segments: int = 100, compactness: float = 10.0,
                sigma: float = 0.0) -> np.ndarray:
    """SLIC labels ``[H, W]`` (int64, renumbered 0..K-1) of one image ``[H, W, C]`` (pixels)."""
    labels = slic(pixels.astype(np.float64), n_segments=n_segments, compactness=compactness,
                  sigma=sigma, start_label=0, channel_axis=-1)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def removal_ranks(labels: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """Per pixel ``[H, W]``: the position of its segment in the removal order (segments by
    decreasing mean relevance, ties to the lower label first)."""
    n_labels = int(labels.max()) + 1
    flat = labels.reshape(-1)
    totals = torch.bincount(flat, weights=saliency.reshape(-1).double(), minlength=n_labels)
    means = totals / torch.bincount(flat, minlength=n_labels).double()
    order = torch.sort(-means, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_labels, device=order.device)
    return rank[labels]


def irof(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, *,
         n_segments: int = 100, compactness: float = 10.0, sigma: float = 0.0,
         baseline: str = "mean", score: str = "prob", seed: int = 0,
         ids: Sequence[str] | None = None, batch_size: int | None = None) -> IROFResult:
    """IROF of maps ``saliency`` ``[N, H, W]`` for inputs ``x`` ``[N, C, H, W]`` (the model's
    normalised input) and classes ``target`` ``[N]``; higher is better. See the module docstring
    for the definition, normalisation and defaults."""
    check(IROFSettings(n_segments=n_segments, compactness=compactness, sigma=sigma,
                       baseline=baseline, score=score, batch_size=batch_size))
    check_seed("seed", seed)
    target = validate_maps(x, saliency, target, ids)
    batch_size = resolve_batch_size(batch_size, x.device)
    x = x.detach()
    n_images = x.shape[0]
    mean, std = pixel_scale(model, x)
    fill = baseline_fill(baseline, x, mean, std, BASELINES)
    # the clean pass first: a bad target or score is named before any image is segmented
    clean = clean_scores(model, x, target, score=score, batch_size=batch_size, ids=ids)
    if not bool((clean > 0).all()):
        index = int((clean <= 0).nonzero()[0, 0])
        raise MetricError(f"image {image_name(ids, index)}: the {score} of class "
                         f"{int(target[index])} is {float(clean[index])!r}; IROF divides by it "
                         f"and needs it > 0 {POSITIVE_HINTS[score]}")
    pixels = (x * std + mean).permute(0, 2, 3, 1).double().cpu().numpy()
    labels = torch.stack([torch.from_numpy(superpixels(
        image, n_segments=n_segments, compactness=compactness, sigma=sigma)) for image in pixels])
    ranks = torch.stack([removal_ranks(labels[i], saliency[i].detach().cpu())
                         for i in range(n_images)]).to(x.device)
    counts = labels.reshape(n_images, -1).amax(1) + 1  # K per image
    owners = torch.arange(n_images).repeat_interleave(counts)
    starts = counts.cumsum(0) - counts
    owners_device = owners.to(x.device)
    starts_device = starts.to(x.device)

    def build(begin: int, end: int) -> torch.Tensor:
        images = owners_device[begin:end]
        removed = torch.arange(begin, end, device=x.device) - starts_device[images] + 1
        inside = (ranks[images] < removed.view(-1, 1, 1))[:, None]
        return torch.where(inside, fill[images], x[images])

    scores = score_stream(model, owners, build, target, score=score, batch_size=batch_size,
                          ids=ids)
    curves = torch.full((n_images, int(counts.max()) + 1), float("nan"), dtype=torch.float64)
    values = torch.empty(n_images, dtype=torch.float64)
    unnormalised = torch.empty(n_images, dtype=torch.float64)
    for i in range(n_images):
        k = int(counts[i])
        curve = torch.cat([torch.ones(1, dtype=torch.float64),
                           scores[int(starts[i]): int(starts[i]) + k] / clean[i]])
        curves[i, : k + 1] = curve
        values[i] = 1 - (curve.sum() - curve[0] / 2 - curve[-1] / 2) / k
        after = curve[1:]
        unnormalised[i] = k - (after.sum() - after[0] / 2 - after[-1] / 2)
    settings = {"n_segments": n_segments, "compactness": float(compactness), "sigma": float(sigma)}
    return IROFResult(values, unnormalised, curves, counts, ranks.cpu(), baseline, score,
                      settings)


# ----------------------------------------------------------------------------- registry entry


@dataclass(frozen=True)
class IROFSettings:
    """Settings of ``irof`` (defaults: SLIC with scikit-image's defaults as Quantus calls it,
    removed segments set to the image's channel means, the softmax probability). K + 1 forward
    passes per image (K about ``n_segments``). ``batch_size`` None: the device's default."""

    n_segments: int = 100
    compactness: float = 10.0
    sigma: float = 0.0
    baseline: str = "mean"
    score: str = "prob"
    batch_size: int | None = None
    methods: list | None = None

    def check(self) -> None:
        check_int("n_segments", self.n_segments, 1)
        check_number("compactness", self.compactness, 0, low_open=True)
        check_number("sigma", self.sigma, 0)
        check_choice("baseline", self.baseline, BASELINES)
        check_choice("score", self.score, SCORES)
        check_int("batch_size", self.batch_size, 1, optional=True)


CURVE_GRID = 101


def _irof_curves(frame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``irof``: each image's curve c_k against k / K, interpolated linearly onto
    ``CURVE_GRID`` evenly spaced fractions of the segments removed (K differs between images)."""
    if "curve" not in frame:
        return {}
    rows = frame[frame["curve"].notna()]
    if rows.empty:
        return {}
    grid = np.linspace(0.0, 1.0, CURVE_GRID)
    values = np.stack([np.interp(grid, np.asarray(x, dtype=float), np.asarray(c, dtype=float))
                       for x, c in zip(rows["curve_x"], rows["curve"], strict=True)])
    return {"irof": (grid, values)}


@register_metric("irof", settings=IROFSettings, direction="up",
                 citation="Rieger & Hansen 2020 (arXiv:2003.08747)", curves=_irof_curves)
def _irof_records(unit, settings: IROFSettings) -> list[dict]:
    """IROF: area over the curve of the target's relative score as SLIC superpixels are removed
    in order of mean relevance; higher is better."""
    result = irof(unit.model, unit.x, unit.maps, unit.target, n_segments=settings.n_segments,
                  compactness=settings.compactness, sigma=settings.sigma,
                  baseline=settings.baseline, score=settings.score, ids=list(unit.ids),
                  batch_size=settings.batch_size)
    records = []
    for index, image_id in enumerate(unit.ids):
        k = int(result.n_segments[index])
        records.append({"image_id": image_id, "value": float(result.values[index]),
                        "unnormalised": float(result.unnormalised[index]), "segments": k,
                        "curve": result.curves[index, : k + 1].tolist(),
                        "curve_x": (torch.arange(k + 1, dtype=torch.float64) / k).tolist()})
    return records
