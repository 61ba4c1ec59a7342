"""Complexity of a map: is the explanation concise? Pure functions of maps ``[N, H, W]``.

All three read a = |saliency| flattened to n = H W values and return float64 values ``[N]``:

- Sparseness (Chalasani et al., ICML 2020; authors' code ``jfc43/advex``): the Gini index
  G = sum_i (2i - n - 1) a_(i) / (n sum_i a_i), a sorted ascending; higher = sparser.
- Complexity (Bhatt, Weller & Moura, IJCAI 2020; Quantus ``Complexity``): the entropy
  -sum_i P_i ln P_i of P_i = a_i / sum_j a_j; lower = simpler.
- Effective complexity (Nguyen & Rodríguez Martínez 2020, arXiv:2007.07584; Quantus
  ``EffectiveComplexity``): the number of pixels with a_i / max a > eps (1e-5); lower = simpler.

Edge cases and Quantus' batch-wide normalisation: docs/robustness.md (Complexity) and the metric
reference (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from harness.errors import MetricError
from harness.metrics.registry import register_metric, value_records
from harness.settings import check, check_bool, check_number


@dataclass(frozen=True)
class ComplexityResult:
    """Per-image complexity values ``[N]`` float64 of one metric and its settings."""

    metric: str
    values: torch.Tensor
    settings: dict = field(default_factory=dict)


def _absolute(saliency: torch.Tensor, ids: Sequence | None) -> torch.Tensor:
    """``[N, H*W]`` float64 absolute values, after checking shape and finiteness."""
    if not isinstance(saliency, torch.Tensor) or saliency.ndim != 3:
        shape = tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency)
        raise MetricError(f"saliency must be a tensor [N, H, W], got {shape}")
    if ids is not None and len(ids) != saliency.shape[0]:
        raise MetricError(f"ids has {len(ids)} entries for {saliency.shape[0]} maps")
    flat = saliency.reshape(saliency.shape[0], -1).double()
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0, 0])
        name = str(ids[index]) if ids is not None else f"#{index}"
        raise MetricError(f"saliency map of image {name} contains NaN or inf")
    return flat.abs()


def sparseness(saliency: torch.Tensor, *, ids: Sequence | None = None) -> ComplexityResult:
    """Gini index of |map| (Chalasani et al. 2020), ``[N]`` in [0, (n-1)/n]; higher = sparser."""
    values = _absolute(saliency, ids)
    n = values.shape[1]
    ordered = values.sort(dim=1).values
    weights = 2 * torch.arange(1, n + 1, dtype=torch.float64, device=values.device) - n - 1
    total = ordered.sum(dim=1)
    gini = (ordered * weights).sum(dim=1) / (n * total.clamp(min=torch.finfo(torch.float64).tiny))
    return ComplexityResult("sparseness", torch.where(total > 0, gini, 0.0).cpu())


def complexity(saliency: torch.Tensor, *, ids: Sequence | None = None) -> ComplexityResult:
    """Entropy of |map| / sum |map| (Bhatt et al. 2020), ``[N]`` in [0, ln(H*W)]; lower =
    simpler; NaN for an all-zero map."""
    values = _absolute(saliency, ids)
    shares = values / values.sum(dim=1, keepdim=True)
    terms = torch.where(shares > 0, shares * shares.log(), 0.0)
    entropy = -terms.sum(dim=1)
    entropy = torch.where(values.sum(dim=1) > 0, entropy, torch.nan)
    return ComplexityResult("complexity", entropy.cpu())


def effective_complexity(saliency: torch.Tensor, *, eps: float = 1e-5, normalise: bool = True,
                         ids: Sequence | None = None) -> ComplexityResult:
    """Number of pixels with |map| / max |map| > ``eps`` (Quantus' ``EffectiveComplexity``;
    ``normalise=False``: |map| > eps), ``[N]``; lower = simpler."""
    check(EffectiveComplexitySettings(eps=eps, normalise=normalise))
    values = _absolute(saliency, ids)
    if normalise:
        peak = values.amax(dim=1, keepdim=True)
        values = torch.where(peak > 0, values / peak.clamp(min=torch.finfo(torch.float64).tiny),
                             0.0)
    counts = (values > eps).sum(dim=1).double()
    return ComplexityResult("effective_complexity", counts.cpu(),
                            {"eps": eps, "normalise": normalise})


# ----------------------------------------------------------------------------- registry entries


@dataclass(frozen=True)
class ComplexitySettings:
    """No parameters beyond the methods to score (the definition has none)."""

    methods: list | None = None


@dataclass(frozen=True)
class EffectiveComplexitySettings:
    """``eps`` threshold (Quantus' 1e-5) on |map| / max |map| (``normalise``, per map) or on the
    raw |map|."""

    eps: float = 1e-5
    normalise: bool = True
    methods: list | None = None

    def check(self) -> None:
        check_number("eps", self.eps, 0)
        check_bool("normalise", self.normalise)


@register_metric("sparseness", settings=ComplexitySettings, direction="up",
                 citation="Chalasani et al. 2020 (ICML, arXiv:1810.06583); Quantus Sparseness",
                 needs=("maps",), criterion="complexity")
def _sparseness_records(unit, settings: ComplexitySettings) -> list[dict]:
    """Sparseness: the Gini index of |map| (higher: sparser)."""
    return value_records(unit, sparseness(unit.maps, ids=list(unit.ids)).values, "not finite")


@register_metric("complexity", settings=ComplexitySettings, direction="down",
                 citation="Bhatt, Weller & Moura 2020 (IJCAI, arXiv:2005.00631); Quantus "
                          "Complexity", needs=("maps",), criterion="complexity")
def _complexity_records(unit, settings: ComplexitySettings) -> list[dict]:
    """Complexity: the entropy of |map| / sum |map| (lower: simpler)."""
    return value_records(unit, complexity(unit.maps, ids=list(unit.ids)).values,
                         "the map is all zeros")


@register_metric("effective_complexity", settings=EffectiveComplexitySettings, direction="down",
                 citation="Nguyen & Rodríguez Martínez 2020 (arXiv:2007.07584) as Quantus "
                          "EffectiveComplexity", needs=("maps",), criterion="complexity")
def _effective_records(unit, settings: EffectiveComplexitySettings) -> list[dict]:
    """Effective complexity: the number of pixels with |map| / max |map| above eps."""
    result = effective_complexity(unit.maps, eps=settings.eps, normalise=settings.normalise,
                                  ids=list(unit.ids))
    return value_records(unit, result.values, "not finite")
