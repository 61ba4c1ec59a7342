"""Complexity of a map: is the explanation concise? Pure functions of maps ``[N, H, W]``.

All three read the absolute map a = |saliency| flattened to n = H*W values and return float64
values ``[N]``:

- Sparseness (Chalasani, Chen, Chowdhury, Wu & Jha 2020, "Concise Explanations of Neural Networks
  using Adversarial Training", ICML): the Gini index of a sorted ascending,
  G = sum_i (2i - n - 1) a_(i) / (n sum_i a_i), i = 1..n. G = 0 for a constant map, (n - 1)/n for
  a one-hot map (the maximum); higher = sparser = better. Quantus ``Sparseness`` (which follows
  the authors' ``jfc43/advex`` code, per its docstring) first applies ``normalise_by_max`` (on by
  default), which divides by the max |value| over the WHOLE batch (all axes, the batch axis
  included; an all-zero batch is left as it is), then adds 1e-7 to every value; the shift is
  relative to that batch-wide scale, so a map's value there depends on the other maps of its
  batch. Ours computes G exactly per map and defines the all-zero map as 0 (what the 1e-7 shift
  gives it).
- Complexity (Bhatt, Weller & Moura 2020, "Evaluating and Aggregating Feature-based Model
  Explanations", IJCAI; Quantus ``Complexity``): the entropy -sum_i P_i ln P_i of the fractional
  contributions P_i = a_i / sum_j a_j (natural log; 0 ln 0 = 0). ln(n) for a constant map, 0 for a
  one-hot map; lower = simpler. Quantus adds 1e-12 inside the log after its batch-wide
  ``normalise_by_max`` (no effect on P but for that 1e-12). An all-zero map has no distribution:
  NaN.
- Effective complexity (Nguyen & Rodríguez Martínez 2020, "On quantitative aspects of model
  interpretability", arXiv:2007.07584), as Quantus ``EffectiveComplexity`` computes it: the
  number of pixels with a_i > eps, default eps = 1e-5, after normalisation (``normalise=True``,
  Quantus' default). Quantus' ``normalise_by_max`` divides by the max |value| over the whole batch
  (all axes, batch included), so there a map's count depends on the other maps of its batch (a
  faint map next to a strong one counts fewer pixels). Ours divides each map by its OWN max
  |value|, a deliberate difference: an image's value must not depend on its batch (for a batch
  of one the two agree). ``normalise=False`` thresholds the raw |values|. Lower = simpler. An
  all-zero map counts 0 (both ways).

A NaN/inf map raises ``ValueError`` naming the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from harness.errors import MetricError
from harness.metrics.registry import register_metric, value_records


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
    if not eps >= 0:
        raise MetricError(f"eps must be >= 0, got {eps}")
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
        if not (isinstance(self.eps, int | float) and self.eps >= 0):
            raise MetricError(f"eps: must be >= 0, got {self.eps!r}")


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
