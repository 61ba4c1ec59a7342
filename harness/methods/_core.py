"""The saliency-method registry, the call guard and channel reductions.

A method is a function ``(model, x, target, **params) -> Tensor[N, H, W]``; ``x`` is the model input
``[N, C, H, W]``, ``target`` the class to explain per image ``[N]``. Methods built on a per-pixel,
per-channel attribution (gradient, gradient x input, integrated gradients, guided backprop) also
expose that raw signed attribution ``[N, C, H, W]`` so wrappers such as SmoothGrad can average it.

Besides the registered names, ``get_method`` resolves dynamic names: ``<family>:<member>`` for the
adapter families (``captum:<AttributionClass>``, ``gradcam:<CAMClass>``, see ``FAMILIES``), an
import path ``package.module:function`` and the entry points of group ``harness.methods``
(harness/methods/plugins.py). Registered names come first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from harness.registry import UnknownNameError, lookup, names


class MapFn(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                 **params) -> torch.Tensor: ...


REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # the seed notebook's reduction: max over channels of |attribution|
    "abs_max": lambda attribution: attribution.abs().amax(dim=1),
    # sum over channels of |attribution| (PAIR saliency's VisualizeImageGrayscale)
    "abs_sum": lambda attribution: attribution.abs().sum(dim=1),
}


def reduce_channels(attribution: torch.Tensor, reduce: str = "abs_max") -> torch.Tensor:
    """``[N, C, H, W]`` -> non-negative ``[N, H, W]`` with the named reduction."""
    return lookup(REDUCTIONS, "reduction", reduce)(attribution)


def signed_channels(attribution: torch.Tensor) -> torch.Tensor:
    """Signed map ``[N, H, W]``: the sum over channels (PAIR's diverging visualisation)."""
    return attribution.sum(dim=1)


@dataclass(frozen=True)
class Method:
    """A registered saliency method.

    ``fn`` gives the (non-negative unless stated) map; ``signed`` the signed variant where one
    exists; ``attribution`` the raw ``[N, C, H, W]`` attribution for pixel-space methods; ``raw``
    (wrappers) the raw ``[N, C, H, W]`` statistic before the channel reduction, or None where the
    parameters give none (see ``raw_attribution``).
    """

    name: str
    fn: MapFn
    kind: str
    citation: str
    summary: str
    signed: MapFn | None = None
    attribution: MapFn | None = None
    defaults: dict = field(default_factory=dict)
    raw: MapFn | None = None
    # validates a ``params`` mapping before any compute (ValueError "<param path>: <why>"), for
    # methods whose keyword parameters cannot be read off ``fn``'s signature (the adapters)
    check_params: Callable[[dict], None] | None = None


METHODS: dict[str, Method] = {}


@dataclass(frozen=True)
class Family:
    """Methods named ``<prefix>:<member>`` built on demand by an adapter (``captum:Occlusion``).

    ``members()`` lists the available member names and ``method(member)`` builds the ``Method``;
    both raise ``MissingDependencyError`` (naming the pip extra) when the library is absent and
    ``method`` raises ``UnknownNameError`` listing ``members()`` for an unknown member.
    """

    prefix: str
    library: str
    extra: str
    summary: str
    members: Callable[[], list[str]]
    method: Callable[[str], Method]


FAMILIES: dict[str, Family] = {}
_DYNAMIC: dict[str, Method] = {}  # dynamic names resolved so far (families and plug-ins)


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


def require(module: str, extra: str, what: str, *, package: str | None = None):
    """Import optional ``module`` or raise ``MissingDependencyError`` naming the pip ``extra``
    (and the PyPI ``package``, default the module's top-level name)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = package or module.split(".")[0]
        raise MissingDependencyError(
            f"{what} needs the optional dependency {package!r}, which is not installed "
            f"({error}): pip install -e '.[{extra}]' (or pip install {package})") from None


def register_family(family: Family) -> Family:
    if family.prefix in FAMILIES:
        raise ValueError(f"method family {family.prefix!r} is already registered")
    FAMILIES[family.prefix] = family
    return family


def register_method(name: str, *, kind: str, citation: str, signed: MapFn | None = None,
                    defaults: dict | None = None,
                    raw: MapFn | None = None) -> Callable[[MapFn], MapFn]:
    """Decorator registering a map function as method ``name``."""

    def add(fn: MapFn) -> MapFn:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        METHODS[name] = Method(name, fn, kind, citation, summary, signed=signed,
                               defaults=dict(defaults or {}), raw=raw)
        return fn

    return add


def register_attribution(name: str, *, citation: str,
                         defaults: dict | None = None) -> Callable[[MapFn], MapFn]:
    """Decorator registering a raw attribution ``[N, C, H, W]`` as method ``name``: its map is
    ``reduce_channels(attribution, reduce)`` (default ``abs_max``), its signed map the channel
    sum."""

    def add(attribution: MapFn) -> MapFn:
        def as_map(model, x, target, *, reduce: str = "abs_max", **params):
            return reduce_channels(attribution(model, x, target, **params), reduce)

        def as_signed(model, x, target, *, reduce: str = "abs_max", **params):
            return signed_channels(attribution(model, x, target, **params))

        summary = " ".join((attribution.__doc__ or "").strip().split("\n\n")[0].split())
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = Method(name, as_map, "attribution", citation, summary, signed=as_signed,
                               attribution=attribution, defaults=dict(defaults or {}))
        return attribution

    return add


def list_methods(pattern: str = "*") -> list[str]:
    """Names of the registered saliency methods (fnmatch ``pattern``)."""
    return names(METHODS, pattern)


def get_method(name: str) -> Method:
    """The method called ``name``: a registered name, ``<family>:<member>`` (an adapter), an import
    path ``package.module:function`` or an entry point of group ``harness.methods``.

    An unknown name raises ``UnknownNameError`` listing the registered names; an unknown family
    member lists the family's members; a missing optional library raises
    ``MissingDependencyError`` naming the pip extra; a plug-in that does not import or has the
    wrong signature raises ``PluginError``.
    """
    if not isinstance(name, str):
        return lookup(METHODS, "method", name)  # raises, naming the valid methods
    if name in METHODS:
        return METHODS[name]
    if name in _DYNAMIC:
        return _DYNAMIC[name]
    from harness.methods import plugins

    if ":" in name:
        prefix, _, member = name.partition(":")
        method = (FAMILIES[prefix].method(member) if prefix in FAMILIES
                  else plugins.import_method(name))
    else:
        method = plugins.entry_point_method(name)
    if method is None:
        try:
            return lookup(METHODS, "method", name)
        except UnknownNameError as error:
            adapters = ", ".join(f"{prefix}:<Class>" for prefix in FAMILIES)
            raise UnknownNameError(f"{error}; or an adapter ({adapters}), a plug-in "
                                   "'package.module:function' or an entry point of group "
                                   "'harness.methods'") from None
    _DYNAMIC[name] = method
    return method


# ----------------------------------------------------------------------------- guard


def _hook_counts(model: nn.Module) -> tuple[int, ...]:
    counts = []
    for module in model.modules():
        counts += [len(module._forward_hooks), len(module._forward_pre_hooks),
                   len(module._backward_hooks), len(getattr(module, "_backward_pre_hooks", {}))]
    return tuple(counts)


@contextlib.contextmanager
def guarded(model: nn.Module) -> Iterator[None]:
    """Run a method with ``model`` in eval mode and its parameters frozen, then restore every
    module's training flag and every parameter's ``requires_grad`` and ``.grad``; fail if the
    method left a hook behind. (``saliency`` also checks the maps' shape and that they are
    finite.)"""
    training = [module.training for module in model.modules()]
    params = list(model.parameters())
    flags = [param.requires_grad for param in params]
    grads = [param.grad for param in params]
    hooks = _hook_counts(model)
    model.eval()
    for param in params:
        param.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for module, was_training in zip(model.modules(), training, strict=True):
            module.training = was_training
        for param, flag, grad in zip(params, flags, grads, strict=True):
            param.requires_grad_(flag)
            param.grad = grad
    if _hook_counts(model) != hooks:
        raise RuntimeError("a saliency method left a hook on the model")


def check_inputs(x: torch.Tensor, target: torch.Tensor | int | list) -> torch.Tensor:
    """Validate ``x`` ``[N, C, H, W]``; return ``target`` as a long tensor ``[N]`` on x's device."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor [N, C, H, W], got {shape}")
    check_finite_inputs(x)
    target = torch.as_tensor(target, device=x.device).long().reshape(-1).clone()  # no inference
    if target.numel() == 1 and x.shape[0] > 1:
        target = target.expand(x.shape[0])
    if target.shape[0] != x.shape[0]:
        raise ValueError(f"target has {target.shape[0]} entries for {x.shape[0]} images")
    return target


def check_finite_inputs(x: torch.Tensor, ids=None) -> None:
    """Refuse inputs ``[N, C, H, W]`` holding NaN or inf, naming the first such image (a NaN input
    would give NaN maps and NaN scores, not an error)."""
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0, 0])
        name = ids[index] if ids is not None else f"#{index}"
        raise ValueError(f"input image {name} contains NaN or inf")


def check_target_range(logits: torch.Tensor, target: torch.Tensor) -> None:
    bad = (target < 0) | (target >= logits.shape[1])
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(f"target {int(target[index])} of image {index} is out of range: the model "
                         f"has {logits.shape[1]} classes")


def class_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unnormalised scores ``model(x)[i, target_i]`` ``[N]`` (no softmax, as in Simonyan et al.)."""
    logits = model(x)
    check_target_range(logits, target)
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


def input_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d score_target / d x ``[N, C, H, W]`` from one backward of the summed scores (any N >= 1)."""
    x = x.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(class_scores(model, x, target).sum(), x)
    return gradient


class NonFiniteMapError(ValueError):
    """A method returned a map holding NaN or inf: ``method`` and ``index``, the image's position
    in the call's ``x``; callers that know more name the image by ``where`` (its id, the
    perturbed sample)."""

    def __init__(self, method: str, index: int, where: str | None = None):
        self.method, self.index = method, index
        super().__init__(f"method {method!r} gave a NaN/inf map for "
                         f"{where or f'image #{index} of its batch'}")


def saliency(name: str, model: nn.Module, x: torch.Tensor, target, *, signed: bool = False,
             **params) -> torch.Tensor:
    """Saliency maps ``[N, H, W]`` of method ``name`` for inputs ``x`` ``[N, C, H, W]``.

    ``signed=True`` returns the method's signed variant (an error if it has none). The model is
    used in eval mode with frozen parameters and left exactly as it was; ``x`` is not modified.
    A map holding NaN or inf raises ``NonFiniteMapError`` (a ValueError) naming its image.
    """
    method = get_method(name)
    target = check_inputs(x, target)
    fn = method.fn
    if signed:
        if method.signed is None:
            raise ValueError(f"method {name!r} has no signed variant; methods with one: "
                             f"{', '.join(n for n, m in METHODS.items() if m.signed)}")
        fn = method.signed
    x = x.detach().clone() if x.is_inference() else x.detach()  # usable under autograd
    with guarded(model):
        maps = fn(model, x, target, **params)
    maps = maps.detach()
    expected = (x.shape[0], x.shape[2], x.shape[3])
    if tuple(maps.shape) != expected:
        raise RuntimeError(f"method {name!r} returned {tuple(maps.shape)}, expected {expected}")
    finite = torch.isfinite(maps.reshape(maps.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        raise NonFiniteMapError(name, int((~finite).nonzero()[0, 0]))
    return maps


def raw_attribution(name: str, model: nn.Module, x: torch.Tensor, target,
                    **params) -> torch.Tensor | None:
    """The method's pixel-space attribution ``[N, C, H, W]`` before its channel reduction (the
    gradient for ``vanilla``; the averaged gradient for ``smoothgrad`` with
    ``average="attribution"``), or None for methods that have only a 2-D map (Grad-CAM, the
    controls, ``blurred``, or a wrapper averaging maps). Guarded like ``saliency``."""
    method = get_method(name)
    if method.raw is not None:
        fn = method.raw
    elif method.attribution is not None:
        fn = method.attribution
        params = {k: v for k, v in params.items() if k != "reduce"}
    else:
        return None
    target = check_inputs(x, target)
    x = x.detach().clone() if x.is_inference() else x.detach()
    with guarded(model):
        values = fn(model, x, target, **params)
    if values is None:
        return None
    values = values.detach()
    if values.ndim != 4 or values.shape[0] != x.shape[0] or values.shape[2:] != x.shape[2:]:
        raise RuntimeError(f"method {name!r} returned a raw attribution of shape "
                           f"{tuple(values.shape)} for inputs {tuple(x.shape)}")
    return values


def method_keywords(method_params: dict | None, params: dict) -> dict:
    """A method's parameters given as the mapping ``method_params`` and/or as keywords, merged;
    a name given both ways is a ValueError (the mapping is how a method's own ``batch_size``
    reaches it past the ``*_batched`` functions' ``batch_size``)."""
    if method_params is not None and not isinstance(method_params, dict):
        raise ValueError(f"method_params must be a mapping, got {method_params!r}")
    both = sorted(set(method_params or {}) & set(params))
    if both:
        raise ValueError(f"method parameter {both[0]!r} given both in method_params and as a "
                         "keyword")
    return {**(method_params or {}), **params}


def raw_attribution_batched(name: str, model: nn.Module, x: torch.Tensor, target, *,
                            batch_size: int = 32, method_params: dict | None = None,
                            **params) -> torch.Tensor | None:
    """``raw_attribution`` over ``x`` in chunks of ``batch_size`` images: ``[N, C, H, W]`` or
    None. The method's parameters come as ``method_params`` and/or keywords, as in
    ``saliency_batched``."""
    params = method_keywords(method_params, params)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target = check_inputs(x, target)
    chunks = [raw_attribution(name, model, x[start:start + batch_size],
                              target[start:start + batch_size], **params)
              for start in range(0, x.shape[0], batch_size)]
    return None if chunks[0] is None else torch.cat(chunks)


def saliency_batched(name: str, model: nn.Module, x: torch.Tensor, target, *,
                     batch_size: int = 32, signed: bool = False, method_params: dict | None = None,
                     **params) -> torch.Tensor:
    """``saliency`` over ``x`` in chunks of ``batch_size`` images (bounded memory): ``[N, H, W]``.

    The method's parameters come as ``method_params`` (a mapping, which may hold the method's
    own ``batch_size``, as ``rise``, ``integrated_gradients`` and ``smoothgrad`` have) and/or as
    keywords.
    """
    params = method_keywords(method_params, params)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target = check_inputs(x, target)
    chunks = []
    for start in range(0, x.shape[0], batch_size):
        try:
            chunks.append(saliency(name, model, x[start:start + batch_size],
                                   target[start:start + batch_size], signed=signed, **params))
        except NonFiniteMapError as error:  # its position in x, not in the chunk
            index = start + error.index
            raise NonFiniteMapError(name, index, f"image #{index}") from None
    return torch.cat(chunks)
