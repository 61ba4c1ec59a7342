"""Average Drop and Increase in Confidence (Chattopadhay, Sarkar, Howlader & Balasubramanian,
WACV 2018, "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep Convolutional
Networks"; compared with pytorch-grad-cam ``metrics/cam_mult_image.py``).

Per image with target c: Y = the softmax probability of c on the image (``score="prob"``), O =
the same on the image's pixels multiplied by the map min-max scaled to [0, 1] (``masked_image``;
a constant map counts as all ones). ``average_drop``: max(0, Y - O) / Y, lower is better;
``increase_in_confidence``: 1[O > Y], higher is better. The paper reports 100 x the means.

Choices against pytorch-grad-cam and the logit case: docs/faithfulness.md (Average Drop and
Increase in Confidence) and the metric reference (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import MetricError
from harness.metrics._common import (
    POSITIVE_HINTS,
    SCORES,
    clean_scores,
    image_name,
    pixel_scale,
    resolve_batch_size,
    score_stream,
    validate_maps,
)
from harness.metrics.registry import register_metric
from harness.settings import check, check_choice, check_int, check_seed

METRICS = ("average_drop", "increase_in_confidence")


@dataclass(frozen=True)
class ConfidenceResult:
    """``values`` ``[N]`` of ``metric`` (``average_drop`` or ``increase_in_confidence``), both
    per-image quantities ``drop`` and ``increase``, Y = ``clean`` and O = ``explained`` ``[N]``
    (float64), and the score used."""

    metric: str
    values: torch.Tensor
    drop: torch.Tensor
    increase: torch.Tensor
    clean: torch.Tensor
    explained: torch.Tensor
    score: str


def scale_map(saliency: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling of maps ``[N, H, W]`` to [0, 1]; a constant map becomes 1."""
    flat = saliency.reshape(saliency.shape[0], -1)
    low = flat.amin(1).view(-1, 1, 1)
    span = (flat.amax(1) - flat.amin(1)).view(-1, 1, 1)
    return torch.where(span > 0, (saliency - low) / span.where(span > 0, 1), 1.0)


def masked_image(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """The Grad-CAM++ explanation map as model input ``[N, C, H, W]``: the image's pixels
    ``x * std + mean`` multiplied by ``scale_map(saliency)``, normalised back. Computed as the
    algebraically equal x * M + (M - 1) * mean / std, so M = 1 gives x exactly (the round trip
    through pixels is off by rounding, which 1[O > Y] counted as an increase) and M = 0 exactly
    black, (0 - mean) / std."""
    mean, std = pixel_scale(model, x)
    weights = scale_map(saliency.to(x.device, x.dtype))[:, None]
    return x * weights + (weights - 1) * (mean / std)


def confidence_change(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, *,
                      score: str = "prob", ids: Sequence[str] | None = None,
                      batch_size: int | None = None,
                      metric: str = "average_drop") -> ConfidenceResult:
    """Y, O, the drop fraction and the increase indicator for every image (see the module
    docstring); ``values`` is the ``metric``'s per-image quantity."""
    check(ConfidenceSettings(score=score, batch_size=batch_size))
    check_choice("metric", metric, METRICS)
    target = validate_maps(x, saliency, target, ids)
    batch_size = resolve_batch_size(batch_size, x.device)
    x = x.detach()
    clean = clean_scores(model, x, target, score=score, batch_size=batch_size, ids=ids)
    if not bool((clean > 0).all()):
        index = int((clean <= 0).nonzero()[0, 0])
        raise MetricError(f"image {image_name(ids, index)}: the {score} of class "
                         f"{int(target[index])} is {float(clean[index])!r}; Average Drop divides "
                         f"by it and needs it > 0 {POSITIVE_HINTS[score]}")
    maps = saliency.detach()
    explained = score_stream(
        model, torch.arange(x.shape[0]),
        lambda begin, end: masked_image(model, x[begin:end], maps[begin:end]), target,
        score=score, batch_size=batch_size, ids=ids)
    drop = (clean - explained).clamp(min=0) / clean
    increase = (explained > clean).double()
    values = drop if metric == "average_drop" else increase
    return ConfidenceResult(metric, values, drop, increase, clean, explained, score)


def average_drop(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, *,
                 score: str = "prob", seed: int = 0, ids: Sequence[str] | None = None,
                 batch_size: int | None = None) -> ConfidenceResult:
    """Average Drop (Grad-CAM++): ``values`` ``[N]`` = max(0, Y - O) / Y per image, lower is
    better; the paper reports 100 x the mean. ``x`` ``[N, C, H, W]`` normalised model input,
    ``saliency`` ``[N, H, W]``, ``target`` ``[N]``."""
    check_seed("seed", seed)
    return confidence_change(model, x, saliency, target, score=score, ids=ids,
                             batch_size=batch_size, metric="average_drop")


def increase_in_confidence(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, *,
                           score: str = "prob", seed: int = 0, ids: Sequence[str] | None = None,
                           batch_size: int | None = None) -> ConfidenceResult:
    """Increase in Confidence (Grad-CAM++): ``values`` ``[N]`` = 1[O > Y] per image, higher is
    better; the paper reports 100 x the mean."""
    check_seed("seed", seed)
    return confidence_change(model, x, saliency, target, score=score, ids=ids,
                             batch_size=batch_size, metric="increase_in_confidence")


# ----------------------------------------------------------------------------- registry entries


@dataclass(frozen=True)
class ConfidenceSettings:
    """Settings of ``average_drop`` and ``increase_in_confidence`` (default: the paper's softmax
    probability; ``logit`` needs a positive logit, else the image is an error).
    ``batch_size`` None: the device's default."""

    score: str = "prob"
    batch_size: int | None = None
    methods: list | None = None

    def check(self) -> None:
        check_choice("score", self.score, SCORES)
        check_int("batch_size", self.batch_size, 1, optional=True)


def _confidence_records(metric: str):
    def records(unit, settings: ConfidenceSettings) -> list[dict]:
        result = confidence_change(unit.model, unit.x, unit.maps, unit.target,
                                   score=settings.score, ids=list(unit.ids),
                                   batch_size=settings.batch_size, metric=metric)
        return [{"image_id": i, "value": float(v), "clean_score": float(y),
                 "masked_score": float(o)}
                for i, v, y, o in zip(unit.ids, result.values.tolist(), result.clean.tolist(),
                                      result.explained.tolist(), strict=True)]

    return records


_GRADCAM_PP = "Chattopadhay et al. 2018, Grad-CAM++ (arXiv:1710.11063)"
register_metric("average_drop", settings=ConfidenceSettings, direction="down",
                citation=_GRADCAM_PP,
                summary="Average Drop: max(0, Y - O) / Y, the target's confidence Y on the image "
                        "and O on the image times the min-max scaled map; lower is better")(
    _confidence_records("average_drop"))
register_metric("increase_in_confidence", settings=ConfidenceSettings, direction="up",
                citation=_GRADCAM_PP,
                summary="Increase in Confidence: 1 if the confidence on the image times the "
                        "min-max scaled map exceeds that on the image; higher is better")(
    _confidence_records("increase_in_confidence"))
