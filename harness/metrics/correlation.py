"""Faithfulness correlation (Bhatt, Weller & Moura, IJCAI 2020, "Evaluating and Aggregating
Feature-based Model Explanations"; defaults of Quantus' ``FaithfulnessCorrelation`` 0.6, the peer
implementation in common use, as no authors' code is published).

For ``n_subsets`` (100) random subsets S of ``subset_size`` (224) pixels, the Pearson correlation
over the subsets between sum_{p in S} phi_p and f(x) - f(x with x_S = baseline_S), all channels
of a pixel set to the baseline; higher is better. A constant map or a model blind to the subsets
gives NaN with the reason in ``status``. Subsets come from ``image_generator(seed, id,
salt="faithfulness_correlation")``.

Baselines, units against Quantus, and which map the registry entry reads: docs/faithfulness.md
(Faithfulness correlation) and the metric reference (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.metrics._common import (
    MAPS,
    SCORES,
    baseline_fill,
    clean_scores,
    defined,
    image_key,
    pixel_scale,
    resolve_batch_size,
    score_stream,
    unit_map,
    validate_maps,
)
from harness.metrics.registry import register_metric
from harness.seeding import image_generator
from harness.settings import check, check_choice, check_int, check_seed

BASELINES = ("black", "zero", "mean", "min")


@dataclass(frozen=True)
class CorrelationResult:
    """Per-image Pearson ``values`` ``[N]`` (NaN where ``status`` says undefined), the attribution
    sums and score drops per subset ``[N, n_subsets]`` (float64), and the settings."""

    values: torch.Tensor
    status: tuple[str, ...]
    attribution_sums: torch.Tensor
    score_drops: torch.Tensor
    subset_size: int
    n_subsets: int
    baseline: str
    score: str


def pearson(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Row-wise Pearson correlation of ``a``, ``b`` ``[N, K]`` (float64) and a status per row:
    NaN with the reason where a row is constant. Constant means all entries equal (not a zero
    norm after centring: the float64 mean of equal values can differ from them by rounding)."""
    a, b = a.double(), b.double()
    flat_a, flat_b = (a == a[:, :1]).all(1), (b == b[:, :1]).all(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    values = (a * b).sum(1) / (norm_a * norm_b)
    status = []
    for row in range(a.shape[0]):
        if bool(flat_a[row]):
            status.append("undefined: the attribution sums are equal for every subset")
        elif bool(flat_b[row]):
            status.append("undefined: the score drops are equal for every subset")
        else:
            status.append("ok")
    values = torch.where(~flat_a & ~flat_b, values.clamp(-1, 1), float("nan"))
    return values, status


def faithfulness_correlation(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, *,
                             subset_size: int = 224, n_subsets: int = 100,
                             baseline: str = "black", score: str = "logit", seed: int = 0,
                             ids: Sequence[str] | None = None,
                             batch_size: int | None = None) -> CorrelationResult:
    """Faithfulness correlation of maps ``saliency`` ``[N, H, W]`` for inputs ``x`` ``[N, C, H, W]``
    (the model's normalised input) and classes ``target`` ``[N]``: ``values`` ``[N]`` in [-1, 1],
    higher is better. See the module docstring for the definition and the defaults' sources."""
    check(CorrelationSettings(subset_size=subset_size, n_subsets=n_subsets, baseline=baseline,
                              score=score, batch_size=batch_size))
    check_seed("seed", seed)
    target = validate_maps(x, saliency, target, ids)
    n_images, _, height, width = x.shape
    n_pixels = height * width
    check_int("subset_size", subset_size, 1, n_pixels - 1)  # a subset leaves a pixel
    batch_size = resolve_batch_size(batch_size, x.device)
    x = x.detach()
    maps = saliency.detach().to(x.device).reshape(n_images, n_pixels)
    mean, std = pixel_scale(model, x)
    fill = baseline_fill(baseline, x, mean, std, BASELINES)
    # the clean pass first: it names an out-of-range target before the perturbed passes
    clean = clean_scores(model, x, target, score=score, batch_size=batch_size, ids=ids)
    subsets = torch.stack([
        torch.stack([torch.randperm(n_pixels, generator=generator)[:subset_size]
                     for _ in range(n_subsets)])
        for generator in (image_generator(seed, image_key(ids, i), salt="faithfulness_correlation")
                          for i in range(n_images))
    ]).to(x.device)  # [N, n_subsets, subset_size]
    sums = maps.double().gather(1, subsets.reshape(n_images, -1)).view(
        n_images, n_subsets, subset_size).sum(2)

    def build(begin: int, end: int) -> torch.Tensor:
        flat = torch.arange(begin, end, device=x.device)
        images, runs = flat // n_subsets, flat % n_subsets
        inside = torch.zeros((end - begin, n_pixels), dtype=torch.bool, device=x.device)
        inside.scatter_(1, subsets[images, runs], True)
        inside = inside.view(-1, 1, height, width)
        return torch.where(inside, fill[images], x[images])

    owners = torch.arange(n_images).repeat_interleave(n_subsets)
    perturbed = score_stream(model, owners, build, target, score=score, batch_size=batch_size,
                             ids=ids).view(n_images, n_subsets)
    drops = clean[:, None] - perturbed
    sums = sums.cpu()
    values, status = pearson(sums, drops)
    return CorrelationResult(values, tuple(status), sums, drops, subset_size, n_subsets, baseline,
                             score)


# ----------------------------------------------------------------------------- registry entry


@dataclass(frozen=True)
class CorrelationSettings:
    """Settings of ``faithfulness_correlation`` (defaults: Quantus' ``FaithfulnessCorrelation``:
    100 subsets of 224 pixels set to black, the target's logit). ``n_subsets`` is one forward pass
    per image each. ``map``: ``signed`` (default; the method's signed map where it has one) or
    ``absolute`` (its own map). ``batch_size`` None: the device's default. The subsets use the
    experiment's seed and each image's id."""

    subset_size: int = 224
    n_subsets: int = 100
    baseline: str = "black"
    score: str = "logit"
    map: str = "signed"
    batch_size: int | None = None
    methods: list | None = None

    def check(self) -> None:
        check_int("subset_size", self.subset_size, 1)
        check_int("n_subsets", self.n_subsets, 3)  # with 2 subsets Pearson's r is always +-1
        check_choice("baseline", self.baseline, BASELINES)
        check_choice("score", self.score, SCORES)
        check_choice("map", self.map, MAPS)
        check_int("batch_size", self.batch_size, 1, optional=True)


@register_metric("faithfulness_correlation", settings=CorrelationSettings, direction="up",
                 citation="Bhatt, Weller & Moura 2020 (arXiv:2005.00631); Quantus "
                          "FaithfulnessCorrelation")
def _correlation_records(unit, settings: CorrelationSettings) -> list[dict]:
    """Faithfulness correlation: Pearson r between the map's sums over random pixel subsets and
    the score drops when the subsets are removed; higher is better."""
    saliency, used = unit_map(unit, settings.map)
    result = faithfulness_correlation(
        unit.model, unit.x, saliency, unit.target, subset_size=settings.subset_size,
        n_subsets=settings.n_subsets, baseline=settings.baseline, score=settings.score,
        seed=unit.seed, ids=list(unit.ids), batch_size=settings.batch_size)
    return [{"image_id": i, "value": defined(v), "status": status, "map": used}
            for i, v, status in zip(unit.ids, result.values.tolist(), result.status, strict=True)]
