"""Attention-based saliency for vision transformers that classify from a class token (ViT, DeiT).

``A_l`` ``[N, heads, T, T]`` is layer l's softmax attention, ``dA_l`` its gradient of the target's
logit, ``mean_h`` the mean over heads; every map is the class token's row over the patch tokens,
upsampled bilinearly to the input:

- ``raw_attention``: ``mean_h A_L[cls, patches]`` (Chefer, Gur & Wolf 2021's baseline;
  hila-chefer/Transformer-Explainability ``baselines/ViT/ViT_LRP.py``).
- ``rollout`` (Abnar & Zuidema 2020): ``R = B_L ... B_s``, ``B_l = (mean_h A_l + I) / rowsum``
  (``generate_rollout`` in Transformer-Explainability ``ViT_explanation_generator.py``).
- ``generic_attention`` (Chefer, Gur & Wolf, ICCV 2021, rules 5 and 6): ``R = I``, ``R <- R +
  mean_h (dA_l * A_l)^+ R`` (``generate_relevance`` in hila-chefer/Transformer-MM-Explainability).
- ``attention_gradcam``: ``(mean_h w_h A_L[h, cls, patches])^+``, ``w_h`` the mean over patches of
  ``dA_L[h, cls, patches]`` (``generate_cam_attn``).

How the attention is recorded, the tests against the reference code and the differences:
docs/transformers.md (Attention methods).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import MethodError
from harness.layouts import Layout
from harness.methods._core import class_scores, register_method
from harness.models import get_module
from harness.settings import check_target_range
from harness.transformer_models import timm_attention_classes

_CHEFER_2021 = ("Chefer, Gur & Wolf 2021, Transformer Interpretability Beyond Attention "
                "Visualization (arXiv:2012.09838), hila-chefer/Transformer-Explainability")
SUPPORTED = ("torch.nn.MultiheadAttention (torchvision's ViT) and timm.layers.Attention (timm's "
             "ViT, DeiT)")


def attention_spec(model: nn.Module) -> tuple[tuple[str, ...], Layout]:
    """The model's attention layers (forward order) and its token layout; a model without them is
    refused, naming what is needed."""
    info = getattr(model, "harness_info", None)
    layers = tuple(getattr(info, "attention_layers", ()) or ())
    layout = getattr(info, "layout", None)
    if not layers or layout is None or layout.kind != "tokens" or layout.prefix_tokens < 1:
        name = getattr(info, "name", type(model).__name__)
        raise MethodError(
            f"attention methods need a vision transformer that classifies from a class token "
            f"(ViT, DeiT): {name!r} declares attention_layers={layers!r} and layout={layout!r}. "
            "harness.load_model sets both for torchvision's vit_* and timm's ViT/DeiT, and "
            "harness.models.attach_info for models of those classes; otherwise pass "
            "attention_layers=(...self-attention module paths in forward order...) and "
            "layout=Layout('tokens', prefix_tokens=..., grid=(h, w)) to attach_info")
    return layers, layout


def self_attention(tokens: torch.Tensor, attention: nn.MultiheadAttention
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.MultiheadAttention``'s self-attention of ``tokens`` ``[N, T, E]`` (batch first) with
    its own weights: (output ``[N, T, E]``, probabilities ``[N, heads, T, T]``)."""
    n_images, n_tokens, dim = tokens.shape
    heads = attention.num_heads
    head_dim = dim // heads
    qkv = F.linear(tokens, attention.in_proj_weight, attention.in_proj_bias)
    query, key, value = qkv.view(n_images, n_tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    scores = (query * math.sqrt(1.0 / head_dim)) @ key.transpose(-2, -1)
    probabilities = scores.softmax(dim=-1)
    mixed = (probabilities @ value).transpose(1, 2).reshape(n_images, n_tokens, dim)
    output = F.linear(mixed, attention.out_proj.weight, attention.out_proj.bias)
    return output, probabilities


_MHA_POSITIONS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                  "average_attn_weights", "is_causal")


def _mha_hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output, *,
              path: str, probs: list, index: int):
    called = {**dict(zip(_MHA_POSITIONS, args, strict=False)), **kwargs}
    query = called.get("query")
    problems = []
    if called.get("key") is not query or called.get("value") is not query:
        problems.append("query, key and value are not the same tensor (not self-attention)")
    for mask in ("key_padding_mask", "attn_mask"):
        if called.get(mask) is not None:
            problems.append(f"{mask} is given")
    if called.get("is_causal"):
        problems.append("is_causal is set")
    if not module.batch_first or not module._qkv_same_embed_dim:
        problems.append("it is not batch_first with packed in_proj weights")
    if module.bias_k is not None or module.add_zero_attn:
        problems.append("it has bias_k/bias_v or add_zero_attn")
    if problems:
        raise MethodError(f"attention layer {path!r}: cannot record its attention: "
                         f"{'; '.join(problems)}")
    recomputed, probs[index] = self_attention(query, module)
    return (recomputed, output[1])


def _keep(_module, _inputs, output, *, probs: list, index: int) -> None:
    probs[index] = output


@contextlib.contextmanager
def recorded_attention(model: nn.Module, layers: tuple[str, ...]) -> Iterator[list]:
    """Inside the block, each forward of ``model`` fills the yielded list with every layer's
    attention probabilities ``[N, heads, T, T]`` (in the autograd graph); hooks and timm's
    ``fused_attn`` flags are restored on exit."""
    timm_attention = timm_attention_classes()  # () without timm
    probs: list = [None] * len(layers)
    handles, fused = [], []
    try:
        for index, path in enumerate(layers):
            module = get_module(model, path)
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_hook(
                    partial(_mha_hook, path=path, probs=probs, index=index), with_kwargs=True))
            elif timm_attention and isinstance(module, timm_attention):
                fused.append((module, module.fused_attn))
                module.fused_attn = False
                handles.append(module.attn_drop.register_forward_hook(
                    partial(_keep, probs=probs, index=index)))
            else:
                raise MethodError(f"attention layer {path!r} is a {type(module).__name__}; "
                                 f"supported: {SUPPORTED}")
        yield probs
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in fused:
            module.fused_attn = flag


def _record(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, gradients: str | None
            ) -> tuple[list[torch.Tensor], list[torch.Tensor], Layout]:
    """Attention probabilities of every layer and, for ``gradients="all"``/``"last"``, the
    gradients of the target logits with respect to them (of every layer / the last only)."""
    layers, layout = attention_spec(model)
    with recorded_attention(model, layers) as probs:
        if gradients is None:
            with torch.no_grad():
                check_target_range(target, model(x).shape[1], error=MethodError)
        else:
            x = x.detach().clone().requires_grad_(True)
            scores = class_scores(model, x, target)
    missing = [path for path, p in zip(layers, probs, strict=True) if p is None]
    if missing:
        raise MethodError(f"attention layer {missing[0]!r} did not run in the model's forward")
    height, width = layout.grid
    expected = layout.prefix_tokens + height * width
    if probs[0].shape[-1] != expected:
        raise MethodError(f"attention layer {layers[0]!r} attends over {probs[0].shape[-1]} "
                         f"tokens, but the model's layout has {layout.prefix_tokens} prefix "
                         f"tokens + a {height} x {width} grid = {expected}")
    grads: list[torch.Tensor] = []
    if gradients == "all":
        grads = list(torch.autograd.grad(scores.sum(), probs))
    elif gradients == "last":
        grads = [torch.autograd.grad(scores.sum(), probs[-1])[0]]
    return [p.detach() for p in probs], grads, layout


def _to_image(token_map: torch.Tensor, layout: Layout, size) -> torch.Tensor:
    """Patch-token map ``[N, h * w]`` -> ``[N, H, W]`` (bilinear, ``align_corners=False``)."""
    height, width = layout.grid
    grid = token_map.reshape(token_map.shape[0], 1, height, width)
    return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def _layer_index(layer: int, n_layers: int, what: str) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
        raise MethodError(f"{what} must be an integer in [{-n_layers}, {n_layers - 1}] (the model "
                         f"has {n_layers} attention layers), got {layer!r}")
    return layer % n_layers


def rollout_matrix(attentions: list[torch.Tensor], start_layer: int = 0) -> torch.Tensor:
    """Attention rollout ``[N, T, T]`` of per-layer head-averaged attentions ``[N, T, T]``:
    ``B_l = (A_l + I) / rowsum``, ``B_L ... B_start``."""
    eye = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype,
                    device=attentions[0].device)
    augmented = [(a + eye) / (a + eye).sum(dim=-1, keepdim=True) for a in attentions]
    joint = augmented[start_layer]
    for matrix in augmented[start_layer + 1:]:
        joint = matrix.bmm(joint)
    return joint


def _head_mean(probabilities: torch.Tensor) -> torch.Tensor:
    """Mean over heads ``[N, heads, T, T]`` -> ``[N, T, T]`` (as the reference: sum / heads)."""
    return probabilities.sum(dim=1) / probabilities.shape[1]


@register_method("raw_attention",
                 citation=f"{_CHEFER_2021}, ViT_LRP.py relprop('last_layer_attn')")
def raw_attention(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
                  layer: int = -1) -> torch.Tensor:
    """Raw attention: the class token's attention to the patches in the last layer, averaged
    over heads, upsampled to the input (``layer``: another layer's index)."""
    probs, _, layout = _record(model, x, target, gradients=None)
    index = _layer_index(layer, len(probs), "layer")
    token_map = _head_mean(probs[index])[:, 0, layout.prefix_tokens:]
    return _to_image(token_map, layout, x.shape[2:])


@register_method("rollout",
                 citation="Abnar & Zuidema 2020 (arXiv:2005.00928); as Transformer-Explainability "
                          "ViT_explanation_generator.py compute_rollout_attention")
def rollout(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
            start_layer: int = 0) -> torch.Tensor:
    """Attention rollout: the product of the head-averaged attentions with the residual added
    (rows renormalised), from ``start_layer`` to the last; the class token's row, upsampled."""
    probs, _, layout = _record(model, x, target, gradients=None)
    start = _layer_index(start_layer, len(probs), "start_layer")
    joint = rollout_matrix([_head_mean(p) for p in probs], start)
    return _to_image(joint[:, 0, layout.prefix_tokens:], layout, x.shape[2:])


@register_method("generic_attention",
                 citation="Chefer, Gur & Wolf 2021, Generic Attention-model Explainability "
                          "(ICCV 2021, arXiv:2103.15679), "
                          "hila-chefer/Transformer-MM-Explainability")
def generic_attention(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Chefer et al.'s gradient-weighted attention relevance (ICCV 2021): R = I, then per layer
    R += mean over heads of ReLU(grad * attention) @ R; the class token's row, upsampled."""
    probs, grads, layout = _record(model, x, target, gradients="all")
    n_images, _, n_tokens, _ = probs[0].shape
    relevance = torch.eye(n_tokens, dtype=probs[0].dtype, device=probs[0].device).expand(
        n_images, n_tokens, n_tokens)
    for attention, gradient in zip(probs, grads, strict=True):
        weighted = (gradient * attention).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted.bmm(relevance)
    return _to_image(relevance[:, 0, layout.prefix_tokens:], layout, x.shape[2:])


def _attention_gradcam(model, x, target, relu: bool) -> torch.Tensor:
    probs, grads, layout = _record(model, x, target, gradients="last")
    attention = probs[-1][:, :, 0, layout.prefix_tokens:]  # [N, heads, patches]
    weights = grads[0][:, :, 0, layout.prefix_tokens:].mean(dim=-1, keepdim=True)
    token_map = (attention * weights).mean(dim=1)
    if relu:
        token_map = token_map.clamp(min=0)
    return _to_image(token_map, layout, x.shape[2:])


def attention_gradcam_signed(model: nn.Module, x: torch.Tensor, target: torch.Tensor
                             ) -> torch.Tensor:
    """Grad-CAM on the last attention before its ReLU (signed)."""
    return _attention_gradcam(model, x, target, relu=False)


@register_method("attention_gradcam", signed=attention_gradcam_signed,
                 citation=f"{_CHEFER_2021}, ViT_explanation_generator.py generate_cam_attn")
def attention_gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM on the last layer's attention: the class token's attention to the patches,
    weighted per head by its mean gradient, averaged over heads, ReLU, upsampled."""
    return _attention_gradcam(model, x, target, relu=True)
