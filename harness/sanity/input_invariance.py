"""Input invariance (Kindermans, Hooker, Adebayo, Alber, Schütt, Dähne, Erhan & Kim, "The
(Un)reliability of Saliency Methods", 2019; Quantus 0.6 ``InputInvariance``).

The mean-shift test: a second model takes the shifted input ``x + m`` (``m = shift``, a constant
in the model's input space; Quantus' default -1) and its first layer absorbs the shift, so both
models compute the same function of the image: ``f2(x + m) = f1(x)`` for every x. A method is
input invariant when the map of ``f2`` at ``x + m`` equals the map of ``f1`` at ``x``. Per image
(``a1``, ``a2`` the two maps):

- ``value``: the relative difference ``||a2 - a1||_2 / ||a1||_2``; 0 for an invariant method,
  lower is better (scale-free: it does not depend on the map's units);
- ``moved``: the share of pixels whose value moves, i.e. is not close
  (``|a1 - a2| > atol + rtol |a2|``, ``numpy.isclose(a1, a2)``'s rule, Quantus' atol 1e-4 and
  numpy's rtol 1e-5);
- ``invariant``: no pixel moves (Quantus' score: ``np.all(np.isclose(a, a_shifted,
  atol=1e-4))``).

In float32 an invariant method's map still moves a little: ``W (x + m) - W m`` is rounded
otherwise than ``W x``, and units near a ReLU's kink can flip (on EfficientNet-Lite0 the
gradient's relative difference is 1e-4 to 1e-2, exactly 0 in float64); the tolerances of
``moved`` are absolute, so read them with the map's scale in mind.

What holds analytically (tested): the gradient is invariant (every layer after the first sees the
same activations, and the first layer's Jacobian does not depend on its bias); gradient x input
moves by ``m * gradient``; integrated gradients with a zero baseline moves (the path starts at
another point of the function) and with a baseline that moves with the input it does not;
Grad-CAM reads activations and gradients after the first layer and is invariant; input-only
controls that are shift-invariant (Sobel) are.

The shifted model is a deep copy whose first layer (the first convolution or linear layer the
input reaches, found by tracing one forward) gets the bias ``b - W m``. Where the layer pads its
input (a convolution with zero padding) the shift does not reach the padded border, so ``W m``
differs at the border and no per-channel bias absorbs it: the layer then subtracts the exact
per-position correction ``layer(m) - layer(0)`` (a position-dependent bias). Quantus 0.6 sets the
per-channel bias ``2 b - min(layer(m))`` for every layer, which is exact only without padding (a
test shows its shifted model's outputs differ at the border); where both are exact they agree
(a test against Quantus' ``InputInvariance``). Quantus 0.6 also leaves the first element of
every image unshifted (its ``perturb_batch`` passes ``indices[i][1:]``, dropping flat index 0),
so its shifted input is not ``x + m`` at channel 0, pixel (0, 0); with that corrected, its
verdicts equal the harness's (tested). Whether the first layer absorbs the shift is
checked on the batch: the two models' logits must agree, else the test is refused, naming the
layer.

Stochastic methods seed their noise by the image's values (``harness.seeding``), so the shifted
image draws other noise: SmoothGrad and the random control move by their noise, not only by the
method.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.errors import ConfigError, MetricError
from harness.methods import get_method, saliency_batched
from harness.metrics._common import defined
from harness.metrics.registry import register_metric
from harness.settings import check_number


@dataclass(frozen=True)
class InputInvarianceSettings:
    """Settings of ``input_invariance`` (defaults: Quantus 0.6 ``InputInvariance``: shift -1,
    ``atol`` 1e-4, numpy's ``rtol`` 1e-5)."""

    shift: float = -1.0
    atol: float = 1e-4
    rtol: float = 1e-5
    methods: list | None = None

    def check(self) -> None:
        if not isinstance(self.shift, int | float) or isinstance(self.shift, bool) or \
                not np.isfinite(self.shift):
            raise ConfigError(f"shift: must be a finite number, got {self.shift!r}")
        check_number("atol", self.atol, 0)
        check_number("rtol", self.rtol, 0)


@dataclass(frozen=True)
class InputInvarianceResult:
    """Per image ``[N]``: ``values`` (relative difference), ``moved`` (share of pixels that
    move), ``invariant`` (bool); the maps before and after ``[N, H, W]``; the first layer's
    path."""

    values: np.ndarray
    moved: np.ndarray
    invariant: np.ndarray
    maps: torch.Tensor
    shifted_maps: torch.Tensor
    layer: str


class _Shifted(nn.Module):
    """A layer followed by the subtraction of a fixed per-position correction."""

    def __init__(self, layer: nn.Module, correction: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.register_buffer("correction", correction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) - self.correction


def first_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The path of the first convolution or linear layer that the model's input reaches
    unchanged up to a reshape or permutation (traced with one forward of ``x[:1]``); a model
    that transforms its input values before any such layer is refused."""
    return _first_layer(model, x)[0]


def _first_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, torch.Size]:
    """``first_layer`` and the shape of the input it receives."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    calls: list[tuple[str, torch.Tensor]] = []
    hooks = [module.register_forward_pre_hook(
        lambda module, args, path=path: calls.append((path, args[0])))
        for path, module in model.named_modules() if isinstance(module, kinds)]
    try:
        with torch.inference_mode():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    if not calls:
        raise MetricError("input_invariance: the model has no convolution or linear layer")
    path, seen = calls[0]
    # reshaped (a linear layer after flatten) or permuted, a constant shift stays a constant
    values = x[:1].flatten().sort().values
    if seen.numel() != values.numel() or not torch.equal(seen.flatten().sort().values, values):
        raise MetricError(f"input_invariance: the first layer {path!r} does not receive the "
                         "model's input unchanged; the shift cannot be absorbed by its bias")
    return path, seen.shape


def shifted_model(model: nn.Module, shift: float, input_shape: Sequence[int]) -> tuple[nn.Module,
                                                                                      str]:
    """A deep copy of ``model`` whose first layer absorbs the constant input shift ``shift``
    for inputs of ``input_shape`` ``[C, H, W]`` (see the module docstring), and the layer's
    path. Eval mode, frozen parameters, on the model's device."""
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    probe = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))
    path, seen = _first_layer(model, probe.to(device, dtype))
    copied = copy.deepcopy(model)
    layer = copied.get_submodule(path)
    with torch.no_grad():
        delta = torch.full(seen, float(shift), device=device, dtype=dtype)
        moved = layer(delta)[0]  # W m + b
        bias = layer.bias if getattr(layer, "bias", None) is not None else None
        offset = moved - (bias.view(-1, *[1] * (moved.ndim - 1)) if bias is not None else 0)
        flat = offset.reshape(offset.shape[0], -1)
        if bias is not None and bool((flat == flat[:, :1]).all()):
            # one value per output channel: the bias absorbs it, computed as Quantus does
            bias.copy_(2 * bias - moved.reshape(moved.shape[0], -1)[:, 0])
        else:  # padding: the exact per-position correction
            parent, _, name = path.rpartition(".")
            holder = copied.get_submodule(parent) if parent else copied
            setattr(holder, name, _Shifted(layer, offset.unsqueeze(0).clone()))
    copied.to(device).eval()
    for param in copied.parameters():
        param.requires_grad_(False)
    return copied, path


def input_invariance(model: nn.Module, method: str, x: torch.Tensor, target, *,
                     method_params: dict | None = None, maps: torch.Tensor | None = None,
                     ids: Sequence[str] | None = None, batch_size: int = 16,
                     **settings) -> InputInvarianceResult:
    """The mean-shift test of ``method`` on ``x`` ``[N, C, H, W]`` explaining ``target`` ``[N]``
    (see the module docstring); ``settings`` are the fields of ``InputInvarianceSettings``.
    ``maps``: the method's maps ``[N, H, W]`` on ``x`` when already computed."""
    config = InputInvarianceSettings(**settings)
    config.check()
    get_method(method)
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    params = dict(method_params or {})
    if maps is None:
        maps = saliency_batched(method, model, x, target, batch_size=batch_size,
                                method_params=params)
    shifted, path = shifted_model(model, config.shift, x.shape[1:])
    moved_x = x + config.shift
    with torch.inference_mode():
        before, after = model(x), shifted(moved_x)
    scale = float(before.abs().max()) + 1.0
    if not torch.allclose(before, after, rtol=1e-4, atol=1e-4 * scale):
        worst = int((before - after).abs().amax(dim=1).argmax())
        name = ids[worst] if ids is not None else f"#{worst}"
        raise MetricError(f"input_invariance: the shifted model's logits differ from the model's "
                         f"on image {name} (first layer {path!r}): the shift is not absorbed")
    shifted_maps = saliency_batched(method, shifted, moved_x, target, batch_size=batch_size,
                                    method_params=params)
    a = maps.detach().double().cpu().numpy()
    b = shifted_maps.detach().double().cpu().numpy()
    close = np.isclose(a, b, atol=config.atol, rtol=config.rtol)  # |a - b| <= atol + rtol |b|
    pixels = close.reshape(close.shape[0], -1)
    norm = np.linalg.norm(a.reshape(a.shape[0], -1), axis=1)
    difference = np.linalg.norm((b - a).reshape(a.shape[0], -1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(norm > 0, difference / np.where(norm > 0, norm, 1.0),
                            np.where(difference > 0, np.inf, 0.0))
    return InputInvarianceResult(relative, 1.0 - pixels.mean(axis=1), pixels.all(axis=1),
                                 maps.detach().cpu(), shifted_maps.detach().cpu(), path)


@register_metric("input_invariance", settings=InputInvarianceSettings, direction="down",
                 citation="Kindermans et al. 2019 (arXiv:1711.00867), Quantus InputInvariance",
                 needs=("maps", "method"))
def _input_invariance_records(unit, settings: InputInvarianceSettings) -> list[dict]:
    """Input invariance: the relative change of the map when the input is shifted by a constant
    that the model's first layer absorbs; 0 (invariant) is best."""
    result = input_invariance(unit.model, unit.method, unit.x, unit.target,
                              method_params=unit.method_params, maps=unit.maps,
                              ids=list(unit.ids), batch_size=unit.batch_size,
                              **vars(settings) | {"methods": None})
    records = []
    for i, image_id in enumerate(unit.ids):
        record = {"image_id": image_id, "value": defined(result.values[i]),
                  "moved": float(result.moved[i]), "invariant": bool(result.invariant[i]),
                  "shift": settings.shift, "first_layer": result.layer}
        if not np.isfinite(result.values[i]):
            record.update(value=None, status="undefined: the original map is zero everywhere "
                                              "and the shifted one is not")
        records.append(record)
    return records
