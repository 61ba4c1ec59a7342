"""MetaQuantus' perturbations (reference code ``metaquantus/perturbation_tests/mpt.py``, ``ipt.py``
and Quantus' ``PyTorchModel.sample``), seeded so that a meta-evaluation is reproducible and does not
depend on batch composition.

- Model perturbation: a copy of the model whose every parameter (``model.parameters()``, in order;
  buffers such as BatchNorm statistics untouched, as Quantus' ``sample``) is multiplied elementwise
  by noise drawn from N(1, std^2) ("multiplicative", mean 1). One CPU generator per (test,
  iteration, perturbation), seeded from the experiment seed
  (``harness.seeding.image_seed(seed, key, salt="meta-model")``); the noise is drawn on the CPU in
  float32 and moved, so every device gets the same model.
- Input perturbation: x + U(-noise, noise) elementwise (drawn in float64, added in float64 and
  cast back to x's dtype, as numpy's in-place ``x += uniform`` on a float32 array), then clipped
  from below at ``floor``: MetaQuantus clips at ``x_batch.min()`` (its upper bound is the perturbed
  batch's own maximum, i.e. no clip); the harness passes the minimum over all the
  meta-evaluation's clean inputs, so the result does not depend on how images are batched. One
  CPU generator per image and (test, iteration, perturbation)
  (``image_generator(seed, image_id, salt=...)``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from harness.errors import MetricError
from harness.seeding import image_generator, image_seed


def perturbation_key(test: str, iteration: int, index: int) -> str:
    """The seed key of one perturbation, e.g. ``model/adversary/2/7``."""
    return f"{test}/{iteration}/{index}"


def model_noise(model: nn.Module, std: float, generator: torch.Generator,
                mean: float = 1.0) -> list[torch.Tensor]:
    """One noise tensor per parameter (``model.parameters()`` order) from N(mean, std^2), drawn on
    the CPU by ``generator``."""
    return [mean + std * torch.randn(p.shape, generator=generator, dtype=torch.float32)
            for p in model.parameters()]


def perturbed_model(model: nn.Module, noise: Sequence[torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` (eval mode, frozen, ``harness_info`` kept) with each parameter
    multiplied by its ``noise`` tensor; ``model`` is not modified."""
    copied = copy.deepcopy(model)
    parameters = list(copied.parameters())
    if len(parameters) != len(noise):
        raise MetricError(f"noise: {len(noise)} tensors for {len(parameters)} parameters")
    with torch.no_grad():
        for parameter, factor in zip(parameters, noise, strict=True):
            parameter.mul_(factor.to(parameter.device, parameter.dtype))
    return copied.eval()


def perturb_model(model: nn.Module, std: float, *, seed: int, key: str) -> nn.Module:
    """The model under multiplicative N(1, std^2) weight noise for perturbation ``key``."""
    generator = torch.Generator().manual_seed(image_seed(seed, key, salt="meta-model"))
    return perturbed_model(model, model_noise(model, std, generator))


def input_noise(shape: Sequence[int], noise: float, ids: Sequence[str], *, seed: int, key: str
                ) -> torch.Tensor:
    """``[N, *shape[1:]]`` float64 noise from U(-noise, noise), image ``n`` drawn by its own CPU
    generator keyed by ``ids[n]`` and ``key``."""
    rows = []
    for image_id in ids:
        generator = image_generator(seed, image_id, salt=f"meta-input/{key}")
        rows.append(-noise + 2 * noise * torch.rand(tuple(shape[1:]), generator=generator,
                                                    dtype=torch.float64))
    return torch.stack(rows)


def perturbed_input(x: torch.Tensor, noise: torch.Tensor, floor: float) -> torch.Tensor:
    """``x`` ``[N, C, H, W]`` plus ``noise`` (added in float64, cast back to x's dtype), clipped
    below at ``floor``."""
    moved = (x.double() + noise.to(x.device)).to(x.dtype)
    return torch.clamp(moved, min=floor)
