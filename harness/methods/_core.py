"""The saliency-method registry, the call guard and channel reductions.

A method is a function ``(model, x, target, **params) -> Tensor[N, H, W]`` (``harness.methods.
entry``); methods built on a per-pixel, per-channel attribution (gradient, gradient x input,
integrated gradients, guided backprop) also expose that raw signed attribution ``[N, C, H, W]``
so wrappers such as SmoothGrad can average it.

Besides the registered names, ``get_method`` resolves installed entry points of group
``harness.methods`` and dynamic names: ``<family>:<member>`` for the adapter families
(``captum:<AttributionClass>``, ``gradcam:<CAMClass>``, see ``FAMILIES``) and an import path
``package.module:function`` (``harness.methods.plugins``). Registered names come first.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import field

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from harness.errors import ConfigError, MethodError
from harness.methods.entry import Family, MapFn, Method, settings_for, summary_of
from harness.methods.plugins import as_method, import_method
from harness.registry import Registry, lookup, require  # noqa: F401  (require: adapters)
from harness.settings import check_choice, check_target_range

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


FAMILIES: dict[str, Family] = {}


def _resolve(name: str) -> Method | None:
    """A dynamic method name: ``<family>:<member>`` or ``package.module:function``."""
    if ":" not in name:
        return None
    prefix, _, member = name.partition(":")
    if prefix in FAMILIES:
        return FAMILIES[prefix].method(member)
    return import_method(name)


METHODS: Registry[Method] = Registry(
    "method", "harness.methods", adopt=as_method, resolve=_resolve,
    hint="; or an adapter (captum:<Class>, gradcam:<CAMClass>), a plug-in "
         "'package.module:function' or an entry point of group 'harness.methods'")


def register_family(family: Family) -> Family:
    """Register an adapter family (methods ``<prefix>:<member>`` built on demand)."""
    if family.prefix in FAMILIES:
        raise ConfigError(f"method family {family.prefix!r} is already registered")
    FAMILIES[family.prefix] = family
    return family


def register_method(name: str, *, citation: str, settings: type | None = None,
                    signed: MapFn | None = None,
                    raw: MapFn | None = None) -> Callable[[MapFn], MapFn]:
    """Decorator registering a map function ``(model, x, target, **params) -> [N, H, W]`` as
    method ``name``.

    Args:
        name: the name configs use.
        citation: the method's source (paper, arXiv id).
        settings: a frozen dataclass of its parameters with the paper's defaults and a
            ``check()`` for ranges (default: read off the function's keyword parameters).
        signed: the signed variant, where one exists.
        raw: for wrappers, the raw ``[N, C, H, W]`` statistic before the channel reduction.

    Returns:
        The decorator (it returns the function unchanged).

    Raises:
        ConfigError: the name is taken, or ``settings`` is not a dataclass.
    """

    def add(fn: MapFn) -> MapFn:
        METHODS.add(name, Method(name, fn, citation, summary_of(fn), signed=signed, raw=raw,
                                 settings=settings_for(name, fn, settings)))
        return fn

    return add


def _with_reduce(name: str, base: type) -> type:
    """``base`` plus the channel reduction ``reduce`` (default ``abs_max``)."""

    def check(self) -> None:
        inner = getattr(base, "check", None)
        if inner is not None:
            inner(self)
        check_choice("reduce", self.reduce, tuple(REDUCTIONS))

    return dataclasses.make_dataclass(
        f"{name}Settings", [("reduce", str, field(default="abs_max"))], bases=(base,),
        frozen=True, namespace={"check": check, "__doc__": base.__doc__})


def register_attribution(name: str, *, citation: str,
                         settings: type | None = None) -> Callable[[MapFn], MapFn]:
    """Decorator registering a raw attribution ``(model, x, target, **params) -> [N, C, H, W]``
    as method ``name``: its map is ``reduce_channels(attribution, reduce)`` (default
    ``abs_max``), its signed map the channel sum.

    Args:
        name: the name configs use.
        citation: the method's source.
        settings: as for ``register_method`` (the ``reduce`` field is added).

    Returns:
        The decorator (it returns the attribution function unchanged).

    Raises:
        ConfigError: the name is taken, or ``settings`` is not a dataclass.
    """

    def add(attribution: MapFn) -> MapFn:
        def as_map(model, x, target, *, reduce: str = "abs_max", **params):
            return reduce_channels(attribution(model, x, target, **params), reduce)

        def as_signed(model, x, target, *, reduce: str = "abs_max", **params):
            return signed_channels(attribution(model, x, target, **params))

        base = settings_for(name, attribution, settings)
        METHODS.add(name, Method(name, as_map, citation, summary_of(attribution),
                                 signed=as_signed, attribution=attribution,
                                 settings=_with_reduce(name, base)))
        return attribution

    return add


def list_methods(pattern: str = "*") -> list[str]:
    """Names of the saliency methods.

    Args:
        pattern: an fnmatch pattern (``"smooth*"``).

    Returns:
        The sorted names: registered methods and installed entry points of group
        ``harness.methods`` (adapters ``captum:<Class>`` and import paths are resolved by name).

    Raises:
        Nothing.
    """
    return METHODS.list(pattern)


def get_method(name: str) -> Method:
    """The method called ``name``.

    Args:
        name: a registered name, an entry point of group ``harness.methods``,
            ``<family>:<member>`` (an adapter) or an import path ``package.module:function``.

    Returns:
        The ``Method`` entry (its function, signed variant, settings, citation).

    Raises:
        UnknownNameError: an unknown name (listing the registered names) or family member.
        MissingDependencyError: the adapter's optional library is not installed.
        PluginError: a plug-in that does not import or has the wrong signature.
    """
    return METHODS.get(name)


# ----------------------------------------------------------------------------- guard


_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_with_kwargs",
                 "_global_forward_hooks_always_called")


def _hook_counts(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Hooks per module (by module name) and torch's process-wide module hooks."""
    counts = {name or "(the model)": (
        len(module._forward_hooks), len(module._forward_pre_hooks), len(module._backward_hooks),
        len(getattr(module, "_backward_pre_hooks", {}))) for name, module in model.named_modules()}
    counts["(global module hooks)"] = tuple(len(getattr(torch_module, name, {}))
                                            for name in _GLOBAL_HOOKS)
    return counts


def _tensor_state(tensor: torch.Tensor) -> tuple:
    """What an in-place change, a ``.data`` swap or a replacement of ``tensor`` changes."""
    return (id(tensor), tensor._version, tensor.data_ptr(), tuple(tensor.shape), tensor.dtype,
            tensor.device)


def _model_state(model: nn.Module) -> dict[str, tuple]:
    """Every parameter's and buffer's identity, version counter and storage, by name."""
    state = {f"parameter {name}": _tensor_state(p) for name, p in model.named_parameters()}
    state.update({f"buffer {name}": _tensor_state(b) for name, b in model.named_buffers()})
    return state


# ids of the models inside a ``guarded`` block of this context: a guard nested in another on
# the same model (a metric that calls the method once per chunk inside one guard) checks only its
# ``x``; the outer guard checks the model once, at its end
_GUARDED: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "harness_guarded_models", default=frozenset())


@contextlib.contextmanager
def guarded(model: nn.Module, method: str = "a saliency method",
            x: torch.Tensor | None = None) -> Iterator[None]:
    """Run ``method`` with ``model`` in eval mode and its parameters frozen, then restore every
    module's training flag and every parameter's ``requires_grad`` and ``.grad``, and check that
    the method left the model and ``x`` as they were: no parameter or buffer changed (in place,
    by a ``.data`` swap or replaced; read off torch's version counters, so the check costs no
    pass over the weights), ``x`` unchanged, no hook left on a module nor a process-wide module
    hook added.

    Nested in a ``guarded`` block on the same model (a metric that calls the method once per
    chunk wraps all the calls in one guard), it checks ``x`` only: the model's checks, which walk
    every module, run once, when the outer block ends.

    Raises:
        MethodError: naming the method and what it changed (after restoring what can be).
    """
    active = _GUARDED.get()
    if id(model) in active:
        yield from _x_guarded(model, method, x)
        return
    token = _GUARDED.set(active | {id(model)})
    try:
        yield from _model_guarded(model, method, x)
    finally:
        _GUARDED.reset(token)


def _x_guarded(model: nn.Module, method: str, x: torch.Tensor | None) -> Iterator[None]:
    """The nested guard: ``x`` unchanged, and the model still in the eval mode the outer guard
    set (a method that switched it to training would change every later chunk's maps, through
    dropout or batch statistics, before the outer guard could restore it)."""
    x_state = None if x is None else (x._version, x.data_ptr())
    with torch.enable_grad():
        yield
    _check_x(method, x, x_state)
    training = next((name or "(the model)" for name, module in model.named_modules()
                     if module.training), None)
    if training is not None:
        raise MethodError(f"method {method!r} switched the model's {training} to training mode: "
                          "a saliency method must leave the model as it was (every later "
                          "method and metric would read the changed model); the run stops")


def _check_x(method: str, x: torch.Tensor | None, x_state) -> None:
    if x is not None and (x._version, x.data_ptr()) != x_state:
        raise MethodError(f"method {method!r} modified its input x in place; a saliency method "
                          "must not change x (clone it first)")


def _model_guarded(model: nn.Module, method: str, x: torch.Tensor | None) -> Iterator[None]:
    training = [module.training for module in model.modules()]
    params = list(model.parameters())
    flags = [param.requires_grad for param in params]
    grads = [param.grad for param in params]
    hooks = _hook_counts(model)
    before = _model_state(model)
    x_state = None if x is None else (x._version, x.data_ptr())
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
    after = _model_state(model)
    changed = [key for key in before if after.get(key) != before[key]] + \
        [key for key in after if key not in before]
    if changed:
        raise MethodError(f"method {method!r} changed the model's {changed[0]}"
                          + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
                          + ": a saliency method must leave the model as it was (every later "
                          "method and metric would read the changed model); the run stops")
    _check_x(method, x, x_state)
    now = _hook_counts(model)
    left = [where for where in hooks if now.get(where) != hooks[where]]
    if left:
        raise MethodError(f"method {method!r} left a hook on {left[0]}: remove every hook it "
                          "registers (a try/finally around handle.remove())")


def check_inputs(x: torch.Tensor, target: torch.Tensor | int | list) -> torch.Tensor:
    """Validate ``x`` ``[N, C, H, W]``; return ``target`` as a long tensor ``[N]`` on x's device."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise MethodError(f"x must be a tensor [N, C, H, W], got {shape}")
    check_finite_inputs(x)
    target = torch.as_tensor(target, device=x.device).long().reshape(-1).clone()  # no inference
    if target.numel() == 1 and x.shape[0] > 1:
        target = target.expand(x.shape[0])
    if target.shape[0] != x.shape[0]:
        raise MethodError(f"target has {target.shape[0]} entries for {x.shape[0]} images")
    return target


def check_finite_inputs(x: torch.Tensor, ids=None) -> None:
    """Refuse inputs ``[N, C, H, W]`` holding NaN or inf, naming the first such image (a NaN input
    would give NaN maps and NaN scores, not an error)."""
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0, 0])
        name = ids[index] if ids is not None else f"#{index}"
        raise MethodError(f"input image {name} contains NaN or inf")


def class_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unnormalised scores ``model(x)[i, target_i]`` ``[N]`` (no softmax, as in Simonyan et al.)."""
    logits = model(x)
    check_target_range(target, logits.shape[1], error=MethodError)
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


def input_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d score_target / d x ``[N, C, H, W]`` from one backward of the summed scores (any N >= 1)."""
    x = x.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(class_scores(model, x, target).sum(), x)
    return gradient


class NonFiniteMapError(MethodError):
    """A method returned a map holding NaN or inf: ``method`` and ``index``, the image's position
    in the call's ``x``; callers that know more name the image by ``where`` (its id, the
    perturbed sample)."""

    def __init__(self, method: str, index: int, where: str | None = None):
        self.method, self.index = method, index
        super().__init__(f"method {method!r} gave a NaN/inf map for "
                         f"{where or f'image #{index} of its batch'}")

    def __reduce__(self):  # picklable across processes with its own arguments
        return (NonFiniteMapError, (self.method, self.index))


def check_output(name: str, values, x: torch.Tensor, expected: tuple[int, ...],
                 what: str = "maps") -> torch.Tensor:
    """A method's output: a floating tensor on ``x``'s device of shape ``expected`` (else a
    ``MethodError`` naming the method and what it returned); returned detached."""
    if not isinstance(values, torch.Tensor):
        raise MethodError(f"method {name!r} returned {type(values).__name__} {what}; expected a "
                          f"torch.Tensor of shape {expected} on {x.device}")
    if values.device != x.device:
        raise MethodError(f"method {name!r} returned {what} on {values.device}; expected them on "
                          f"the input's device {x.device}")
    if not values.is_floating_point():
        raise MethodError(f"method {name!r} returned {what} of dtype {values.dtype}; expected a "
                          "floating-point tensor")
    if tuple(values.shape) != tuple(expected):
        raise MethodError(f"method {name!r} returned {what} of shape {tuple(values.shape)}, "
                          f"expected {tuple(expected)}")
    return values.detach()


def saliency(name: str, model: nn.Module, x: torch.Tensor, target, *, signed: bool = False,
             **params) -> torch.Tensor:
    """Saliency maps of method ``name`` for inputs ``x``.

    The model is used in eval mode with frozen parameters and left exactly as it was
    (``guarded``); ``x`` is not modified.

    Args:
        name: a method name (``list_methods()``, an adapter or a plug-in).
        model: the classifier (with harness metadata where the method reads it).
        x: model inputs ``[N, C, H, W]``.
        target: the class explained per image ``[N]`` (or one int for all).
        signed: the method's signed variant instead of its map.
        **params: the method's parameters (its settings' fields).

    Returns:
        Maps ``[N, H, W]``.

    Raises:
        ConfigError: unknown or out-of-range parameters.
        MethodError: bad inputs, no signed variant, a wrong output, a changed model, or a NaN/inf
            map (``NonFiniteMapError``, naming the image).
    """
    method = get_method(name)
    method.validate(params, "params")
    target = check_inputs(x, target)
    fn = method.fn
    if signed:
        if method.signed is None:
            raise MethodError(f"method {name!r} has no signed variant; methods with one: "
                              f"{', '.join(n for n, m in METHODS.items() if m.signed)}")
        fn = method.signed
    x = x.detach().clone() if x.is_inference() else x.detach()  # usable under autograd
    with guarded(model, name, x):
        maps = fn(model, x, target, **params)
    maps = check_output(name, maps, x, (x.shape[0], x.shape[2], x.shape[3]))
    finite = torch.isfinite(maps.reshape(maps.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        raise NonFiniteMapError(name, int((~finite).nonzero()[0, 0]))
    return maps


def raw_attribution(name: str, model: nn.Module, x: torch.Tensor, target,
                    **params) -> torch.Tensor | None:
    """The method's pixel-space attribution ``[N, C, H, W]`` before its channel reduction (the
    gradient for ``vanilla``; the averaged gradient for ``smoothgrad`` with
    ``average="attribution"``), or None for methods that have only a 2-D map (Grad-CAM, the
    controls, ``blurred``, or a wrapper averaging maps). Guarded and checked like ``saliency``."""
    method = get_method(name)
    method.validate(params, "params")
    if method.raw is not None:
        fn = method.raw
    elif method.attribution is not None:
        fn = method.attribution
        params = {k: v for k, v in params.items() if k != "reduce"}
    else:
        return None
    target = check_inputs(x, target)
    x = x.detach().clone() if x.is_inference() else x.detach()
    with guarded(model, name, x):
        values = fn(model, x, target, **params)
    if values is None:
        return None
    return check_output(name, values, x, tuple(x.shape), "a raw attribution")


def method_keywords(method_params: dict | None, params: dict) -> dict:
    """A method's parameters given as the mapping ``method_params`` and/or as keywords, merged;
    a name given both ways is a ConfigError (the mapping is how a method's own ``batch_size``
    reaches it past the ``*_batched`` functions' ``batch_size``)."""
    if method_params is not None and not isinstance(method_params, dict):
        raise ConfigError(f"method_params must be a mapping, got {method_params!r}")
    both = sorted(set(method_params or {}) & set(params))
    if both:
        raise ConfigError(f"method parameter {both[0]!r} given both in method_params and as a "
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
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
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
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
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
