"""Validation in one place: typed settings from mappings, field checks, the target-range check.

Every method and metric has a frozen settings dataclass whose defaults are the paper's. A config
entry (or a keyword call) becomes settings through ``build``: unknown keys (with a near match),
missing required keys and wrong types (read off the annotations) are ``ConfigError``s naming the
key path; then the settings' own ``check()`` tests ranges with the field validators below, which
raise ``ConfigError("field: why")``; ``checked`` prefixes the path. The pure functions call the
same ``check()``, so a value is accepted or refused the same way from a config, the CLI and
Python.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from harness.errors import ConfigError, DataError, HarnessError
from harness.registry import did_you_mean

S = TypeVar("S")


# ----------------------------------------------------------------------------- types


def type_ok(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (ints are not floats' bools; lists for tuples)."""
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        return isinstance(value, list | tuple)
    if origin in (dict, Mapping) or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def type_name(annotation: Any) -> str:
    """A readable name of an annotation (``int | None``)."""
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def join(path: str, key: object) -> str:
    """``path.key`` (``key`` alone at the top level)."""
    return f"{path}.{key}" if path else str(key)


def build(cls: type[S], raw: Mapping | None, path: str = "") -> S:
    """Instantiate dataclass ``cls`` from the mapping ``raw`` (None: every default).

    Nested dataclass fields are built recursively.

    Raises:
        ConfigError: ``raw`` is not a mapping, a key is unknown (with a near match and the valid
            keys), a required key is missing, or a value has the wrong type; named ``path.key``.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got "
                          f"{type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in raw if key not in fields]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{join(path, key)}: unknown key.{did_you_mean(key, list(fields))} "
                          f"Valid keys {'here' if path else 'at the top level'}: "
                          f"{', '.join(fields)}")
    values = {}
    for name, spec in fields.items():
        key = join(path, name)
        if name not in raw:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing required key")
            continue
        value, annotation = raw[name], hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = build(annotation, value, key)
            continue
        if not type_ok(value, annotation):
            raise ConfigError(f"{key}: expected {type_name(annotation)}, got {value!r}")
        values[name] = value
    return cls(**values)


def check(settings: Any, path: str = "") -> Any:
    """Run ``settings.check()`` (if it has one); its ``"field: why"`` error (a ``HarnessError``,
    or a plain ``ValueError`` from a plug-in's check) is re-raised as a ``ConfigError`` named
    ``path.field``. Returns ``settings``."""
    method = getattr(settings, "check", None)
    if method is None:
        return settings
    try:
        method()
    except (HarnessError, ValueError) as error:
        if not path and isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{path}.{error}" if path else str(error)) from None
    return settings


def checked(cls: type[S], raw: Mapping | None = None, path: str = "") -> S:
    """``build`` then ``check``: the one way a mapping becomes valid settings."""
    return check(build(cls, raw, path), path)


def defaults(cls: type) -> dict:
    """``{field: default}`` of a settings dataclass (None where a field has none)."""
    out = {}
    for spec in dataclasses.fields(cls):
        if spec.default is not dataclasses.MISSING:
            out[spec.name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            out[spec.name] = spec.default_factory()
        else:
            out[spec.name] = None
    return out


def from_signature(name: str, fn: Callable, skip: int = 3) -> type:
    """A frozen settings dataclass made from the keyword parameters of ``fn`` after its first
    ``skip`` positional ones (a plug-in's ``(model, x, target, *, power: float = 2.0)``): field
    types from the annotations (``Any`` where absent), defaults from the signature."""
    parameters = list(inspect.signature(fn).parameters.values())[skip:]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no type checks
        hints = {}
    specs = []
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = hints.get(parameter.name, Any)
        if parameter.default is parameter.empty:
            specs.append((parameter.name, annotation))
        else:
            specs.append((parameter.name, annotation, dataclasses.field(
                default=parameter.default) if not isinstance(parameter.default, list | dict)
                else dataclasses.field(default_factory=lambda d=parameter.default: d)))
    specs.sort(key=lambda spec: len(spec) == 3)  # required fields first, as dataclasses need
    return dataclasses.make_dataclass(f"{name}Settings", specs, frozen=True)


def accepts_any_keyword(fn: Callable, skip: int = 3) -> bool:
    """Whether ``fn`` takes ``**kwargs`` (then its settings cannot list every key)."""
    return any(p.kind is p.VAR_KEYWORD
               for p in list(inspect.signature(fn).parameters.values())[skip:])


# ----------------------------------------------------------------------------- field checks


def _is_number(value: Any) -> bool:
    """A real number, numpy scalars included; never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_choice(field: str, value: Any, choices: Sequence) -> Any:
    """``ConfigError("field: ...")`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{field}: {value!r} is not one of: {', '.join(map(str, choices))}"
                          + did_you_mean(value, [str(c) for c in choices]))
    return value


def check_int(field: str, value: Any, low: int | None = None, high: int | None = None, *,
              optional: bool = False) -> Any:
    """``ConfigError("field: ...")`` unless ``value`` is an integer in ``[low, high]`` (either
    bound None: open), or None when ``optional``."""
    if optional and value is None:
        return value
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and (
        low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bound = (f"in [{low}, {high}]" if low is not None and high is not None else
                 f">= {low}" if low is not None else f"<= {high}" if high is not None else "")
        hint = " (or omitted for the default)" if optional else ""
        raise ConfigError(f"{field}: must be an integer {bound}{hint}, got {value!r}".replace(
            "integer  ", "integer "))
    return value


def check_number(field: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False,
                 optional: bool = False) -> Any:
    """``ConfigError("field: ...")`` unless ``value`` is a finite number within the bounds
    (``low_open``/``high_open``: the bound itself excluded), or None when ``optional``."""
    if optional and value is None:
        return value
    ok = _is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high}")
        hint = " (or omitted for the default)" if optional else ""
        raise ConfigError(f"{field}: must be a finite number {' and '.join(parts)}{hint}, got "
                          f"{value!r}".replace("number  ", "number "))
    return value


def check_bool(field: str, value: Any) -> Any:
    """``ConfigError("field: ...")`` unless ``value`` is true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{field}: must be true or false, got {value!r}")
    return value


def check_seed(field: str, value: Any) -> Any:
    """A seed numpy and torch accept: an integer in [0, 2**63 - 1]."""
    return check_int(field, value, 0, 2**63 - 1)


# ----------------------------------------------------------------------------- targets


def check_target_range(target: torch.Tensor, n_classes: int,
                       ids: Sequence[str] | None = None, *,
                       error: type[HarnessError] = DataError) -> None:
    """Refuse a class index outside ``[0, n_classes)``, naming the image (its id, else its
    position) and the model's number of classes: the one target check every method and metric
    uses."""
    bad = (target < 0) | (target >= n_classes)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        name = str(ids[index]) if ids is not None else f"#{index}"
        raise error(f"target {int(target[index])} of image {name} is out of range: the model "
                    f"has {n_classes} classes (0..{n_classes - 1})")
