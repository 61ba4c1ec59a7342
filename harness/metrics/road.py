"""ROAD: RemOve And Debias (Rong, Leemann, Nguyen, Fiedler, Kasneci & Kasneci, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods", ICML 2022), as its reference code computes
it (``tleemann/road_evaluation``: ``road/road.py`` ``run_road``, ``road/imputed_dataset.py``,
``road/retraining.py`` ``road_eval``).

Each map is min-max scaled, ``(s - min) / (max - min + 1e-5)``, plus a tie-break map ``1e-4 N(0,
1)`` ``[H, W]`` drawn per (``seed``, order, percentage); MoRF removes the ``int(H * W * p)``
top-ranked pixels, LeRF all but them; removed pixels are imputed (``linear``, ``mean``, ``zero``:
``harness.metrics.imputation``) and the image scored (``correct``: top-1 == ``labels``; ``probs``:
softmax probability of ``target``). ``values`` is the mean over percentages of the chosen score
(``accuracy``, the paper's number, or ``prob``); MoRF lower is better, LeRF higher.
``road_combined``: (LeRF - MoRF) / 2 over the removed fractions both orders share.

Where the paper's text and the code differ (followed: the code), peers (pytorch-grad-cam, Quantus)
and patch granularity: docs/faithfulness.md (ROAD) and the metric reference (docs/metrics.md).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from harness.errors import ConfigError, MetricError
from harness.metrics._common import validate_maps
from harness.metrics.causal import check_patch, check_patch_setting, patch_means, resolve_patch
from harness.metrics.imputation import (
    IMPUTERS,
    add_noise,
    mean_impute,
    per_channel,
    solve_linear,
    zero_impute,
)
from harness.metrics.registry import CELL_COLUMNS, record_curves, register_metric
from harness.models import model_info
from harness.seeding import image_generator
from harness.settings import (
    check,
    check_choice,
    check_int,
    check_number,
    check_seed,
    check_target_range,
)

ORDERS = ("morf", "lerf")
PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)
SCORES = ("accuracy", "prob")
SCALE_EPSILON = 1e-5  # the reference's normalize_map epsilon
TIE_BREAK_SCALE = 1e-4  # the reference's random_v = 1e-4 * randn(H, W)
FRACTION_TOLERANCE = 1e-9  # removed fractions p (MoRF) and 1 - p (LeRF) that match


class RoadAlignmentError(MetricError):
    """A MoRF and a LeRF curve share no removed fraction, so ``road_combined`` is undefined."""


@dataclass(frozen=True)
class RoadResult:
    """Per-image ROAD curves of one order.

    ``probs`` ``[N, P]`` (float64, softmax probability of the target), ``correct`` ``[N, P]``
    (bool, top-1 == label), ``labels`` ``[N]`` (the labels correctness was checked against: the
    given ones, else the clean image's top-1 prediction), ``removed_fraction`` ``[P]`` (fraction
    of pixels removed at each point: int(H W p) / (H W) for MoRF, 1 - int(H W p) / (H W) for
    LeRF), ``values`` ``[N]`` (the mean of ``scores`` over the percentages), ``score``
    (``"accuracy"``: ``scores`` = ``correct``; ``"prob"``: ``scores`` = ``probs``),
    ``clean_probs`` ``[N]`` (the target's probability on the intact image), ``noise`` (per
    channel, in the model's input units; empty unless linear)."""

    order: str
    imputer: str
    score: str
    percentages: tuple[float, ...]
    removed_fraction: torch.Tensor
    probs: torch.Tensor
    correct: torch.Tensor
    labels: torch.Tensor
    values: torch.Tensor
    clean_probs: torch.Tensor
    noise: tuple[float, ...]
    seed: int
    patch: int | None = None  # patch granularity: whole P x P patches ranked and removed

    @property
    def scores(self) -> torch.Tensor:
        """``[N, P]`` float64: the per-point score ``values`` averages (``score``)."""
        return score_points(self.probs, self.correct, self.score)

    @property
    def nominal_removed(self) -> tuple[float, ...]:
        """The fraction each percentage removes by definition: p (MoRF) or 1 - p (LeRF)."""
        return nominal_removed(self.percentages, self.order)

    @property
    def accuracy(self) -> torch.Tensor:
        """``[P]``: the fraction of images classified correctly (the reference's accuracy)."""
        return self.correct.double().mean(dim=0)

    @property
    def mean_probs(self) -> torch.Tensor:
        """``[P]``: the mean target probability (the reference's average probability)."""
        return self.probs.mean(dim=0)


def score_points(probs: torch.Tensor, correct: torch.Tensor, score: str) -> torch.Tensor:
    """``[N, P]`` float64: ``correct`` as 0/1 (``"accuracy"``) or ``probs`` (``"prob"``)."""
    check_choice("score", score, SCORES)
    return correct.double() if score == "accuracy" else probs.double()


def nominal_removed(percentages: Sequence[float], order: str) -> tuple[float, ...]:
    """p for MoRF, 1 - p for LeRF: the fraction of pixels each percentage removes."""
    return tuple(float(p) if order == "morf" else 1.0 - float(p) for p in percentages)


def aligned_points(morf_percentages: Sequence[float], lerf_percentages: Sequence[float]
                   ) -> list[tuple[float, int, int]]:
    """``(removed fraction, MoRF index, LeRF index)`` for every removed fraction both orders
    have (MoRF at p and LeRF at 1 - p), ascending; raises ``RoadAlignmentError`` if none."""
    morf_removed = nominal_removed(morf_percentages, "morf")
    lerf_removed = nominal_removed(lerf_percentages, "lerf")
    points = [(fraction, i, j) for i, fraction in enumerate(morf_removed)
              for j, other in enumerate(lerf_removed)
              if abs(fraction - other) <= FRACTION_TOLERANCE]
    if not points:
        raise RoadAlignmentError(
            f"MoRF removes the fractions {_fractions(morf_removed)} and LeRF (which removes 1 - "
            f"p at percentage p) {_fractions(lerf_removed)}: none in common, so road_combined "
            "is undefined; use percentages that contain 1 - p for some p, e.g. 0.5 or "
            f"{PERCENTAGES}")
    return sorted(points)


def _fractions(values: Sequence[float]) -> str:
    return "{" + ", ".join(f"{v:.6g}" for v in sorted(values)) + "}"


def road_combined(morf_result: RoadResult, lerf_result: RoadResult) -> torch.Tensor:
    """ROAD combined ``[N]`` float64, higher is better: per image, the mean over the removed
    fractions both curves have (``aligned_points``) of (LeRF score - MoRF score) / 2, with the
    results' ``score``. On pytorch-grad-cam's grid 0.1, ..., 0.9 every fraction is shared and this
    is (mean LeRF - mean MoRF) / 2, its ``ROADCombined``; with the reference's 7 percentages the
    fractions {0.1, 0.3, 0.5, 0.7, 0.9}. ``RoadAlignmentError`` if they share none."""
    if morf_result.order != "morf" or lerf_result.order != "lerf":
        raise MetricError(f"road_combined needs a morf and a lerf result, got "
                         f"{morf_result.order!r} and {lerf_result.order!r}")
    if morf_result.score != lerf_result.score:
        raise MetricError(f"scores differ: morf {morf_result.score!r}, lerf "
                         f"{lerf_result.score!r}")
    if morf_result.values.shape != lerf_result.values.shape:
        raise MetricError(f"image counts differ: morf {tuple(morf_result.values.shape)}, lerf "
                         f"{tuple(lerf_result.values.shape)}")
    points = aligned_points(morf_result.percentages, lerf_result.percentages)
    morf_index = [i for _, i, _ in points]
    lerf_index = [j for _, _, j in points]
    difference = lerf_result.scores[:, lerf_index] - morf_result.scores[:, morf_index]
    return difference.mean(dim=1) / 2


def tie_break_map(height: int, width: int, *, seed: int, order: str, percentage: float
                  ) -> torch.Tensor:
    """``1e-4 * N(0, 1)`` ``[H, W]`` float64, one per (seed, order, percentage), on the CPU."""
    generator = image_generator(seed, f"{order}:{percentage!r}", salt="road-tie-break")
    return TIE_BREAK_SCALE * torch.randn(height, width, generator=generator, dtype=torch.float64)


def ranking_scores(saliency: torch.Tensor, tie_break: torch.Tensor) -> torch.Tensor:
    """The reference's ranking key ``[N, H, W]`` float64: each map min-max scaled with
    ``(s - min) / (max - min + 1e-5)`` plus the shared ``tie_break`` ``[H, W]``."""
    flat = saliency.detach().double().flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    high = flat.max(dim=1).values[:, None, None]
    scaled = (saliency.double() - low) / (high - low + SCALE_EPSILON)
    return scaled + tie_break.to(scaled.device)


def kept_count(height: int, width: int, percentage: float) -> int:
    """``int(H * W * p)``: the reference's number of top-ranked pixels (removed by MoRF, kept
    by LeRF)."""
    return int(height * width * percentage)


def removal_mask(scores: torch.Tensor, percentage: float, order: str) -> torch.Tensor:
    """bool ``[N, H, W]``, True where removed: the top ``int(H W p)`` of ``scores`` ``[N, H, W]``
    (MoRF) or all but them (LeRF)."""
    n_images, height, width = scores.shape
    count = kept_count(height, width, percentage)
    flat = scores.flatten(1)
    order_index = torch.sort(flat, dim=1, descending=True, stable=True).indices
    top = torch.zeros_like(flat, dtype=torch.bool)
    top.scatter_(1, order_index[:, :count], True)
    removed = top if order == "morf" else ~top
    return removed.view(n_images, height, width)


def removed_fractions(height: int, width: int, percentages: Sequence[float], order: str
                      ) -> torch.Tensor:
    """``[P]`` float64: the fraction of the H * W pixels removed at each percentage."""
    counts = [kept_count(height, width, p) for p in percentages]
    if order == "lerf":
        counts = [height * width - c for c in counts]
    return torch.tensor(counts, dtype=torch.float64) / (height * width)


def _pixel_stats(model: nn.Module, pixel_mean, pixel_std, channels: int
                 ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    info = getattr(model, "harness_info", None)
    mean = pixel_mean if pixel_mean is not None else (info.mean if info is not None else None)
    std = pixel_std if pixel_std is not None else (info.std if info is not None else None)
    mean = per_channel(mean, channels, "pixel_mean") if mean is not None else None
    std = per_channel(std, channels, "pixel_std") if std is not None else None
    if std is not None and any(s <= 0 for s in std):
        raise MetricError(f"pixel_std must be > 0, got {std}")
    return mean, std


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def percentage_problem(percentages) -> str | None:
    """Why ``percentages`` is not a valid ROAD setting (None if it is): a non-empty sequence of
    distinct fractions in (0, 1)."""
    if _is_number(percentages) or isinstance(percentages, str | bytes) or not isinstance(
            percentages, Sequence | np.ndarray) or len(percentages) == 0:
        return (f"percentages must be a non-empty sequence of fractions in (0, 1), got "
                f"{percentages!r}")
    for p in percentages:
        if not _is_number(p) or not 0 < p < 1 or math.isnan(p):
            return (f"percentage {p!r} is outside (0, 1): percentages are fractions of the "
                    f"pixels, e.g. {PERCENTAGES}")
    repeated = sorted({float(p) for p in percentages
                       if sum(float(q) == float(p) for q in percentages) > 1})
    if repeated:
        return f"percentage {repeated[0]!r} is given twice"
    return None


def validate_road(x: torch.Tensor, saliency: torch.Tensor, target, *, order: str,
                  percentages: Sequence[float], imputer: str, noise: float, score: str,
                  labels, ids: Sequence | None, batch_size: int | None = None,
                  seed: int = 0, patch: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check every setting before any compute (``RoadSettings.check`` for one ``order``), then the
    inputs; return (target, labels or None) as long ``[N]``."""
    check_choice("order", order, ORDERS)
    check(RoadSettings(orders=[order], percentages=percentages, imputer=imputer, noise=noise,
                       score=score, batch_size=batch_size))
    check_seed("seed", seed)
    target = validate_maps(x, saliency, target, ids)
    n_images, _, height, width = x.shape
    check_patch(patch, height, width)
    rows, cols = (height, width) if patch is None else (height // patch, width // patch)
    if imputer == "linear" and order == "lerf":
        for p in percentages:
            if kept_count(rows, cols, p) == 0:
                raise ConfigError(f"percentages: percentage {p!r}: LeRF keeps int(H * W * p) = 0 "
                                  f"of the {rows} x {cols} "
                                  f"{'pixels' if patch is None else 'patches'}, so linear "
                                  "imputation has nothing to impute from")
    if labels is not None:
        labels = torch.as_tensor(labels, device=x.device).long().reshape(-1)
        if labels.shape[0] != n_images:
            raise MetricError(f"labels has {labels.shape[0]} entries for {n_images} images")
    return target, labels


def _probabilities(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                   names: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(inputs).float()
    check_target_range(target, logits.shape[1], names, error=MetricError)
    probs = logits.softmax(dim=1).gather(1, target[:, None])[:, 0]
    return probs.double(), logits.argmax(dim=1)


def road(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, *,
         order: str = "morf", percentages: Sequence[float] = PERCENTAGES,
         imputer: str = "linear", noise: float = 0.01, score: str = "accuracy", labels=None,
         seed: int = 0, ids: Sequence | None = None, batch_size: int | None = None,
         pixel_mean: float | Sequence[float] | None = None,
         pixel_std: float | Sequence[float] | None = None,
         patch: int | None = None) -> RoadResult:
    """ROAD curves of one ``order`` (module docstring) for ``x`` ``[N, C, H, W]`` (the model's
    normalised input, on its device), ``saliency`` ``[N, H, W]``, ``target`` ``[N]`` (the class
    whose probability is scored). ``labels`` ``[N]``: the true labels correctness is checked
    against (the reference's accuracy); None: the clean image's top-1 prediction. ``score``: the
    per-image ``values``, ``"accuracy"`` (mean correctness, the paper's) or ``"prob"`` (mean
    probability). ``noise``: the linear imputer's noise in [0, 1] pixel units (converted with the
    model's std). ``pixel_mean`` / ``pixel_std``: the normalisation when the model carries no
    ``harness_info`` (needed for ``linear`` with noise > 0 and for ``zero``). ``batch_size``:
    images per chunk (default 8 on the CPU, 64 on accelerators). ``patch=P``: rank and remove
    whole P x P patches (module docstring)."""
    target, labels = validate_road(x, saliency, target, order=order, percentages=percentages,
                                   imputer=imputer, noise=noise, score=score, labels=labels,
                                   ids=ids, batch_size=batch_size, seed=seed, patch=patch)
    noise = float(noise)
    n_images, channels, height, width = x.shape
    mean, std = _pixel_stats(model, pixel_mean, pixel_std, channels)
    noise_scales: tuple[float, ...] = ()
    if imputer == "linear":
        if noise > 0 and std is None:
            raise MetricError("linear imputation with noise > 0 needs the model's normalisation "
                             "std: attach harness_info (harness.models.attach_info) or pass "
                             "pixel_std")
        noise_scales = tuple(noise / s for s in std) if noise > 0 else (0.0,) * channels
    if imputer == "zero" and (mean is None or std is None):
        raise MetricError("the zero imputer fills [0, 1]-pixel zeros, (0 - mean) / std in the "
                         "model's input: attach harness_info or pass pixel_mean and pixel_std")
    if batch_size is None:
        batch_size = 8 if x.device.type == "cpu" else 64
    percentages = tuple(float(p) for p in percentages)
    maps = saliency.detach().to(x.device)
    rows, cols = height, width  # the grid that is ranked: pixels, or patches
    if patch is not None:
        maps = patch_means(maps, patch)
        rows, cols = height // patch, width // patch
    tie_breaks = [tie_break_map(rows, cols, seed=seed, order=order, percentage=p)
                  for p in percentages]
    probs = torch.empty(n_images, len(percentages), dtype=torch.float64)
    correct = torch.empty(n_images, len(percentages), dtype=torch.bool)
    clean = torch.empty(n_images, dtype=torch.float64)
    checked = torch.empty(n_images, dtype=torch.long)
    x = x.detach()
    with torch.inference_mode():
        for begin in range(0, n_images, batch_size):
            end = min(begin + batch_size, n_images)
            chunk = x[begin:end]
            keys = [ids[i] if ids is not None else i for i in range(begin, end)]
            names = [ids[i] if ids is not None else f"#{i}" for i in range(begin, end)]
            clean_probs, clean_top1 = _probabilities(model, chunk, target[begin:end], names)
            clean[begin:end] = clean_probs.cpu()
            chunk_labels = clean_top1 if labels is None else labels[begin:end]
            checked[begin:end] = chunk_labels.cpu()
            for k, p in enumerate(percentages):
                removed = removal_mask(ranking_scores(maps[begin:end], tie_breaks[k]), p, order)
                if patch is not None:  # each patch's pixels
                    removed = removed.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
                if imputer == "linear":
                    # no warm start from the previous percentage: benchmarks/road.py measured
                    # no gain, and each point then depends on its own mask only
                    solved = solve_linear(chunk, removed, ids=names)
                    generators = [image_generator(seed, key, salt=f"road-noise:{order}:{p!r}")
                                  for key in keys]
                    imputed = add_noise(solved, removed, noise_scales, generators)
                    imputed = imputed.to(x.dtype)
                elif imputer == "mean":
                    imputed = mean_impute(chunk, removed)
                else:
                    imputed = zero_impute(chunk, removed,
                                          fill=[-m / s for m, s in zip(mean, std, strict=True)])
                batch_probs, predicted = _probabilities(model, imputed, target[begin:end])
                probs[begin:end, k] = batch_probs.cpu()
                correct[begin:end, k] = (predicted == chunk_labels).cpu()
    return RoadResult(order=order, imputer=imputer, score=score, percentages=percentages,
                      removed_fraction=removed_fractions(rows, cols, percentages, order),
                      probs=probs, correct=correct, labels=checked,
                      values=score_points(probs, correct, score).mean(dim=1), clean_probs=clean,
                      noise=noise_scales, seed=seed, patch=patch)


# ----------------------------------------------------------------------------- registry entry


@dataclass(frozen=True)
class RoadSettings:
    """Settings of ROAD (defaults: the reference's experiments): both orders at the reference's
    percentages, noisy linear imputation with noise 0.01 in [0, 1] pixel units, the per-image
    value the paper publishes (``score="accuracy"``; ``"prob"``: the mean probability of the
    target). ``batch_size`` None: 8 images per chunk on the CPU, 64 on accelerators."""

    orders: list = field(default_factory=lambda: list(ORDERS))
    percentages: tuple = PERCENTAGES
    imputer: str = "linear"
    noise: float = 0.01
    score: str = "accuracy"
    batch_size: int | None = None
    methods: list | None = None
    # None: pixel order (the reference); P: whole P x P patches; "model": the model's patch size
    patch: int | str | None = None

    def check(self) -> None:
        check_patch_setting(self.patch)
        if isinstance(self.orders, str) or not self.orders:
            raise ConfigError(f"orders: name at least one of: {', '.join(ORDERS)} (a list), got "
                              f"{self.orders!r}")
        for order in self.orders:
            check_choice("orders", order, ORDERS)
        if len(set(self.orders)) != len(self.orders):
            raise ConfigError(f"orders: an order is named twice in {list(self.orders)}")
        problem = percentage_problem(self.percentages)
        if problem is not None:
            raise ConfigError(f"percentages: {problem}")
        if set(self.orders) == set(ORDERS):
            try:
                aligned_points(self.percentages, self.percentages)
            except RoadAlignmentError as error:
                raise ConfigError(f"percentages: {error}") from None
        check_choice("imputer", self.imputer, tuple(IMPUTERS))
        check_choice("score", self.score, SCORES)
        check_number("noise", self.noise, 0)  # [0, 1] pixel units
        check_int("batch_size", self.batch_size, 1, optional=True)


def _road_parts(settings: RoadSettings, model: nn.Module) -> list[tuple]:
    return [(order, None) for order in settings.orders]


ROAD_COLUMNS = {"morf": ("road_morf", "down"), "lerf": ("road_lerf", "up")}


def _road_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``road_morf`` (lower is better) and ``road_lerf`` (higher) from each order's ``value``;
    ``road_combined`` (higher) from the records' ``combined`` when both orders ran."""
    parts = []
    for order, (column, direction) in ROAD_COLUMNS.items():
        rows = frame[frame["measure"] == order]
        if not rows.empty:
            parts.append(pd.DataFrame({
                "column": column, "direction": direction,
                "image_id": rows["image_id"].to_numpy(),
                "value": rows["value"].to_numpy(dtype=float, na_value=np.nan)}))
    if "combined" in frame:
        rows = frame[(frame["measure"] == "morf") & frame["combined"].notna()]
        if not rows.empty:
            parts.append(pd.DataFrame({
                "column": "road_combined", "direction": "up",
                "image_id": rows["image_id"].to_numpy(),
                "value": rows["combined"].to_numpy(dtype=float, na_value=np.nan)}))
    if not parts:
        return pd.DataFrame(columns=CELL_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def _road_curves(frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``road_morf`` / ``road_lerf``: per image, the chosen score against the removed
    fraction."""
    curves = {}
    for order, (name, _) in ROAD_COLUMNS.items():
        curves.update(record_curves(name)(frame[frame["measure"] == order]))
    return curves


@register_metric("road", settings=RoadSettings, direction="up",
                 citation="Rong, Leemann et al. 2022, ROAD (arXiv:2202.00449), road_evaluation",
                 needs=("maps",), columns=_road_columns, parts=_road_parts,
                 curves=_road_curves,
                 column_directions=(*ROAD_COLUMNS.values(), ("road_combined", "up")),
                 summary="ROAD: the model's accuracy (or probability) as the most (MoRF) or "
                         "least (LeRF) relevant pixels are removed and noisily imputed")
def _road_records(unit, settings: RoadSettings) -> list[dict]:
    """One record per (image, order): ``measure`` the order, ``value`` the mean score over the
    percentages, the per-percentage ``probs`` and ``correct``, ``removed_fraction``, ``curve``
    (the chosen score) against ``curve_x`` (the removed fraction, ascending) and, when both
    orders ran, the image's ``combined``. Correctness is against the dataset labels (the target
    where an image has none)."""
    info = model_info(unit.model)
    labels = unit.label_tensor
    patch = resolve_patch(settings.patch, unit.model)
    results = {order: road(unit.model, unit.x, unit.maps, unit.target, order=order,
                           percentages=tuple(settings.percentages), imputer=settings.imputer,
                           noise=settings.noise, score=settings.score, labels=labels,
                           seed=unit.seed, ids=list(unit.ids), batch_size=settings.batch_size,
                           pixel_mean=info.mean, pixel_std=info.std, patch=patch)
               for order in settings.orders}
    combined = (road_combined(results["morf"], results["lerf"]).tolist()
                if set(results) == set(ORDERS) else None)
    records = []
    for order, result in results.items():
        ascending = torch.argsort(result.removed_fraction, stable=True)
        curve_x = result.removed_fraction[ascending].tolist()
        scores = result.scores[:, ascending].tolist()
        for i, image_id in enumerate(unit.ids):
            record = {"image_id": image_id, "measure": order, "value": float(result.values[i]),
                      "score": settings.score, "imputer": settings.imputer,
                      "probs": result.probs[i].tolist(), "correct": result.correct[i].tolist(),
                      "removed_fraction": result.removed_fraction.tolist(),
                      "clean_prob": float(result.clean_probs[i]),
                      "curve": scores[i], "curve_x": curve_x}
            if combined is not None:
                record["combined"] = combined[i]
            if patch is not None:
                record["patch"] = patch
            records.append(record)
    return records
