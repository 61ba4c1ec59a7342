"""Captum adapter: every Captum attribution class is method ``captum:<Class>`` (Kokhlikyan et al.
2020, "Captum: A unified and generic model interpretability library for PyTorch",
arXiv:2009.07896). Captum computes the attribution; nothing of its algorithms is written here.

The classes of ``captum.attr`` that explain a class score and are built from the model (plus a
``layer`` for layer methods) are methods; parameters go to the constructor (``init``) or to
``attribute`` (or flat, placed by signature); input attributions ``[N, C, H, W]`` are reduced over
channels (``reduce``, default ``abs_max``), layer attributions upsampled (``upsample``, default
bilinear) then reduced. Random classes run seeded (``seed``) with the caller's generator states
restored, and those that draw for the whole batch in sequence (``DRAW_PER_IMAGE``) one image at a
time, so an image's map does not depend on its batch.

Which classes, parameters, layers, seeding and batch dependence: docs/howto/method.md (Adapters)
and docs/transformers.md (layouts).
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from torch import nn

from harness.errors import ConfigError, MethodError
from harness.layouts import check_grid, model_layout
from harness.methods._adapt import (
    Signature,
    as_library_value,
    layer_name,
    library_class,
    library_layer,
    read_signature,
    seeded_global_rngs,
    split_params,
)
from harness.methods._core import (
    REDUCTIONS,
    reduce_channels,
    register_family,
    require,
    signed_channels,
)
from harness.methods.entry import Family, Method
from harness.seeding import content_seed
from harness.settings import check_int, check_seed

PREFIX = "captum"
EXTRA = "captum"
UPSAMPLE_MODES = ("bilinear", "nearest", "bicubic", "area")
# Captum's count parameters and their least valid value (checked before any compute)
POSITIVE_COUNTS = {"n_steps": 1, "n_samples": 1, "perturbations_per_eval": 1,
                   "internal_batch_size": 1, "nt_samples": 1, "num_interp_points": 1}
_OWN = ("layer", "upsample", "reduce", "seed")
_RESERVED_INIT = {"forward_func": "the model", "model": "the model",
                  "layer": "the 'layer' parameter, a module name"}
_RESERVED_ATTRIBUTE = {
    "inputs": "the images x", "target": "the target classes",
    "additional_forward_args": "the model takes the images only",
    "return_convergence_delta": "a method returns maps only",
}
# classes whose samples Captum draws from the global generators for the whole batch at once (an
# image's draws would depend on the images computed with it): called one image at a time, the
# generators seeded by (seed, the image's values), harness.seeding.content_seed
DRAW_PER_IMAGE = frozenset({"GradientShap", "LayerGradientShap", "Lime", "KernelShap"})
_NOT_METHODS = {
    "NoiseTunnel": "use our smoothgrad with base: 'captum:<Class>'",
    "LayerActivation": "it has no target class",
}


def _attr():
    return require("captum.attr", EXTRA, f"method family '{PREFIX}:'")


def _usable(cls: type) -> bool:
    try:
        init = list(inspect.signature(cls.__init__).parameters.values())[1:]
        attribute = inspect.signature(cls.attribute).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    if inspect.isabstract(cls) or not init or init[0].name not in ("forward_func", "model"):
        return False
    if "inputs" not in attribute or "target" not in attribute or "neuron_selector" in attribute:
        return False
    extra_required = [p.name for p in init[1:] if p.default is p.empty and p.name != "layer"
                      and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return not extra_required


def classes() -> dict[str, type]:
    """Captum's attribution classes usable as methods, by name (needs the ``captum`` extra)."""
    attr = _attr()
    found = {}
    for name in dir(attr):
        cls = getattr(attr, name)
        if inspect.isclass(cls) and issubclass(cls, attr.Attribution) and _usable(cls):
            found[name] = cls
    return dict(sorted(found.items()))


def members() -> list[str]:
    return list(classes())


def _summary(cls: type) -> str:
    text = " ".join((cls.__doc__ or "").split())
    first = text.split(". ")[0].rstrip(".")
    return f"Captum {cls.__name__}: {first}." if first else f"Captum {cls.__name__}."


@functools.cache
def _spec(cls: type) -> tuple[dict[str, Signature], bool, bool]:
    """(groups, is a layer attribution, takes a layer)."""
    attr = _attr()
    init = read_signature(cls.__init__, skip=set())
    groups = {"init": init, "attribute": read_signature(cls.attribute, skip=set())}
    return groups, issubclass(cls, attr.LayerAttribution), "layer" in init.names


def _check(name: str, cls: type, params: dict) -> dict[str, dict]:
    """Validate ``params`` (``ConfigError("<path>: <why>")``); return the library groups."""
    groups, is_layer, takes_layer = _spec(cls)
    if "layer" in params and not takes_layer:
        raise ConfigError(f"layer: {name} takes no layer")
    if "upsample" in params and not is_layer:
        raise ConfigError(f"upsample: {name} is not a layer attribution (its maps are input-sized)")
    if params.get("upsample", "bilinear") not in UPSAMPLE_MODES:
        raise ConfigError(f"upsample: {params['upsample']!r} is not one of: "
                         f"{', '.join(UPSAMPLE_MODES)}")
    check_seed("seed", params.get("seed", 0))
    if params.get("reduce", "abs_max") not in REDUCTIONS:
        raise ConfigError(f"reduce: {params['reduce']!r} is not one of: {', '.join(REDUCTIONS)}")
    library = {k: v for k, v in params.items() if k not in _OWN}
    reserved = {**_RESERVED_INIT, **_RESERVED_ATTRIBUTE}
    split = split_params(name, library, groups, reserved)
    for group in split.values():
        for key in ("feature_mask", "layer_mask"):
            mask = group.get(key)
            if isinstance(mask, dict) and (set(mask) != {"grid"} or not isinstance(
                    mask["grid"], int) or mask["grid"] < 1):
                raise ConfigError(f"{key}: expected {{grid: k}} with an int k >= 1, got {mask!r}")
    for group, values in split.items():  # counts Captum asserts on only mid-run
        for key, low in POSITIVE_COUNTS.items():
            if key in values and values[key] is not None:
                check_int(f"{group}.{key}", values[key], low)
    return split


def _value(key: str, value, x: torch.Tensor):
    if key == "baselines" and value == "zero":
        return torch.zeros_like(x[:1])
    if key in ("feature_mask", "layer_mask") and isinstance(value, dict):
        cell = value["grid"]
        rows = torch.arange(x.shape[2], device=x.device) // cell
        cols = torch.arange(x.shape[3], device=x.device) // cell
        n_cols = -(-x.shape[3] // cell)
        return (rows.view(-1, 1) * n_cols + cols.view(1, -1)).view(1, 1, *x.shape[2:])
    return as_library_value(value)


def _image_arguments(cls_name: str, attribute: dict, i: int, n: int) -> dict:
    """``attribute`` keywords for image ``i`` of ``n`` called alone: Lime's and KernelShap's
    per-input tensors (``baselines``, ``feature_mask`` ``[N, ...]``) are cut to the image's row
    (GradientShap's ``baselines`` are a distribution shared by every image: kept whole)."""
    if cls_name not in ("Lime", "KernelShap") or n == 1:
        return attribute
    return {k: v[i:i + 1] if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n
            else v for k, v in attribute.items()}


def _raw(name: str, cls: type, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
         params: dict) -> torch.Tensor:
    """Captum's attribution, input-sized: ``[N, C, H, W]`` (input methods) or the layer's
    ``[N, K, h, w]`` upsampled to ``[N, K, H, W]``."""
    split = _check(name, cls, params)
    _, is_layer, takes_layer = _spec(cls)
    layout = model_layout(model)
    if takes_layer and layout is not None and layout.kind != "channels_first":
        raise MethodError(f"{name}: Captum reads the layer's output as [N, K, h, w] and takes no "
                         f"reshape, but the model declares a {layout.kind} layout "
                         "(ModelInfo.layout); use 'gradcam' or 'gradcam:<CAMClass>' "
                         "(pytorch-grad-cam), which convert it")
    init = {k: _value(k, v, x) for k, v in split["init"].items()}
    attribute = {k: _value(k, v, x) for k, v in split["attribute"].items()}
    seed = params.get("seed", 0)
    if cls.__name__ in DRAW_PER_IMAGE:  # one image per call, seeded by its values
        calls = [(x[i:i + 1], target[i:i + 1], content_seed(seed, x[i], salt=name),
                  _image_arguments(cls.__name__, attribute, i, x.shape[0]))
                 for i in range(x.shape[0])]
    else:
        calls = [(x, target, seed, attribute)]
    results = []
    with (library_layer(model, x, params.get("layer"), name) if takes_layer
          else contextlib.nullcontext()) as layer:  # resolved once for all the calls
        if takes_layer:
            init["layer"] = layer
        for images, targets, call_seed, attribute in calls:
            inputs = images.detach().clone()
            if issubclass(cls, _attr().GradientAttribution):
                inputs.requires_grad_(True)
            with seeded_global_rngs(call_seed, x.device):
                explainer = cls(model, **init)
                result = explainer.attribute(inputs, target=targets, **attribute)
            if isinstance(result, tuple):
                result = result[0]
            results.append(result.detach())
    result = torch.cat(results)
    if is_layer:
        if result.ndim != 4:
            raise MethodError(f"{name}: the layer attribution must be [N, K, h, w] to map onto the "
                             f"image, got {tuple(result.shape)}; choose a conv layer (layer=)")
        check_grid(result.shape[2], result.shape[3], tuple(x.shape[2:]),
                   layer=layer_name(model, params.get("layer"), name),
                   shape=tuple(result.shape), reading="[N, K, h, w]")
        result = _attr().LayerAttribution.interpolate(result, tuple(x.shape[2:]),
                                                      params.get("upsample", "bilinear"))
    elif tuple(result.shape) != tuple(x.shape):
        raise MethodError(f"{name}: attribution shaped {tuple(result.shape)}, expected "
                         f"{tuple(x.shape)}")
    return result.to(x.dtype)


def method(member: str) -> Method:
    """The ``Method`` ``captum:<member>``."""
    cls = library_class(classes(), member, _NOT_METHODS, "Captum attribution class",
                        f"{PREFIX}:<Class>")
    name = f"{PREFIX}:{member}"
    _, is_layer, _ = _spec(cls)

    def attribution(model, x, target, **params):
        return _raw(name, cls, model, x, target, {k: v for k, v in params.items()
                                                  if k != "reduce"})

    def as_map(model, x, target, *, reduce: str = "abs_max", **params):
        return reduce_channels(_raw(name, cls, model, x, target, params), reduce)

    def as_signed(model, x, target, *, reduce: str = "abs_max", **params):
        return signed_channels(_raw(name, cls, model, x, target, params))

    def check_params(params: dict) -> None:
        _check(name, cls, dict(params))

    version = getattr(require("captum", EXTRA, name), "__version__", "?")
    return Method(name, as_map,
                  citation=f"Captum {version} captum.attr.{member} (Kokhlikyan et al. 2020, "
                           "arXiv:2009.07896); the method's paper is in the class docstring",
                  summary=_summary(cls), signed=as_signed,
                  attribution=None if is_layer else attribution,
                  check_params=check_params)


register_family(Family(PREFIX, "Captum", EXTRA, "Captum attribution classes", members, method))
