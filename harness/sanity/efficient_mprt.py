"""Efficient MPRT (Hedström, Weber, Lapuschkin & Höhne, "A Fresh Look at Sanity Checks for
Saliency Maps", xAI 2024; Quantus 0.6 ``metrics/randomisation/efficient_mprt.py``): the relative
rise of the map's histogram entropy from the model to its fully randomized copy (definitions,
defaults and the differences from Quantus: ``harness.sanity.revisited``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn

from harness.errors import MetricError
from harness.methods import get_method, saliency_batched
from harness.metrics._common import MAPS, defined, unit_map
from harness.metrics.registry import register_metric
from harness.sanity.randomization import ORDERS, randomized_models
from harness.sanity.revisited import NORMALISES, check_blocks, evaluated_steps, preprocess_maps
from harness.settings import check_bool, check_choice, check_int, check_seed

BIN_RULES = ("freedman_diaconis", "scott", "square_root", "sturges", "rice")


def discrete_entropy(values: np.ndarray, n_bins: int) -> float:
    """Entropy (natural log) of the histogram of ``values`` with ``n_bins`` equal-width bins over
    [min, max] (``numpy.histogram``; ``scipy.stats.entropy`` normalises the counts): Quantus'
    ``discrete_entropy``."""
    histogram, _ = np.histogram(np.ravel(values), bins=n_bins)
    return float(stats.entropy(histogram))


def bins_by_rule(values: np.ndarray, rule: str) -> int:
    """The number of bins of one map's ``n`` values by ``rule`` (textbook forms, ``n`` the number
    of values): Freedman-Diaconis ``range / (2 IQR n^(-1/3))`` (bin width at least 1e-6, as
    Quantus), Scott ``range / (3.5 std n^(-1/3))``, square root ``sqrt(n)``, Sturges
    ``log2(n) + 1``, Rice ``2 n^(1/3)``; truncated to an integer."""
    values = np.ravel(np.asarray(values, dtype=np.float64))
    n = values.size
    span = float(values.max() - values.min())
    if rule == "freedman_diaconis":
        iqr = float(np.percentile(values, 75) - np.percentile(values, 25))
        return int(span / max(2 * iqr / n ** (1 / 3), 1e-6))
    if rule == "scott":
        width = 3.5 * float(np.std(values)) / n ** (1 / 3)
        return int(span / width) if width > 0 else 1
    if rule == "square_root":
        return int(np.sqrt(n))
    if rule == "sturges":
        return int(np.log2(n) + 1)
    if rule == "rice":
        return int(2 * n ** (1 / 3))
    raise MetricError(f"rule {rule!r} is not one of: {', '.join(BIN_RULES)}")

# ----------------------------------------------------------------------------- Efficient MPRT


@dataclass(frozen=True)
class EfficientMPRTSettings:
    """Settings of ``efficient_mprt`` (defaults: Quantus 0.6 ``EfficientMPRT``)."""

    n_bins: int = 100
    rule: str | None = None  # a bin rule per map instead of n_bins
    min_bins: int = 10
    max_bins: int = 200
    abs: bool = False
    normalise: str = "none"
    map: str = "absolute"  # or the method's signed variant (where it has one)
    order: str = "bottom_up"
    blocks: list | None = None
    skip_layers: bool = True  # False: also record the complexity after every step
    seed: int = 0
    methods: list | None = None

    def check(self) -> None:
        check_int("n_bins", self.n_bins, 1)
        if self.rule is not None:
            check_choice("rule", self.rule, BIN_RULES)
        check_int("min_bins", self.min_bins, 1)
        check_int("max_bins", self.max_bins, self.min_bins)
        check_bool("abs", self.abs)
        check_choice("normalise", self.normalise, NORMALISES)
        check_choice("map", self.map, MAPS)
        check_choice("order", self.order, ORDERS)
        check_bool("skip_layers", self.skip_layers)
        check_seed("seed", self.seed)
        check_blocks(self.blocks)

    def bins(self, values: np.ndarray) -> int:
        """The number of bins for one map's values."""
        if self.rule is None:
            return self.n_bins
        return max(min(bins_by_rule(values, self.rule), self.max_bins), self.min_bins)


@dataclass(frozen=True)
class EfficientMPRTResult:
    """``values`` ``[N]`` = (H_random - H_original) / H_original (NaN where H_original = 0,
    ``status`` says why); the complexities ``[N, 1 + steps]`` (the original first; with
    ``skip_layers`` only the fully randomized model after it), the blocks of the steps, the
    number of bins per image and map, and the entropy of the models' softmax outputs
    ``[N, 1 + steps]`` (Quantus' extra scores)."""

    values: np.ndarray
    status: tuple[str, ...]
    complexities: np.ndarray
    steps: tuple[str, ...]
    bins: np.ndarray
    model_entropies: np.ndarray
    settings: EfficientMPRTSettings
    map: str = "absolute"  # the maps used: "signed" only where the method has a signed variant


def _complexities(maps: torch.Tensor, config: EfficientMPRTSettings
                  ) -> tuple[np.ndarray, np.ndarray]:
    values = preprocess_maps(maps.detach().double().cpu().numpy(), normalise=config.normalise,
                             abs=config.abs)
    bins = np.array([config.bins(v) for v in values])
    return np.array([discrete_entropy(v, b) for v, b in zip(values, bins, strict=True)]), bins


def _output_entropy(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.inference_mode():
        probs = torch.cat([model(x[i:i + batch_size]).softmax(dim=1)
                           for i in range(0, x.shape[0], batch_size)]).double().cpu()
    return stats.entropy(probs.numpy(), axis=1)


def efficient_mprt(model: nn.Module, method: str, x: torch.Tensor, target, *,
                   method_params: dict | None = None, maps: torch.Tensor | None = None,
                   batch_size: int = 16, **settings) -> EfficientMPRTResult:
    """Efficient MPRT of ``method`` on ``x`` ``[N, C, H, W]`` explaining ``target`` ``[N]`` (see
    the module docstring); ``settings`` are the fields of ``EfficientMPRTSettings``. ``maps``:
    the method's maps ``[N, H, W]`` on the original model (its signed maps under
    ``map="signed"`` where it has them) when already computed."""
    config = EfficientMPRTSettings(**settings)
    config.check()
    signed = config.map == "signed" and get_method(method).signed is not None
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    params = dict(method_params or {})
    if maps is None:
        maps = saliency_batched(method, model, x, target, batch_size=batch_size,
                                method_params=params, signed=signed)
    steps = evaluated_steps(model, config.blocks, mode="cascading", order=config.order,
                            skip_layers=config.skip_layers)
    complexities, bins = [], []
    entropies = [_output_entropy(model, x, batch_size)]
    values, used = _complexities(maps, config)
    complexities.append(values)
    bins.append(used)
    for randomized in randomized_models(model, steps, seed=config.seed):
        other = saliency_batched(method, randomized, x, target, batch_size=batch_size,
                                 method_params=params, signed=signed)
        values, used = _complexities(other, config)
        complexities.append(values)
        bins.append(used)
        entropies.append(_output_entropy(randomized, x, batch_size))
    complexities = np.stack(complexities, axis=1)
    first, last = complexities[:, 0], complexities[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.where(first != 0, (last - first) / np.where(first != 0, first, 1.0), np.nan)
    status = tuple("ok" if c != 0 else "undefined: the original map's entropy is 0 (all its "
                   "values in one bin)" for c in first)
    return EfficientMPRTResult(rise, status, complexities,
                               tuple(block.label for block, _, _ in steps),
                               np.stack(bins, axis=1), np.stack(entropies, axis=1), config,
                               "signed" if signed else "absolute")


@register_metric("efficient_mprt", settings=EfficientMPRTSettings, direction="up",
                 citation="Hedström et al. 2024 (xAI, arXiv:2401.06465), Quantus EfficientMPRT",
                 needs=("maps", "method"), curves=lambda frame: {})
def _efficient_mprt_records(unit, settings: EfficientMPRTSettings) -> list[dict]:
    """Efficient MPRT: the relative rise of the map's histogram entropy from the model to its
    fully randomized copy; higher (more sensitive to the model) is better."""
    maps, _ = unit_map(unit, settings.map)
    result = efficient_mprt(unit.model, unit.method, unit.x, unit.target,
                            method_params=unit.method_params, maps=maps,
                            batch_size=unit.batch_size, **vars(settings) | {"methods": None})
    records = []
    for i, image_id in enumerate(unit.ids):
        record = {"image_id": image_id, "value": defined(result.values[i]),
                  "status": result.status[i],
                  "complexity_original": float(result.complexities[i, 0]),
                  "complexity_randomized": float(result.complexities[i, -1]),
                  "model_entropy_original": float(result.model_entropies[i, 0]),
                  "model_entropy_randomized": float(result.model_entropies[i, -1]),
                  "n_bins": int(result.bins[i, 0]), "order": settings.order,
                  "abs": settings.abs, "map": result.map,
                  "map_normalisation": settings.normalise}
        if not settings.skip_layers:
            record["complexity_curve"] = [float(c) for c in result.complexities[i]]
        records.append(record)
    return records
