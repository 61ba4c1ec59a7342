"""Random-logit test (Sixt, Granz & Landgraf, ICML 2020, "When Explanations Lie: Why Many Modified
BP Attributions Fail").

Definition, per image: the similarity between the method's map explaining the target class and
its map explaining a random other class, drawn uniformly from the model's other classes. A method
whose maps do not depend on the explained class (the paper's finding for several modified
back-propagation rules; an edge detector by construction) scores 1; lower is better. The paper
measures SSIM; ``measure`` names any measure of ``harness.sanity.similarity.MEASURES`` (looked up
by name when called, so its current settings apply; ``ssim`` by default). A measure that needs the
signed map (``spearman_signed``) compares the method's signed variants.

Choices, stated:

- The other class: image i draws r uniformly from 0..K-2 with ``image_generator(seed, ids[i] or i,
  salt="random_logit")`` and takes r if r < target else r + 1 (uniform over the K - 1 other
  classes; K = the model's number of outputs). It does not depend on the batch.
- Quantus' ``RandomLogit`` (0.6): the same test with ``num_classes=1000`` fixed, the numpy seed
  (42) reset for every batch (so the other class depends on the image's position in its batch),
  maps divided by their maximum absolute value, and SSIM on the flattened maps (scikit-image's
  default 7-sample window on a 1-D signal, data range from both maps' joint extremes). We compare
  the 2-D maps with the harness's SSIM, as the paper compares images.
- Undefined values (a constant map) are NaN with the reason in ``status``, never a silent NaN.
- Stochastic methods: both maps of an image are computed with the method's own seed; SmoothGrad
  and the other noise-based methods draw from a generator seeded by the image's values
  (``harness.seeding.content_generator``), so the target's and the other class's maps see the
  same noise, and an image's value does not depend on its batch.

Registered as ``random_logit`` (down; needs the method, which it calls again for the other
class, and the unit's maps, reused as the target's maps: the signed variant for a signed measure,
where a method without one gets None with the reason). Records carry ``other_target``, the
measure (``similarity``) and ``measure_version``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import MetricError
from harness.methods import get_method, saliency_batched
from harness.metrics._common import defined, setting_choice
from harness.metrics.registry import register_metric
from harness.sanity import similarity
from harness.seeding import image_generator


@dataclass(frozen=True)
class RandomLogitResult:
    """Per-image similarity ``values`` ``[N]`` (NaN where ``status`` says undefined), the random
    other class ``other_target`` ``[N]``, the maps for the target and for the other class
    ``[N, H, W]``, and the settings."""

    values: torch.Tensor
    status: tuple[str, ...]
    other_target: torch.Tensor
    maps: torch.Tensor
    other_maps: torch.Tensor
    method: str
    measure: str


def other_classes(target: torch.Tensor, n_classes: int, *, seed: int = 0,
                  ids: Sequence[str] | None = None) -> torch.Tensor:
    """A uniformly drawn class other than ``target[i]`` for every image ``[N]`` (see the module
    docstring)."""
    drawn = []
    for index, label in enumerate(target.tolist()):
        key = ids[index] if ids is not None else index
        generator = image_generator(seed, key, salt="random_logit")
        r = int(torch.randint(0, n_classes - 1, (1,), generator=generator))
        drawn.append(r if r < label else r + 1)
    return torch.tensor(drawn, dtype=torch.long, device=target.device)


def random_logit(model: nn.Module, method: str, x: torch.Tensor, target, *,
                 method_params: dict | None = None, measure: str = "ssim", seed: int = 0,
                 ids: Sequence[str] | None = None, batch_size: int = 16,
                 maps: torch.Tensor | None = None) -> RandomLogitResult:
    """Random-logit test of saliency method ``method`` (a registered name) on inputs ``x``
    ``[N, C, H, W]`` with classes ``target`` ``[N]``: ``values`` ``[N]``, the similarity between
    the maps for the target and for a seeded random other class; lower is better. ``maps``: the
    method's maps ``[N, H, W]`` for ``target`` (its signed maps for a signed measure) when they
    are already computed with the same parameters; computed here otherwise."""
    if measure not in similarity.MEASURES:
        raise MetricError(f"measure {measure!r} is not one of: {', '.join(similarity.MEASURES)}")
    get_method(method)  # unknown names are named with the valid choices
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise MetricError(f"x must be a tensor [N, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    n_images = x.shape[0]
    if target.shape[0] != n_images:
        raise MetricError(f"target has {target.shape[0]} entries for {n_images} images")
    if ids is not None and len(ids) != n_images:
        raise MetricError(f"ids has {len(ids)} entries for {n_images} images")
    with torch.inference_mode():
        n_classes = model(x[:1].detach()).shape[1]
    bad = (target < 0) | (target >= n_classes)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        name = ids[index] if ids is not None else f"#{index}"
        raise MetricError(f"target {int(target[index])} of image {name} is out of range: the model "
                         f"has {n_classes} classes")
    if n_classes < 2:
        raise MetricError("the random-logit test needs a model with at least 2 classes")
    other = other_classes(target, n_classes, seed=seed, ids=ids)
    params = dict(method_params or {})
    signed = similarity.MEASURES[measure].view == "signed"
    if maps is None:
        maps = saliency_batched(method, model, x, target, batch_size=batch_size, signed=signed,
                                method_params=params)
    elif tuple(maps.shape) != (n_images, *x.shape[2:]):
        raise MetricError(f"maps has shape {tuple(maps.shape)}; x {tuple(x.shape)} needs maps "
                         f"[N, H, W] = {(n_images, *x.shape[2:])}")
    other_maps = saliency_batched(method, model, x, other, batch_size=batch_size, signed=signed,
                                  method_params=params)
    compare = similarity.MEASURES[measure]
    values, status = [], []
    for index in range(n_images):
        try:
            values.append(compare(maps[index].double().cpu().numpy(),
                                  other_maps[index].double().cpu().numpy()))
            status.append("ok")
        except similarity.UndefinedSimilarity as reason:
            values.append(float("nan"))
            status.append(f"undefined: {reason}")
    return RandomLogitResult(torch.tensor(values, dtype=torch.float64), tuple(status),
                             other.cpu(), maps.cpu(), other_maps.cpu(), method, measure)


# ----------------------------------------------------------------------------- registry entry


@dataclass(frozen=True)
class RandomLogitSettings:
    """Settings of ``random_logit`` (default: the paper's SSIM; any measure of
    ``harness.sanity.similarity.MEASURES``). The other class is drawn with the experiment's seed
    and each image's id."""

    measure: str = "ssim"
    methods: list | None = None

    def check(self) -> None:
        setting_choice("measure", self.measure, tuple(similarity.MEASURES))


@register_metric("random_logit", settings=RandomLogitSettings, direction="down",
                 citation="Sixt, Granz & Landgraf 2020 (arXiv:1912.09818)",
                 needs=("maps", "method"), criterion="randomisation")
def _random_logit_records(unit, settings: RandomLogitSettings) -> list[dict]:
    """Random-logit test: similarity between the map of the target and the map of a random other
    class; lower (more class-sensitive) is better."""
    signed = similarity.MEASURES[settings.measure].view == "signed"
    maps = unit.signed_maps if signed else unit.maps
    common = {"similarity": settings.measure, "measure_version": similarity.MEASURE_VERSION}
    if maps is None:
        return [{"image_id": i, "value": None, "status": "method has no signed variant",
                 **common} for i in unit.ids]
    result = random_logit(unit.model, unit.method, unit.x, unit.target,
                          method_params=unit.method_params, measure=settings.measure,
                          seed=unit.seed, ids=list(unit.ids), batch_size=unit.batch_size,
                          maps=maps)
    return [{"image_id": i, "value": defined(v), "status": status, "other_target": int(other),
             **common}
            for i, v, status, other in zip(unit.ids, result.values.tolist(), result.status,
                                           result.other_target.tolist(), strict=True)]
