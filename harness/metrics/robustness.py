"""Robustness of explanations: does the map change when the input barely does?

Each metric re-runs the saliency method on ``n_samples`` perturbed copies x' = x + delta of every
image (delta uniform in the L-infinity ball of ``radius``, in [0, 1] pixel units by default) and
reduces a per-sample quotient to one value per image; lower is more robust:

- Max-Sensitivity (Yeh et al., NeurIPS 2019, "On the (In)fidelity and Sensitivity of
  Explanations"; reference ``chihkuanyeh/saliency_evaluation`` ``infid_sen_utils.py``
  ``get_exp_sens``): max over samples of ||phi(x') - phi(x)|| / ||phi(x)|| (the division is the
  reference code's; defaults r = 0.2, 50 samples, Frobenius norm).
- Avg-Sensitivity (Bhatt, Weller & Moura, IJCAI 2020; Quantus ``AvgSensitivity``): the mean of
  the same quotient (``same_prediction=True``: only samples keeping the top-1 class).
- Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018, arXiv:1806.08049): max over samples
  of ||phi(x') - phi(x)||_2 / ||x' - x||_2, a Monte-Carlo lower bound of the paper's maximum.
- Relative Input Stability (Agarwal et al. 2022, arXiv:2203.06877): max over samples with the
  same top-1 class of ||(e_x - e_x') / e_x||_p / max(||(x - x') / x||_p, eps_min).

Units, randomness, normalisation and peer settings (Captum, Quantus, OpenXAI):
docs/robustness.md and the metric reference (docs/metrics.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.errors import MetricError
from harness.metrics.neighbourhood import (
    NORMS,
    Neighbourhood,
    SampleStatistics,
    check_neighbourhood,
    check_stability,
    default_batch_size,
    draw_perturbations,
    kept_predictions,
    max_normalised,
    pixel_scale,
    sample_statistics,
)
from harness.metrics.registry import register_metric
from harness.settings import check, check_bool, check_choice

__all__ = ["RobustnessResult", "avg_sensitivity", "default_batch_size", "draw_perturbations",
           "local_lipschitz_estimate", "max_normalised", "max_sensitivity",
           "relative_input_stability", "sample_statistics"]


@dataclass(frozen=True)
class RobustnessResult:
    """Per-image robustness values of one metric.

    ``values`` ``[N]`` float64 (the number the paper reports per image), ``samples``
    ``[N, n_samples]`` the per-sample quotients, ``included`` ``[N, n_samples]`` which samples
    entered the value (all, except where Relative Input Stability drops samples that changed the
    prediction), ``kept`` ``[N]`` their count, and the method and settings that produced them.
    """

    metric: str
    values: torch.Tensor
    samples: torch.Tensor
    included: torch.Tensor
    kept: torch.Tensor
    method: str
    settings: dict = field(default_factory=dict)


def _result(metric: str, method: str, values: torch.Tensor, included: torch.Tensor | None,
            reduce: str, settings: dict) -> RobustnessResult:
    """Reduce per-sample ``values`` ``[N, S]`` over the ``included`` samples (all if None):
    ``max`` (NaN propagates) or ``mean``; NaN where no sample is included."""
    if included is None:
        included = torch.ones_like(values, dtype=torch.bool)
    kept = included.sum(dim=1)
    if reduce == "max":
        reduced = torch.where(included, values, -torch.inf).amax(dim=1)
    else:
        reduced = torch.where(included, values, 0.0).sum(dim=1) / kept
    reduced = torch.where(kept > 0, reduced, torch.nan)
    return RobustnessResult(metric, reduced, values, included, kept, method, settings)


def _settings(neighbourhood: Neighbourhood, model, method_params, **extra) -> dict:
    return {**dataclasses.asdict(neighbourhood),
            "pixel_std": pixel_scale(model, neighbourhood.radius_units),
            "method_params": dict(method_params or {}), **extra}


def sensitivity_from(stats: SampleStatistics, *, norm: str = "fro", reduce: str = "max",
                     same_prediction: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample sensitivity quotients ``[N, S]`` and the samples included (None: all)."""
    check_choice("norm", norm, tuple(NORMS))
    if same_prediction and stats.same_prediction is None:
        raise MetricError("same_prediction needs statistics computed with predictions=True")
    values = stats.difference[norm] / stats.clean_norm[norm].view(-1, 1)
    return values, stats.same_prediction if same_prediction else None


def lipschitz_from(stats: SampleStatistics, *, normalise: bool = False) -> torch.Tensor:
    """Per-sample Lipschitz quotients ``[N, S]``."""
    numerator = stats.difference_normalised if normalise else stats.difference["fro"]
    return numerator / stats.delta_norm


def stability_from(stats: SampleStatistics) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample RIS quotients ``[N, S]`` and the samples that kept the prediction."""
    if stats.same_prediction is None:
        raise MetricError("relative input stability needs statistics computed with "
                         "predictions=True")
    values = stats.relative_explanation / stats.relative_input.clamp(min=stats.eps_min)
    return values, stats.same_prediction


def max_sensitivity(model: nn.Module, method: str, x: torch.Tensor, target, *,
                    method_params: dict | None = None, radius: float = 0.2,
                    radius_units: str = "pixel", n_samples: int = 50, noise: str = "uniform",
                    norm: str = "fro", same_prediction: bool = False, seed: int = 0,
                    ids: Sequence | None = None,
                    batch_size: int | None = None) -> RobustnessResult:
    """Max-Sensitivity (Yeh et al. 2019, divided by ||phi(x)|| as the reference code does): max
    over ``n_samples`` deltas in the L-inf ball of ``radius`` of
    ||phi(x + delta) - phi(x)|| / ||phi(x)||, ``[N]``. Defaults: the reference's r = 0.2 in [0, 1]
    pixel units (``radius_units="pixel"``: r / std_c per channel of the normalised input;
    ``"input"``: the ball in the model's input space, Captum's and Quantus' convention), 50
    samples, Frobenius norm (``norm`` also ``"l1"``, ``"linf"``, applied to both).
    ``same_prediction``: only samples keeping the clean top-1 class (Bhatt et al.'s N_r).
    See the module docstring for Captum's and Quantus' settings."""
    settings = check(SensitivitySettings(radius, radius_units, n_samples, noise, batch_size,
                                         norm=norm, same_prediction=same_prediction))
    return _sensitivity("max_sensitivity", "max", model, method, x, target, method_params,
                        settings.neighbourhood(seed), norm, same_prediction, ids)


def avg_sensitivity(model: nn.Module, method: str, x: torch.Tensor, target, *,
                    method_params: dict | None = None, radius: float = 0.2,
                    radius_units: str = "pixel", n_samples: int = 50, noise: str = "uniform",
                    norm: str = "fro", same_prediction: bool = False, seed: int = 0,
                    ids: Sequence | None = None,
                    batch_size: int | None = None) -> RobustnessResult:
    """Avg-Sensitivity, Quantus' ``AvgSensitivity`` variant of Bhatt et al.'s mu_A: the mean over
    samples of the Max-Sensitivity quotient (divided by ||phi(x)||; every sample counts unless
    ``same_prediction``), same defaults and the same deltas as ``max_sensitivity``."""
    settings = check(SensitivitySettings(radius, radius_units, n_samples, noise, batch_size,
                                         norm=norm, same_prediction=same_prediction))
    return _sensitivity("avg_sensitivity", "mean", model, method, x, target, method_params,
                        settings.neighbourhood(seed), norm, same_prediction, ids)


def _sensitivity(metric, reduce, model, method, x, target, method_params, neighbourhood, norm,
                 same_prediction, ids) -> RobustnessResult:
    stats = sample_statistics(model, method, x, target, method_params=method_params,
                              neighbourhood=neighbourhood, predictions=same_prediction, ids=ids)
    values, included = sensitivity_from(stats, norm=norm, same_prediction=same_prediction)
    return _result(metric, method, values, included, reduce,
                   _settings(neighbourhood, model, method_params, norm=norm,
                             same_prediction=same_prediction))


def local_lipschitz_estimate(model: nn.Module, method: str, x: torch.Tensor, target, *,
                             method_params: dict | None = None, radius: float = 0.2,
                             radius_units: str = "pixel", n_samples: int = 50,
                             noise: str = "uniform", normalise: bool = False, seed: int = 0,
                             ids: Sequence | None = None,
                             batch_size: int | None = None) -> RobustnessResult:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018): max over samples of
    ||phi(x + delta) - phi(x)||_2 / ||delta||_2 (delta over all C*H*W elements of the model
    input, whatever ``radius_units`` says about the ball), ``[N]``; no sample is filtered.

    Defaults: the same neighbourhood as Max-Sensitivity (uniform L-inf ball, r = 0.2 pixel units,
    50 samples), so the robustness family shares its samples. ``normalise=True`` gives Quantus'
    normalised variant (maps divided by their max |value| before the difference; per map here,
    per batch in Quantus); Quantus' defaults are ``noise="gaussian", radius=0.1,
    radius_units="input", n_samples=200, normalise=True``.
    """
    neighbourhood = check(LipschitzSettings(radius, radius_units, n_samples, noise, batch_size,
                                            normalise=normalise)).neighbourhood(seed)
    stats = sample_statistics(model, method, x, target, method_params=method_params,
                              neighbourhood=neighbourhood, ids=ids)
    return _result("local_lipschitz_estimate", method, lipschitz_from(stats, normalise=normalise),
                   None, "max", _settings(neighbourhood, model, method_params,
                                          normalise=normalise))


def relative_input_stability(model: nn.Module, method: str, x: torch.Tensor, target, *,
                             method_params: dict | None = None, radius: float = 0.2,
                             radius_units: str = "pixel", n_samples: int = 50,
                             noise: str = "uniform", p: float = 2.0, eps_min: float = 1e-6,
                             seed: int = 0, ids: Sequence | None = None,
                             batch_size: int | None = None) -> RobustnessResult:
    """Relative Input Stability (Agarwal et al. 2022): max over the samples whose top-1 prediction
    equals the clean image's of ||(e_x - e_x') / e_x||_p / max(||(x - x') / x||_p, eps_min),
    ``[N]`` (NaN when every sample changed the prediction; ``kept`` says how many entered).

    Zero divisors are replaced by ``eps_min`` elementwise (Quantus' guard), so maps with exact
    zeros (e.g. Grad-CAM's ReLU) give very large values. ``x`` is the model input (normalised):
    relative changes are measured in that space whatever ``radius_units`` says about the ball.
    Defaults: the same neighbourhood as Max-Sensitivity.
    """
    neighbourhood = check(StabilitySettings(radius, radius_units, n_samples, noise, batch_size,
                                            p=p, eps_min=eps_min)).neighbourhood(seed)
    stats = sample_statistics(model, method, x, target, method_params=method_params,
                              neighbourhood=neighbourhood, p=p, eps_min=eps_min,
                              predictions=True, ids=ids)
    values, included = stability_from(stats)
    return _result("relative_input_stability", method, values, included, "max",
                   _settings(neighbourhood, model, method_params, p=p, eps_min=eps_min))


# ----------------------------------------------------------------------------- registry entries


@dataclass(frozen=True)
class NeighbourhoodSettings:
    """The sampled neighbourhood (defaults: the reference's, ``chihkuanyeh/saliency_evaluation``
    ``config.py``): ``radius`` 0.2 in ``radius_units`` (``pixel``: [0, 1] pixels as the reference,
    converted with the model's std; ``input``: the model's normalised input, Captum's and
    Quantus' convention), ``n_samples`` 50, ``noise`` uniform in the L-inf ball (or ``gaussian``,
    N(0, radius^2)), ``batch_size`` perturbed inputs per method call (None: 4 on the CPU, 128 on
    accelerators). The deltas are seeded by the experiment seed and the image id; every
    robustness metric with the same neighbourhood reuses one pass of the method (per unit)."""

    radius: float = 0.2
    radius_units: str = "pixel"
    n_samples: int = 50
    noise: str = "uniform"
    batch_size: int | None = None
    methods: list | None = None

    def check(self) -> None:
        check_neighbourhood(self)

    def neighbourhood(self, seed: int) -> Neighbourhood:
        return Neighbourhood(float(self.radius), self.radius_units, self.n_samples, self.noise,
                             seed, self.batch_size)


@dataclass(frozen=True)
class SensitivitySettings(NeighbourhoodSettings):
    """Max-/Avg-Sensitivity: ``norm`` of the map difference and of the clean map (``fro``, the
    reference's; ``l1``, ``linf``); ``same_prediction`` keeps only samples with the clean top-1
    class (Bhatt et al.'s neighbourhood; off: the reference's and Quantus' default)."""

    norm: str = "fro"
    same_prediction: bool = False

    def check(self) -> None:
        super().check()
        check_choice("norm", self.norm, tuple(NORMS))
        check_bool("same_prediction", self.same_prediction)


@dataclass(frozen=True)
class LipschitzSettings(NeighbourhoodSettings):
    """Local Lipschitz estimate: ``normalise`` divides each map by its max |value| first
    (Quantus' normalised variant; off: the paper's quotient)."""

    normalise: bool = False

    def check(self) -> None:
        super().check()
        check_bool("normalise", self.normalise)


@dataclass(frozen=True)
class StabilitySettings(NeighbourhoodSettings):
    """Relative input stability: the ``p``-norm (2) and the ``eps_min`` guard (1e-6), Agarwal et
    al.'s and Quantus' defaults."""

    p: float = 2.0
    eps_min: float = 1e-6

    def check(self) -> None:
        super().check()
        check_stability(self.p, self.eps_min)


def unit_statistics(unit, settings: NeighbourhoodSettings, *, predictions: bool = False,
                    p: float = 2.0, eps_min: float = 1e-6) -> SampleStatistics:
    """The unit's ``SampleStatistics`` for this neighbourhood, computed once per unit and shared
    by every robustness metric with the same neighbourhood (``unit.shared``); the prediction check
    is a separate forward-only pass, made when a metric first needs it."""
    neighbourhood = settings.neighbourhood(unit.seed)
    key = ("robustness", neighbourhood, float(p), float(eps_min))
    stats = unit.shared.get(key)
    if stats is None:
        stats = sample_statistics(unit.model, unit.method, unit.x, unit.target,
                                  method_params=unit.method_params, neighbourhood=neighbourhood,
                                  p=p, eps_min=eps_min, ids=list(unit.ids))
    if predictions and stats.same_prediction is None:
        same = unit.shared.get(("robustness_predictions", neighbourhood))
        if same is None:
            same = kept_predictions(unit.model, unit.x, neighbourhood=neighbourhood,
                                    ids=list(unit.ids))
            unit.shared[("robustness_predictions", neighbourhood)] = same
        stats = dataclasses.replace(stats, same_prediction=same)
    unit.shared[key] = stats
    return stats


def _records(unit, result: RobustnessResult, *, zero_norm: torch.Tensor | None = None,
             filtered: bool = False) -> list[dict]:
    records = []
    for index, image_id in enumerate(unit.ids):
        value = float(result.values[index])
        record = {"image_id": image_id, "value": value if math.isfinite(value) else None}
        if filtered:
            record["kept"] = int(result.kept[index])
        if not math.isfinite(value):
            if filtered and int(result.kept[index]) == 0:
                record["status"] = "undefined: every sample changed the prediction"
            elif zero_norm is not None and bool(zero_norm[index]):
                record["status"] = "undefined: the clean map is all zeros (||phi(x)|| = 0)"
            else:
                record["status"] = "undefined: not finite"
        records.append(record)
    return records


def _sensitivity_records(metric: str, reduce: str):
    def records(unit, settings: SensitivitySettings) -> list[dict]:
        stats = unit_statistics(unit, settings, predictions=settings.same_prediction)
        values, included = sensitivity_from(stats, norm=settings.norm,
                                            same_prediction=settings.same_prediction)
        result = _result(metric, unit.method, values, included, reduce, {})
        return _records(unit, result, zero_norm=stats.clean_norm[settings.norm] == 0,
                        filtered=settings.same_prediction)

    return records


_YEH = ("Yeh et al. 2019 (NeurIPS, arXiv:1901.09392), reference chihkuanyeh/saliency_evaluation "
        "infid_sen_utils.py")
register_metric("max_sensitivity", settings=SensitivitySettings, direction="down",
                citation=_YEH, needs=("method",), criterion="robustness",
                summary="Max-Sensitivity: the largest relative change of the map, "
                        "||phi(x') - phi(x)|| / ||phi(x)||, over an L-inf ball around the input")(
    _sensitivity_records("max_sensitivity", "max"))
register_metric("avg_sensitivity", settings=SensitivitySettings, direction="down",
                citation=f"Bhatt et al. 2020 (IJCAI, arXiv:2005.00631) as Quantus' AvgSensitivity; "
                         f"{_YEH}", needs=("method",), criterion="robustness",
                summary="Avg-Sensitivity: the mean relative change of the map over the ball")(
    _sensitivity_records("avg_sensitivity", "mean"))


@register_metric("local_lipschitz_estimate", settings=LipschitzSettings, direction="down",
                 citation="Alvarez-Melis & Jaakkola 2018 (arXiv:1806.08049)", needs=("method",),
                 criterion="robustness")
def _lipschitz_records(unit, settings: LipschitzSettings) -> list[dict]:
    """Local Lipschitz estimate: max over the ball of ||phi(x') - phi(x)||_2 / ||x' - x||_2."""
    stats = unit_statistics(unit, settings)
    result = _result("local_lipschitz_estimate", unit.method,
                     lipschitz_from(stats, normalise=settings.normalise), None, "max", {})
    return _records(unit, result)


@register_metric("relative_input_stability", settings=StabilitySettings, direction="down",
                 citation="Agarwal et al. 2022 (arXiv:2203.06877)", needs=("method",),
                 criterion="robustness")
def _stability_records(unit, settings: StabilitySettings) -> list[dict]:
    """Relative input stability: max over samples keeping the prediction of the relative change
    of the map over the relative change of the input."""
    stats = unit_statistics(unit, settings, predictions=True, p=settings.p,
                            eps_min=settings.eps_min)
    values, included = stability_from(stats)
    result = _result("relative_input_stability", unit.method, values, included, "max", {})
    return _records(unit, result, filtered=True)
