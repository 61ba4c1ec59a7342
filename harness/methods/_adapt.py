"""Shared pieces of the library adapters (harness/methods/captum_adapter.py, gradcam_adapter.py).

- ``Signature`` / ``split_params``: a method's ``params`` split into the library's groups
  (``init``: constructor keywords; ``attribute`` or ``call``: keywords of the call that computes
  the maps), either given explicitly (``init: {...}``) or as flat keys placed by signature
  inspection. Unknown, ambiguous, harness-owned or missing required names are errors naming the
  parameter and the valid choices.
- ``seeded_global_rngs``: libraries that draw from the global generators (Captum's GradientShap
  uses numpy's and torch's) run seeded, with the caller's generator states restored after.
- ``library_layer``: the module a library should hook for our ``layer`` parameter (default: the
  model's ``cam_layer``). A module that runs several times per forward (a shared activation such
  as EfficientNet-Lite's ``_swish``) is routed through a fresh ``nn.Identity`` that sees only its
  last call, which is the call our own ``gradcam`` uses; a library hooking the shared module
  directly would see every call (pytorch-grad-cam then silently uses the first).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.errors import ConfigError, MethodError, UnknownNameError
from harness.models import get_module


@dataclass(frozen=True)
class Signature:
    """The keyword parameters a group accepts: ``names`` (all), ``required`` (no default) and
    ``open`` (it also takes ``**kwargs``)."""

    names: frozenset[str]
    required: frozenset[str]
    open: bool


def read_signature(fn, skip: set[str]) -> Signature:
    """Keyword parameters of ``fn`` (``self`` and ``skip`` left out)."""
    parameters = list(inspect.signature(fn).parameters.values())
    names, required, is_open = set(), set(), False
    for parameter in parameters:
        if parameter.name == "self" or parameter.kind is parameter.VAR_POSITIONAL:
            continue
        if parameter.kind is parameter.VAR_KEYWORD:
            is_open = True
            continue
        if parameter.name in skip:
            continue
        names.add(parameter.name)
        if parameter.default is parameter.empty:
            required.add(parameter.name)
    return Signature(frozenset(names), frozenset(required), is_open)


def split_params(what: str, params: dict, groups: dict[str, Signature],
                 reserved: dict[str, str]) -> dict[str, dict]:
    """Split ``params`` into ``{group: kwargs}``.

    ``params`` holds the groups as mappings (``{"init": {...}, "attribute": {...}}``) and/or flat
    keys, each placed in the one group whose signature names it. ``reserved`` maps a name the
    harness sets itself to the reason. Errors are ``ConfigError("<param path>: <why>")``.
    """
    split: dict[str, dict] = {group: {} for group in groups}
    for key, value in params.items():
        if key in groups:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of {what}'s {key} parameters, got "
                                 f"{value!r}")
            for name, inner in value.items():
                _check_name(what, f"{key}.{name}", name, groups[key], reserved, key)
                split[key][name] = inner
            continue
        if key in reserved:
            raise ConfigError(f"{key}: set by the harness ({reserved[key]})")
        owners = [group for group, signature in groups.items() if key in signature.names]
        if not owners:
            valid = sorted(set().union(*(s.names for s in groups.values())) - set(reserved))
            raise ConfigError(f"{key}: not a parameter of {what}; valid: "
                             f"{', '.join([*groups, *valid])}")
        if len(owners) > 1:
            raise ConfigError(f"{key}: {what} takes {key!r} in {' and '.join(owners)}; say which "
                             f"({owners[0]}: {{{key}: ...}})")
        split[owners[0]][key] = value
    for group, signature in groups.items():
        missing = sorted(signature.required - set(split[group]) - set(reserved))
        if missing:
            raise ConfigError(f"{missing[0]}: {what} needs {group} parameter {missing[0]!r}")
    return split


def _check_name(what: str, path: str, name: str, signature: Signature, reserved: dict[str, str],
                group: str) -> None:
    if name in reserved:
        raise ConfigError(f"{path}: set by the harness ({reserved[name]})")
    if name not in signature.names and not signature.open:
        raise ConfigError(f"{path}: not a {group} parameter of {what}; valid: "
                         f"{', '.join(sorted(signature.names - set(reserved)))}")


def library_class(table: dict[str, type], member: str, not_methods: dict[str, str], what: str,
                  form: str) -> type:
    """``table[member]``, else an ``UnknownNameError`` naming ``what`` (e.g. "Captum attribution
    class"), why ``member`` is no method where ``not_methods`` says, and every available name as
    ``form`` (e.g. ``captum:<Class>``) takes it."""
    if member not in table:
        why = f" ({not_methods[member]})" if member in not_methods else ""
        raise UnknownNameError(f"unknown {what} {member!r}{why}. Available as {form}: "
                               f"{', '.join(table)}")
    return table[member]


def as_library_value(value):
    """YAML values for a library call: lists become tuples (``sliding_window_shapes``)."""
    if isinstance(value, list):
        return tuple(as_library_value(v) for v in value)
    if isinstance(value, dict):
        return {k: as_library_value(v) for k, v in value.items()}
    return value


def layer_name(model: nn.Module, layer: str | None, what: str) -> str:
    """``layer``, or the model's ``cam_layer`` (as our ``gradcam`` takes it)."""
    if layer is not None:
        if not isinstance(layer, str):
            raise ConfigError(f"{what}: layer must be a module name (str), got {layer!r}")
        return layer
    info = getattr(model, "harness_info", None)
    if info is None:
        raise MethodError(f"{what} needs layer= or a model with harness metadata (cam_layer)")
    return info.cam_layer


def calls_per_forward(model: nn.Module, module: nn.Module, x: torch.Tensor) -> int:
    """How many times ``module`` runs in one forward of ``model`` (one image of ``x``)."""
    count = itertools.count()

    def tick(_module, _inputs, _output):
        next(count)

    handle = module.register_forward_hook(tick)
    try:
        with torch.inference_mode():
            model(x[:1])
    finally:
        handle.remove()
    return next(count)


@contextlib.contextmanager
def library_layer(model: nn.Module, x: torch.Tensor, layer: str | None,
                  what: str) -> Iterator[nn.Module]:
    """The module to hand to a library as the target layer, valid inside the ``with`` block.

    The named module itself when it runs once per forward; otherwise an ``nn.Identity`` proxy
    that a temporary hook on the module feeds with the module's last output of each forward (so
    the library's hooks and gradients see that call only). The hook is removed on exit.
    """
    name = layer_name(model, layer, what)
    module = get_module(model, name)
    calls = calls_per_forward(model, module, x)
    if calls == 0:
        raise MethodError(f"{what}: layer {name!r} does not run in the model's forward")
    if calls == 1:
        yield module
        return
    proxy = nn.Identity()
    seen = itertools.count(1)

    def route(_module, _inputs, output):
        if next(seen) % calls == 0:  # the last call of this forward
            return proxy(output)
        return None

    handle = module.register_forward_hook(route)
    try:
        yield proxy
    finally:
        handle.remove()


@contextlib.contextmanager
def seeded_global_rngs(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's (CPU and ``device``'s CUDA), numpy's and Python's global generators with
    ``seed`` for a library that draws from them, and restore their states on exit (the caller's
    random streams are untouched)."""
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    # the libraries draw from numpy's legacy global state, so that is what is seeded here
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)  # noqa: NPY002
            random.setstate(python_state)
