"""Localisation against ground truth: does the map point at the object?

Maps ``saliency`` ``[N, H, W]`` against boolean object masks ``mask`` ``[N, H, W]``; float64
values ``[N]``, higher is better:

- Pointing game (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation Backprop";
  reference TorchRay ``torchray/benchmark/pointing_game.py``): a hit if a mask pixel lies within
  ``tolerance`` (15) pixels of the map's first maximum.
- Relevance mass / rank accuracy (Arras, Osman & Samek 2022, "CLEVR-XAI", Information Fusion 81):
  positive relevance inside the mask over all positive relevance; the share of the |mask|
  highest-ranked pixels inside the mask (ties: lower flat index first).
- Attribution localisation (Kohlbrenner et al., IJCNN 2020): the same positive-relevance ratio;
  ``weighted=True`` multiplies by H W / |mask|.
- Top-k intersection (Theiner, Müller-Budack & Ewerth, WACV 2022, arXiv:2104.14995; Quantus
  ``TopKIntersection``): the share of the k (1000) highest-ranked pixels inside the mask.

Conventions against TorchRay, CLEVR-XAI and Quantus: docs/robustness.md and the metric reference
(docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from harness.errors import MetricError
from harness.metrics.causal import pixel_ranks
from harness.metrics.registry import register_metric, value_records
from harness.settings import check, check_bool, check_int


@dataclass(frozen=True)
class LocalisationResult:
    """Per-image localisation values ``[N]`` float64 of one metric and its settings."""

    metric: str
    values: torch.Tensor
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PointingGameResult:
    """Per-image pointing-game hits: ``values`` ``[N]`` (1.0 hit, 0.0 miss), ``points`` ``[N, 2]``
    (row, column) of each map's maximum, and the tolerance in pixels."""

    metric: str
    values: torch.Tensor
    points: torch.Tensor
    tolerance: int


@dataclass(frozen=True)
class PointingGameSummary:
    """TorchRay's report: ``accuracy`` = mean over classes of ``class_accuracies``
    ({class: hits / (hits + misses)}), with ``class_counts`` ({class: images}) and the plain
    ``overall`` hit rate over images."""

    accuracy: float
    class_accuracies: dict
    class_counts: dict
    overall: float


def _name(ids: Sequence | None, index: int) -> str:
    return str(ids[index]) if ids is not None else f"#{index}"


def validate_masks(saliency: torch.Tensor, mask: torch.Tensor,
                   ids: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check maps ``[N, H, W]`` and masks of the same shape; return (maps float64, masks bool)."""
    if not isinstance(saliency, torch.Tensor) or saliency.ndim != 3:
        shape = tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency)
        raise MetricError(f"saliency must be a tensor [N, H, W], got {shape}")
    mask = torch.as_tensor(mask, device=saliency.device)
    if tuple(mask.shape) != tuple(saliency.shape):
        raise MetricError(f"mask has shape {tuple(mask.shape)}; the maps are "
                         f"{tuple(saliency.shape)}: masks must be [N, H, W] at the maps' "
                         "resolution (see harness.images.preprocess_masks)")
    if ids is not None and len(ids) != saliency.shape[0]:
        raise MetricError(f"ids has {len(ids)} entries for {saliency.shape[0]} maps")
    if mask.dtype != torch.bool:
        if bool(((mask != 0) & (mask != 1)).any()):
            raise MetricError(f"mask must be boolean (or 0/1), got dtype {mask.dtype} with other "
                             "values")
        mask = mask != 0
    flat = mask.reshape(mask.shape[0], -1)
    empty = ~flat.any(dim=1)
    if bool(empty.any()):
        index = int(empty.nonzero()[0, 0])
        raise MetricError(f"the ground-truth mask of image {_name(ids, index)} is empty")
    finite = torch.isfinite(saliency.reshape(saliency.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0, 0])
        raise MetricError(f"saliency map of image {_name(ids, index)} contains NaN or inf")
    return saliency.double(), mask


def max_points(saliency: torch.Tensor) -> torch.Tensor:
    """(row, column) ``[N, 2]`` of each map's maximum; ties go to the first in row-major order."""
    flat = saliency.reshape(saliency.shape[0], -1)
    is_max = flat == flat.amax(dim=1, keepdim=True)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(flat)
    first = torch.where(is_max, positions, flat.shape[1]).amin(dim=1)
    width = saliency.shape[2]
    return torch.stack([first // width, first % width], dim=1)


def pointing_game(saliency: torch.Tensor, mask: torch.Tensor, *, tolerance: int = 15,
                  ids: Sequence | None = None) -> PointingGameResult:
    """Pointing game (Zhang et al. 2016, TorchRay): hit if a mask pixel lies within Euclidean
    distance < ``tolerance`` pixels of the map's maximum; ``values`` ``[N]`` 1.0/0.0."""
    check(PointingGameSettings(tolerance=tolerance))
    saliency, mask = validate_masks(saliency, mask, ids)
    points = max_points(saliency)
    _, height, width = saliency.shape
    rows = torch.arange(height, device=mask.device).view(1, -1, 1) - points[:, 0].view(-1, 1, 1)
    cols = torch.arange(width, device=mask.device).view(1, 1, -1) - points[:, 1].view(-1, 1, 1)
    distance2 = rows**2 + cols**2
    accept = distance2 < tolerance**2 if tolerance > 0 else distance2 == 0
    hits = (mask & accept).reshape(mask.shape[0], -1).any(dim=1)
    return PointingGameResult("pointing_game", hits.double().cpu(), points.cpu(), tolerance)


def pointing_game_summary(hits: torch.Tensor | Sequence[float],
                          classes: torch.Tensor | Sequence) -> PointingGameSummary:
    """Accuracy per class (hits / images of that class), then the mean over the classes that
    occur (TorchRay's ``PointingGame.accuracy``, which also counts classes without images as 0).
    ``classes``: one label per image, any sortable hashable value (class indices, or object
    names such as ``pasted_objects``' objects)."""
    hits = torch.as_tensor(hits, dtype=torch.float64).reshape(-1).cpu()
    if isinstance(classes, torch.Tensor):
        classes = classes.reshape(-1).tolist()
    classes = list(classes)
    if hits.numel() != len(classes):
        raise MetricError(f"hits has {hits.numel()} entries but classes {len(classes)}")
    if hits.numel() == 0:
        raise MetricError("pointing_game_summary needs at least one image")
    if bool(((hits != 0) & (hits != 1)).any()):
        raise MetricError("hits must be 0 (miss) or 1 (hit)")
    accuracies, counts = {}, {}
    for label in sorted(set(classes)):
        chosen = hits[torch.tensor([c == label for c in classes], dtype=torch.bool)]
        accuracies[label] = float(chosen.mean())
        counts[label] = int(chosen.numel())
    accuracy = sum(accuracies.values()) / len(accuracies)
    return PointingGameSummary(accuracy, accuracies, counts, float(hits.mean()))


def _mass_inside(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    positive = saliency.clamp(min=0).reshape(saliency.shape[0], -1)
    inside = (positive * mask.reshape(mask.shape[0], -1)).sum(dim=1)
    return inside / positive.sum(dim=1)


def relevance_mass_accuracy(saliency: torch.Tensor, mask: torch.Tensor, *,
                            ids: Sequence | None = None) -> LocalisationResult:
    """Relevance mass accuracy (Arras et al. 2022): positive relevance inside the mask / positive
    relevance in the image, ``[N]`` in [0, 1] (NaN for a map without positive relevance)."""
    saliency, mask = validate_masks(saliency, mask, ids)
    return LocalisationResult("relevance_mass_accuracy", _mass_inside(saliency, mask).cpu())


def _top_in_mask(saliency: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """How many of each image's ``counts[i]`` highest-ranked pixels lie in its mask ``[N]``."""
    ranks = pixel_ranks(saliency)  # stable: ties to the lower flat index
    chosen = ranks < counts.view(-1, 1)
    return (chosen & mask.reshape(mask.shape[0], -1)).sum(dim=1).double()


def relevance_rank_accuracy(saliency: torch.Tensor, mask: torch.Tensor, *,
                            ids: Sequence | None = None) -> LocalisationResult:
    """Relevance rank accuracy (Arras et al. 2022): |top-K pixels in the mask| / K with
    K = |mask|, ``[N]`` in [0, 1]; ties to the lower flat index."""
    saliency, mask = validate_masks(saliency, mask, ids)
    sizes = mask.reshape(mask.shape[0], -1).sum(dim=1)
    return LocalisationResult("relevance_rank_accuracy",
                              (_top_in_mask(saliency, mask, sizes) / sizes).cpu())


def attribution_localisation(saliency: torch.Tensor, mask: torch.Tensor, *,
                             weighted: bool = False,
                             ids: Sequence | None = None) -> LocalisationResult:
    """Attribution localisation (Kohlbrenner et al. 2020): mu = positive relevance in the mask /
    positive relevance in the image; ``weighted``: mu * (H*W) / |mask|. ``[N]``."""
    check(AttributionLocalisationSettings(weighted=weighted))
    saliency, mask = validate_masks(saliency, mask, ids)
    values = _mass_inside(saliency, mask)
    if weighted:
        sizes = mask.reshape(mask.shape[0], -1).sum(dim=1).double()
        values = values * (mask[0].numel() / sizes)
    return LocalisationResult("attribution_localisation", values.cpu(), {"weighted": weighted})


def top_k_intersection(saliency: torch.Tensor, mask: torch.Tensor, *, k: int = 1000,
                       concept_influence: bool = False,
                       ids: Sequence | None = None) -> LocalisationResult:
    """Top-k intersection (Theiner et al. 2022; Quantus): |top-k pixels in the mask| / k,
    ``[N]``; ``concept_influence`` multiplies by (H*W) / |mask|. Ties to the lower flat index."""
    check(TopKSettings(k=k, concept_influence=concept_influence))
    saliency, mask = validate_masks(saliency, mask, ids)
    n_pixels = mask[0].numel()
    check_int("k", k, 1, n_pixels)  # at most the maps' H * W pixels
    counts = torch.full((mask.shape[0],), k, device=mask.device)
    values = _top_in_mask(saliency, mask, counts) / k
    if concept_influence:
        values = values * n_pixels / mask.reshape(mask.shape[0], -1).sum(dim=1).double()
    return LocalisationResult("top_k_intersection", values.cpu(),
                              {"k": k, "concept_influence": concept_influence})


# ----------------------------------------------------------------------------- registry entries
#
# Each entry reads the unit's maps and its ground-truth masks (``needs=("maps", "masks")``: config
# validation refuses these metrics on a dataset without masks, ``harness.datasets.has_masks``; the
# runner loads the masks with ``harness.datasets.load_masks``). Records are per image.


def _unit_masks(unit) -> torch.Tensor:
    if unit.masks is None:
        raise MetricError("localisation metrics need ground-truth masks; datasets with masks: "
                         "pasted_objects, imagefolder with boxes=FOLDER")
    return unit.masks


@dataclass(frozen=True)
class PointingGameSettings:
    """``tolerance`` in pixels of the maps' resolution (TorchRay's 15; 0: the maximum itself must
    lie in the mask)."""

    tolerance: int = 15
    methods: list | None = None

    def check(self) -> None:
        check_int("tolerance", self.tolerance, 0)  # pixels


@register_metric("pointing_game", settings=PointingGameSettings, direction="up",
                 citation="Zhang et al. 2016 (ECCV, arXiv:1608.00507); TorchRay "
                          "benchmark/pointing_game.py", needs=("maps", "masks"),
                 criterion="localisation")
def _pointing_records(unit, settings: PointingGameSettings) -> list[dict]:
    """Pointing game: 1 if the map's maximum lies within ``tolerance`` pixels of the object mask,
    else 0.

    Each record carries the image's ``class`` (its dataset label, else the class explained) and
    the ``point`` (row, column). The table's column is the hit rate over IMAGES; TorchRay reports
    the mean over classes of the per-class hit rate, which ``pointing_game_summary(values,
    classes)`` computes from these records (the two agree when every class has as many images).
    """
    result = pointing_game(unit.maps, _unit_masks(unit), tolerance=settings.tolerance,
                           ids=list(unit.ids))
    classes = unit.label_tensor.tolist()
    return [{"image_id": image_id, "value": float(value), "class": int(label),
             "point": [int(v) for v in point]}
            for image_id, value, label, point in zip(unit.ids, result.values.tolist(), classes,
                                                     result.points.tolist(), strict=True)]


@dataclass(frozen=True)
class MaskSettings:
    """No parameters beyond the methods to score (the metric's definition has none)."""

    methods: list | None = None


_ARRAS = "Arras, Osman & Samek 2022 (Information Fusion 81, arXiv:2003.07258)"


@register_metric("relevance_mass_accuracy", settings=MaskSettings, direction="up",
                 citation=_ARRAS, needs=("maps", "masks"), criterion="localisation")
def _mass_records(unit, settings: MaskSettings) -> list[dict]:
    """Relevance mass accuracy: the share of the map's positive relevance inside the mask."""
    result = relevance_mass_accuracy(unit.maps, _unit_masks(unit), ids=list(unit.ids))
    return value_records(unit, result.values, "the map has no positive relevance")


@register_metric("relevance_rank_accuracy", settings=MaskSettings, direction="up",
                 citation=_ARRAS, needs=("maps", "masks"), criterion="localisation")
def _rank_records(unit, settings: MaskSettings) -> list[dict]:
    """Relevance rank accuracy: the share of the |mask| highest-ranked pixels inside the mask."""
    result = relevance_rank_accuracy(unit.maps, _unit_masks(unit), ids=list(unit.ids))
    return value_records(unit, result.values, "not finite")


@dataclass(frozen=True)
class AttributionLocalisationSettings:
    """``weighted``: multiply by (H*W) / |mask| (our reading of the size-weighted variant; off by
    default, Kohlbrenner et al.'s mu)."""

    weighted: bool = False
    methods: list | None = None

    def check(self) -> None:
        check_bool("weighted", self.weighted)


@register_metric("attribution_localisation", settings=AttributionLocalisationSettings,
                 direction="up", citation="Kohlbrenner et al. 2020 (IJCNN, arXiv:1910.09840)",
                 needs=("maps", "masks"), criterion="localisation")
def _attribution_records(unit, settings: AttributionLocalisationSettings) -> list[dict]:
    """Attribution localisation: positive relevance inside the mask over the positive relevance
    in the image."""
    result = attribution_localisation(unit.maps, _unit_masks(unit), weighted=settings.weighted,
                                      ids=list(unit.ids))
    return value_records(unit, result.values, "the map has no positive relevance")


@dataclass(frozen=True)
class TopKSettings:
    """``k`` highest-ranked pixels (Quantus' 1000; at most H*W, checked against the model's input
    before the run); ``concept_influence`` multiplies by (H*W) / |mask| (Quantus' option)."""

    k: int = 1000
    concept_influence: bool = False
    methods: list | None = None

    def check(self) -> None:
        check_int("k", self.k, 1)  # pixels
        check_bool("concept_influence", self.concept_influence)


@register_metric("top_k_intersection", settings=TopKSettings, direction="up",
                 citation="Theiner, Müller-Budack & Ewerth 2022 (WACV, arXiv:2104.14995); "
                          "Quantus TopKIntersection", needs=("maps", "masks"),
                 criterion="localisation")
def _top_k_records(unit, settings: TopKSettings) -> list[dict]:
    """Top-k intersection: the share of the k highest-ranked pixels inside the mask."""
    result = top_k_intersection(unit.maps, _unit_masks(unit), k=settings.k,
                                concept_influence=settings.concept_influence, ids=list(unit.ids))
    return value_records(unit, result.values, "not finite")
