"""Shared pieces of the perturbation metrics in ``infidelity``, ``correlation``, ``confidence`` and
``irof``: input validation that names the image, the model's pixel scale, and one batched scorer.

``score_stream`` scores a stream of M perturbed inputs that a metric builds chunk by chunk
(``build(begin, end) -> [end - begin, C, H, W]`` on the model's device), ``batch_size`` at a time
under ``torch.inference_mode``, so memory is bounded by ``batch_size`` and not by the number of
perturbations or images. Inputs go to the model channels_last, the causal engine's ``auto``
layout (``resolve_memory_format``: measured faster for convnets on CPUs, preferred by cuDNN).
Which image an input belongs to (``owners``) picks its target class.

For the registry entries (see ``harness.metrics.registry``): the checks of settings fields
(``ValueError("field: why")``), the map a metric reads from a work unit (``unit_map``) and
JSON-safe values (``defined``: NaN becomes None).
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

SCORES = ("prob", "logit")
# why a score that a metric divides by is not positive, by score
POSITIVE_HINTS = {"logit": "(use score='prob')",
                  "prob": "(the softmax probability underflows to 0 in the model's precision)"}


def check_choice(name: str, value, choices: Sequence[str]) -> None:
    """ValueError naming ``name``, the bad ``value`` and the valid ``choices``."""
    if value not in choices:
        raise MetricError(f"{name} {value!r} is not one of: {', '.join(choices)}")


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high] (high=None: unbounded), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise MetricError(f"{name} must be an integer {bound}, got {value!r}")
    return value


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
    check_choice("baseline", name, choices)
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
    Chunks of ``batch_size`` inputs, in order, under ``torch.inference_mode``."""
    total = owners.shape[0]
    scores = torch.empty(total, dtype=torch.float64)
    owners = owners.to(target.device)
    layout = resolve_memory_format("auto", target.device)
    with torch.inference_mode():
        for begin in range(0, total, batch_size):
            end = min(begin + batch_size, total)
            logits = model(build(begin, end).contiguous(memory_format=layout))
            targets = target[owners[begin:end]]
            bad = (targets < 0) | (targets >= logits.shape[1])
            if bool(bad.any()):
                index = int(owners[begin:end][bad][0])
                raise MetricError(f"target {int(target[index])} of image {image_name(ids, index)} "
                                 f"is out of range: the model has {logits.shape[1]} classes")
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


def setting_choice(field: str, value, choices: Sequence[str]) -> None:
    """``ValueError("field: ...")`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise MetricError(f"{field}: {value!r} is not one of: {', '.join(choices)}")


def setting_int(field: str, value, low: int, *, optional: bool = False) -> None:
    """``ValueError("field: ...")`` unless ``value`` is an integer >= ``low`` (or None when
    ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        hint = " (or omitted for the default)" if optional else ""
        raise MetricError(f"{field}: must be an integer >= {low}{hint}, got {value!r}")


def setting_number(field: str, value, *, low: float, inclusive: bool) -> None:
    """``ValueError("field: ...")`` unless ``value`` is a finite number > ``low`` (>= when
    ``inclusive``)."""
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and float(value) < float("inf") and (value >= low if inclusive else value > low))
    if not ok:
        raise MetricError(f"{field}: must be a finite number {'>=' if inclusive else '>'} {low}, "
                         f"got {value!r}")


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
