"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", eq. 1-2).

alpha_k = mean_ij d score_target / d A_k[i, j];  CAM = ReLU(sum_k alpha_k A_k), bilinearly upsampled
(``align_corners=False``) from the layer's resolution to the input's. The layer comes from the
model's metadata (``ModelInfo.cam_layer``) unless ``layer`` names one; when a module runs several
times in a forward (a shared activation), its last call is used.

Transformer layers: the activation and its gradient are read as ``[N, C, h, w]`` through the
model's declared layout (``ModelInfo.layout``, harness/layouts.py): a ViT's tokens ``[N, T, C]``
lose their class / distillation / register tokens and the patch tokens are laid on the patch grid
(pytorch-grad-cam's ``reshape_transform`` for ViT), Swin's channels-last maps are permuted. An
output the layout does not explain is refused, naming the layer, its shape and how to declare it.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import MethodError
from harness.layouts import model_layout, to_channels_first
from harness.methods._core import class_scores, register_method
from harness.models import get_module


def _cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None,
         relu: bool) -> torch.Tensor:
    if layer is None:
        info = getattr(model, "harness_info", None)
        if info is None:
            raise MethodError("gradcam needs layer= or a model with harness metadata (cam_layer)")
        layer = info.cam_layer
    module = get_module(model, layer)
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        captured[:] = [output]

    handle = module.register_forward_hook(keep)
    try:
        x = x.detach().clone().requires_grad_(True)
        scores = class_scores(model, x, target)
    finally:
        handle.remove()
    if not captured or not isinstance(captured[0], torch.Tensor):
        raise MethodError(f"gradcam layer {layer!r} gave no tensor output in the model's forward")
    layout = model_layout(model)
    as_maps = partial(to_channels_first, layout=layout, layer=layer, input_size=tuple(x.shape[2:]))
    activation = as_maps(captured[0])  # refuses an output whose layout is unknown, before backward
    (grads,) = torch.autograd.grad(scores.sum(), captured[0])
    grads = as_maps(grads)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activation).sum(dim=1, keepdim=True)
    if relu:
        cam = cam.clamp(min=0)
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
    return cam[:, 0].detach()


def gradcam_signed(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
                   layer: str | None = None) -> torch.Tensor:
    """Grad-CAM before the final ReLU (signed)."""
    return _cam(model, x, target, layer, relu=False)


@register_method("gradcam", signed=gradcam_signed,
                 citation="Selvaraju et al. 2017 (arXiv:1610.02391)")
def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
            layer: str | None = None) -> torch.Tensor:
    """Grad-CAM: ReLU of the gradient-weighted sum of a layer's activation maps (a conv layer's,
    or a transformer's tokens laid on the patch grid), upsampled bilinearly to the input size;
    ``layer`` defaults to the model's ``cam_layer``."""
    return _cam(model, x, target, layer, relu=True)
