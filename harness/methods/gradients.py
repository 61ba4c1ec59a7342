"""Gradient-family attributions ``[N, C, H, W]``; maps are their channel reductions.

- ``vanilla``: Simonyan, Vedaldi & Zisserman 2014, "Deep Inside Convolutional Networks" (the cs231n
  notebook): max over channels of |d score_target / d x|, unnormalised class score.
- ``grad_x_input``: Shrikumar et al. 2016, "Not Just a Black Box" (gradient * input).
- ``integrated_gradients``: Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep
  Networks", eq. 3 (Riemann sum along the straight path from a baseline).
- ``guided_backprop``: Springenberg et al. 2015, "Striving for Simplicity: The All Convolutional
  Net" (negative gradients zeroed at every ReLU on the way back).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import MethodError
from harness.methods._core import input_gradient, register_attribution
from harness.settings import check, check_choice, check_int

RULES = ("right", "left", "middle", "trapezoid")


@register_attribution(
    "vanilla", citation="Simonyan, Vedaldi & Zisserman 2014 (arXiv:1312.6034)")
def gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Vanilla gradient: d score_target / d x of the unnormalised class score; the map is the max
    over channels of its absolute value (the reference method of the seed notebook).

    One backward of the summed scores gives every image's gradient (images do not interact in
    eval mode), so the cost is one forward and one backward for any N >= 1.
    """
    return input_gradient(model, x, target)


@register_attribution(
    "grad_x_input", citation="Shrikumar et al. 2016 (arXiv:1605.01713)")
def grad_x_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradient x input: x * d score_target / d x, in the model's input space."""
    return input_gradient(model, x, target) * x


def _path_weights(n_steps: int, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Points alpha_k in [0, 1] and weights w_k with sum_k w_k = 1 for the path integral."""
    k = torch.arange(n_steps + 1, dtype=torch.float64)
    if rule == "right":  # the paper's eq. 3: alpha = k / m, k = 1..m
        return k[1:] / n_steps, torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
    if rule == "left":
        return k[:-1] / n_steps, torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
    if rule == "middle":
        return (k[:-1] + 0.5) / n_steps, torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
    if rule == "trapezoid":
        weights = torch.full((n_steps + 1,), 1.0 / n_steps, dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / n_steps
        return k / n_steps, weights
    raise MethodError(f"integration rule {rule!r} is not one of: {', '.join(RULES)}")


@dataclass(frozen=True)
class IntegratedGradientsSettings:
    """``n_steps`` path points (the paper's m), the ``baseline`` (``"zero"``, a number or a
    tensor broadcastable to x), the Riemann ``rule`` and ``batch_size`` path points per pass."""

    n_steps: int = 50
    baseline: str | float | torch.Tensor = "zero"
    rule: str = "right"
    batch_size: int = 16

    def check(self) -> None:
        check_int("n_steps", self.n_steps, 1)
        if isinstance(self.baseline, str):
            check_choice("baseline", self.baseline, ("zero",))
        check_choice("rule", self.rule, RULES)
        check_int("batch_size", self.batch_size, 1)


@register_attribution(
    "integrated_gradients", citation="Sundararajan, Taly & Yan 2017 (arXiv:1703.01365)",
    settings=IntegratedGradientsSettings)
def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
                         n_steps: int = 50, baseline: str | float | torch.Tensor = "zero",
                         rule: str = "right", batch_size: int = 16) -> torch.Tensor:
    """Integrated gradients: (x - x') * sum_k w_k grad(x' + alpha_k (x - x')).

    ``baseline``: ``"zero"`` (zeros in the model's input space, i.e. the mean colour for
    mean/std-normalised models), a number, or a tensor broadcastable to x. ``rule``: ``right``
    (the paper's Riemann sum, alpha = k/m), ``left``, ``middle`` or ``trapezoid``. The
    ``N * len(alphas)`` path points are scored in chunks of ``batch_size`` inputs.
    """
    check(IntegratedGradientsSettings(n_steps, baseline, rule, batch_size))
    if isinstance(baseline, str):
        reference = torch.zeros_like(x)
    else:
        reference = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    alphas, weights = _path_weights(n_steps, rule)
    delta = x - reference
    total = torch.zeros_like(x, dtype=torch.float64)
    n_images, n_alphas = x.shape[0], len(alphas)
    pairs = [(i, a) for i in range(n_images) for a in range(n_alphas)]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        images = torch.tensor([i for i, _ in chunk], device=x.device)
        alpha = alphas[[a for _, a in chunk]].to(x.device, x.dtype).view(-1, 1, 1, 1)
        points = reference[images] + alpha * delta[images]
        grads = input_gradient(model, points, target[images]).double()
        weight = weights[[a for _, a in chunk]].to(x.device).view(-1, 1, 1, 1)
        total.index_add_(0, images, grads * weight)
    return (delta.double() * total).to(x.dtype)


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward keeps only positive gradients (guided backprop at a ReLU)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def _guide(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    return _PositiveGradient.apply(output)


@register_attribution(
    "guided_backprop", citation="Springenberg et al. 2015 (arXiv:1412.6806)")
def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Guided backpropagation: the input gradient with negative gradients zeroed at each ReLU
    (on top of the ReLU's own mask of negative inputs).

    Applies to ``nn.ReLU``/``nn.ReLU6`` modules (forward hooks, removed in ``finally``);
    functional ``relu`` calls inside a model's ``forward`` are not guided.
    """
    handles = [module.register_forward_hook(_guide) for module in model.modules()
               if isinstance(module, nn.ReLU | nn.ReLU6)]
    try:
        return input_gradient(model, x, target)
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["gradient", "grad_x_input", "integrated_gradients", "guided_backprop"]
