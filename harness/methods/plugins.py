"""User plug-ins: saliency methods that live outside this repository.

A plug-in is a function with the methods' signature ``fn(model, x, target, **params) ->
Tensor[N, H, W]`` (``x`` the model input ``[N, C, H, W]``, ``target`` long ``[N]``; its keyword
parameters, with defaults and annotations, are its settings), or a ``harness.methods.Method``
when it also has a signed variant or a raw attribution. It is found

- by an import path, ``package.module:function`` (the method name in a config or in
  ``saliency``), imported from ``sys.path`` and the folders of ``plugins:``;
- by name, from the entry points of group ``harness.methods``: a package declares
  ``[project.entry-points."harness.methods"] my_method = "mypkg.saliency:my_method"``;
- by name, when a module named in a config's ``plugins:`` registers it with
  ``@harness.register_method("name", citation=...)``.

Registered names and the adapter families (``captum:``, ``gradcam:``) come first. Only functions
written in Python outside the standard library that take ``(model, x, target)`` as their first
three named parameters are accepted; anything else raises ``PluginError`` before any model is
loaded. Plug-in calls go through the same guard and output checks as every method.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys

from harness.errors import PluginError
from harness.methods.entry import Method, settings_for, summary_of

SIGNATURE = "(model, x, target, **params) -> Tensor[N, H, W]"


def import_method(path: str) -> Method:
    """The method at import path ``package.module:function``.

    Raises:
        PluginError: the module does not import, has no such attribute, or the object is not a
            usable method.
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"plug-in {path!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any failure while importing user code
        raise PluginError(f"plug-in {path!r}: cannot import module {module_name!r}: "
                          f"{type(error).__name__}: {error}. A module in the config's folder or "
                          "the working folder is found by name; elsewhere, name it in the "
                          "config's plugins: (a .py path) or install it") from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = sorted(n for n, v in vars(module).items()
                           if callable(v) and not n.startswith("_"))
            raise PluginError(f"plug-in {path!r}: module {module_name!r} has no attribute "
                              f"{attribute!r}; its public callables: {', '.join(names) or 'none'}")
        target = getattr(target, part)
    return as_method(path, target, origin=f"plug-in {path}")


def as_method(name: str, target, origin: str) -> Method:
    """A ``Method`` named ``name`` from a plug-in function or ``Method``.

    Raises:
        PluginError: ``target`` is not a Python function taking (model, x, target), or comes
            from the standard library.
    """
    if isinstance(target, Method):
        check_signature(origin, target.fn)
        return dataclasses.replace(target, name=name, origin=origin)
    check_signature(origin, target)
    try:
        settings = settings_for(name, target, None)
    except TypeError as error:  # a signature whose defaults cannot make a dataclass
        raise PluginError(f"{origin}: cannot read its parameters ({error})") from None
    return Method(name, target, citation=origin, summary=summary_of(target) or origin,
                  settings=settings, origin=origin)


def check_signature(origin: str, fn) -> None:
    """``fn`` must be a Python function (not a builtin, a class or a standard-library function)
    whose first three parameters are named and positional (model, x, target); the others are
    passed by keyword."""
    if not callable(fn):
        raise PluginError(f"{origin}: {type(fn).__name__} object is not callable; a plug-in is a "
                          f"function {SIGNATURE} or a harness.methods.Method")
    function = inspect.unwrap(fn)
    if not (inspect.isfunction(function) or inspect.ismethod(function)):
        raise PluginError(f"{origin}: {fn!r} is not a Python function; a plug-in is a function "
                          f"{SIGNATURE}")
    module = (getattr(function, "__module__", None) or "").split(".")[0]
    if module in sys.stdlib_module_names or module == "builtins":
        raise PluginError(f"{origin}: {module}.{getattr(function, '__qualname__', fn)} is a "
                          f"standard-library function, not a saliency method {SIGNATURE}")
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as error:
        raise PluginError(f"{origin}: cannot read its signature ({error})") from None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY,
                                                      p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 3:
        raise PluginError(f"{origin}: signature {inspect.signature(fn)} does not take (model, x, "
                          f"target) as its first three parameters; a plug-in is a function "
                          f"{SIGNATURE}")
    stuck = [p.name for p in positional[3:] if p.kind is p.POSITIONAL_ONLY
             and p.default is p.empty]
    if stuck:
        raise PluginError(f"{origin}: parameters after (model, x, target) are passed by keyword; "
                          f"{stuck[0]!r} is positional-only without a default")
