"""User plug-ins: saliency methods that live outside this repository.

A plug-in is a function with the methods' signature ``fn(model, x, target, **params) ->
Tensor[N, H, W]`` (``x`` the model input ``[N, C, H, W]``, ``target`` long ``[N]``), or a
``harness.methods.Method`` when it also has a signed variant or a raw attribution. It is found

- by an import path, ``package.module:function`` (the method name in a config or in
  ``saliency``), imported with ``importlib.import_module`` from ``sys.path``;
- by name, from the entry points of group ``harness.methods`` (``importlib.metadata``): a package
  declares ``[project.entry-points."harness.methods"] my_method = "mypkg.saliency:my_method"``.

Registered names and the adapter families (``captum:``, ``gradcam:``) come first. A plug-in that
does not import, names a missing attribute, is not callable or does not take ``(model, x,
target)`` positionally raises ``PluginError`` (a ``ValueError``); config validation reports it
before any model is loaded. Plug-in calls go through the same guard as every method.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect

from harness.methods._core import Method

ENTRY_POINT_GROUP = "harness.methods"
SIGNATURE = "(model, x, target, **params) -> Tensor[N, H, W]"


class PluginError(ValueError):
    """A plug-in method that cannot be used; the message says which and why."""


def import_method(path: str) -> Method:
    """The method at import path ``package.module:function``."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"plug-in {path!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any failure while importing user code
        raise PluginError(f"plug-in {path!r}: cannot import module {module_name!r}: "
                          f"{type(error).__name__}: {error}") from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = sorted(n for n, v in vars(module).items()
                           if callable(v) and not n.startswith("_"))
            raise PluginError(f"plug-in {path!r}: module {module_name!r} has no attribute "
                              f"{attribute!r}; its public callables: {', '.join(names) or 'none'}")
        target = getattr(target, part)
    return as_method(path, target, origin=f"plug-in {path}")


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed entry points of group ``harness.methods``, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_plugins() -> list[str]:
    """Names of the methods installed through entry points."""
    return sorted(entry_points())


def entry_point_method(name: str) -> Method | None:
    """The method of entry point ``name`` (group ``harness.methods``), or None if there is none."""
    entry = entry_points().get(name)
    if entry is None:
        return None
    dist = getattr(entry, "dist", None)
    source = f"entry point {name} = {entry.value}" + (f" (distribution {dist.name})"
                                                       if dist is not None else "")
    try:
        target = entry.load()
    except Exception as error:  # noqa: BLE001 - any failure while importing user code
        raise PluginError(f"{source}, group {ENTRY_POINT_GROUP!r}, does not load: "
                          f"{type(error).__name__}: {error}") from None
    return as_method(name, target, origin=source)


def as_method(name: str, target, *, origin: str) -> Method:
    """A ``Method`` named ``name`` from a plug-in function or ``Method``."""
    if isinstance(target, Method):
        check_signature(origin, target.fn)
        return dataclasses.replace(target, name=name)
    if not callable(target):
        raise PluginError(f"{origin}: {type(target).__name__} object is not callable; a "
                          f"plug-in is a function {SIGNATURE} or a harness.methods.Method")
    check_signature(origin, target)
    summary = " ".join((target.__doc__ or "").strip().split("\n\n")[0].split())
    return Method(name, target, "plugin", citation=origin, summary=summary or origin,
                  check_params=_required_params(origin, target))


def check_signature(origin: str, fn) -> None:
    """``fn`` must take (model, x, target) positionally; other parameters by keyword."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as error:
        raise PluginError(f"{origin}: cannot read its signature ({error})") from None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY,
                                                      p.POSITIONAL_OR_KEYWORD)]
    has_var_positional = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    if len(positional) < 3 and not has_var_positional:
        raise PluginError(f"{origin}: signature {inspect.signature(fn)} does not take (model, x, "
                          f"target); a plug-in is a function {SIGNATURE}")
    stuck = [p.name for p in positional[3:] if p.kind is p.POSITIONAL_ONLY
             and p.default is p.empty]
    if stuck:
        raise PluginError(f"{origin}: parameters after (model, x, target) are passed by keyword; "
                          f"{stuck[0]!r} is positional-only without a default")


def _required_params(origin: str, fn):
    parameters = list(inspect.signature(fn).parameters.values())
    positional = [p for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    keyword = [p for p in parameters if p.kind is p.KEYWORD_ONLY]
    required = {p.name for p in positional[3:] + keyword if p.default is p.empty}

    def check(params: dict) -> None:
        missing = sorted(required - set(params))
        if missing:
            raise ValueError(f"{missing[0]}: required by {origin} (it has no default)")

    return check
