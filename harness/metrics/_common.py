"""Shared pieces of the perturbation metrics in ``infidelity``, ``correlation``, ``confidence`` and
``irof``: input validation that names the image, the model's pixel scale, and one batched scorer.

``score_stream`` scores a stream of M perturbed inputs that a metric builds chunk by chunk
(``build(begin, end) -> [end - begin, C, H, W]`` on the model's device), ``batch_size`` at a time
under ``torch.inference_mode``, so memory is bounded by ``batch_size`` and not by the number of
perturbations or images. Inputs go to the model channels_last, the causal engine's ``auto``
layout (``resolve_memory_format``: measured faster for convnets on CPUs, preferred by cuDNN).
Which image an input belongs to (``owners``) picks its target class.

For the registry entries (see ``harness.metrics.registry``): the map a metric reads from a work
unit (``unit_map``) and JSON-safe values (``defined``: NaN becomes None). Settings are checked by
the settings dataclasses with the field validators of ``harness.settings`` (``ConfigError("field:
why")``); the pure functions build those dataclasses from their arguments and run the same check
(``harness.settings.check``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from harness.errors import MetricError
from harness.metrics.causal import (  # validate_maps: the metrics' shared input check
    default_batch_size,
    resolve_memory_format,
    validate_maps,  # noqa: F401
)
from harness.models import model_info
from harness.settings import check_choice, check_int, check_target_range

# ``setting_choice`` is the name ``harness.sanity.random_logit`` imports: the same validator
setting_choice = check_choice

SCORES = ("prob", "logit")
# why a score that a metric divides by is not positive, by score
POSITIVE_HINTS = {"logit": "(use score='prob')",
                  "prob": "(the softmax probability underflows to 0 in the model's precision)"}


def image_name(ids: Sequence[str] | None, index: int) -> str:
    """How messages name image ``index``: its id, else ``#index``."""
    return str(ids[index]) if ids is not None else f"#{index}"


def image_key(ids: Sequence[str] | None, index: int) -> int | str:
    """The key of ``harness.seeding.image_generator``: the image id when given, else the index."""
    return ids[index] if ids is not None else index


def pixel_scale(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's normalisation ``mean``, ``std`` as ``[1, C, 1, 1]`` tensors in x's dtype and
    device: pixels = x * std + mean (``harness.images.deprocess``)."""
    info = model_info(model)
    if len(info.mean) != x.shape[1]:
        raise MetricError(f"x has {x.shape[1]} channels but the model's mean/std have "
                         f"{len(info.mean)}")
    mean = torch.tensor(info.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return mean, std


BASELINES = {
    "black": "pixel value 0 in every channel, (0 - mean) / std in the model's input space",
    "zero": "0 in the model's input space: the normalisation's mean colour",
    "mean": "each image's own channel means",
    "min": "each image's minimum over all channels and pixels (Quantus' 'black')",
}


def baseline_fill(name: str, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                  choices: Sequence[str]) -> torch.Tensor:
    """The replacement value of baseline ``name`` (one of ``choices``, see ``BASELINES``) per
    image and channel, ``[N, C, 1, 1]`` in the model's input space."""
    check_choice("baseline", name, tuple(choices))
    n_images, channels = x.shape[:2]
    if name == "black":
        fill = -mean / std
    elif name == "zero":
        fill = torch.zeros_like(mean)
    elif name == "mean":
        fill = x.mean(dim=(2, 3), keepdim=True)
    else:
        fill = x.amin(dim=(1, 2, 3), keepdim=True)
    return fill.expand(n_images, channels, 1, 1)


def resolve_batch_size(batch_size: int | None, device: torch.device) -> int:
    """``batch_size`` or the engine's default (8 on the CPU, 256 on accelerators)."""
    if batch_size is None:
        return default_batch_size(device)
    return check_int("batch_size", batch_size, 1)


def _scores(logits: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    if score == "prob":
        logits = logits.softmax(dim=1)
    return logits.gather(1, targets[:, None])[:, 0].double()


def score_stream(model: nn.Module, owners: torch.Tensor,
                 build: Callable[[int, int], torch.Tensor], target: torch.Tensor, *, score: str,
                 batch_size: int, ids: Sequence[str] | None = None) -> torch.Tensor:
    """Scores ``[M]`` (float64, CPU) of the inputs ``build(begin, end)`` for the flat indices
    ``0..M-1``; input m is scored for class ``target[owners[m]]`` (softmax probability or logit).
    Chunks of ``batch_size`` inputs, in order, under ``torch.inference_mode``; the targets are
    checked against the model's classes on the first chunk (``check_target_range``)."""
    total = owners.shape[0]
    scores = torch.empty(total, dtype=torch.float64)
    owners = owners.to(target.device)
    layout = resolve_memory_format("auto", target.device)
    with torch.inference_mode():
        for begin in range(0, total, batch_size):
            end = min(begin + batch_size, total)
            logits = model(build(begin, end).contiguous(memory_format=layout))
            if begin == 0:
                check_target_range(target, logits.shape[1], ids, error=MetricError)
            targets = target[owners[begin:end]]
            scores[begin:end] = _scores(logits, targets, score).cpu()
    return scores


def clean_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, score: str,
                 batch_size: int, ids: Sequence[str] | None = None) -> torch.Tensor:
    """Scores ``[N]`` (float64, CPU) of the unperturbed images."""
    owners = torch.arange(x.shape[0])
    return score_stream(model, owners, lambda begin, end: x[begin:end], target, score=score,
                        batch_size=batch_size, ids=ids)


# ----------------------------------------------------------------------------- registry helpers

MAPS = ("signed", "absolute")


def unit_map(unit, which: str) -> tuple[torch.Tensor, str]:
    """The maps ``[N, H, W]`` a metric reads from a work unit and their kind: under ``signed``
    the method's signed variant (``unit.signed_maps``: the channel sum of a pixel-space
    attribution, Grad-CAM before its ReLU, ...) where the method has one, else (and under
    ``absolute``) the method's own map ``unit.maps`` (non-negative for most methods: e.g. the max
    over channels of |gradient|), recorded as ``absolute``."""
    if which == "signed":
        signed = unit.signed_maps
        if signed is not None:
            return signed, "signed"
    return unit.maps, "absolute"


def defined(value: float) -> float | None:
    """``value`` as a float, None where it is NaN (records are JSON: undefined is None)."""
    value = float(value)
    return None if value != value else value
