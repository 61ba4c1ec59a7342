"""What the method registry holds: ``Method`` entries, adapter ``Family``s, and how a method's
parameters are validated (one path for registered methods, adapters and plug-ins).

A method is a function ``(model, x, target, **params) -> Tensor[N, H, W]``; ``x`` is the model
input ``[N, C, H, W]``, ``target`` the class to explain per image ``[N]``. Its parameters are the
fields of its frozen ``settings`` dataclass (defaults = the paper's), checked by ``build`` (names
and types, from the annotations) and the settings' ``check()`` (ranges) before any compute, from a
config, the CLI or Python alike. Adapters, whose parameters are a library's, check them with their
own ``check_params``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from harness.errors import ConfigError
from harness.settings import accepts_any_keyword, checked, from_signature


class MapFn(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                 **params) -> torch.Tensor: ...


@dataclass(frozen=True)
class Method:
    """A registered saliency method.

    ``fn`` gives the (non-negative unless stated) map; ``signed`` the signed variant where one
    exists; ``attribution`` the raw ``[N, C, H, W]`` attribution for pixel-space methods; ``raw``
    (wrappers) the raw ``[N, C, H, W]`` statistic before the channel reduction, or None where the
    parameters give none (see ``raw_attribution``). ``settings``: the parameters' dataclass
    (None: ``check_params`` validates them, as for the adapters, whose parameters are a
    library's). ``origin``: where a plug-in came from (None for the harness's own).
    """

    name: str
    fn: MapFn
    citation: str
    summary: str
    signed: MapFn | None = None
    attribution: MapFn | None = None
    raw: MapFn | None = None
    settings: type | None = None
    # validates a ``params`` mapping before any compute (ConfigError "<param path>: <why>"), for
    # methods whose parameters are not a dataclass (the adapters)
    check_params: Callable[[dict], None] | None = None
    origin: str | None = None

    def validate(self, params: dict | None, path: str = "params") -> dict:
        """``params`` checked by the method's settings (names, types, ranges) or its
        ``check_params``; returns them unchanged.

        Raises:
            ConfigError: a parameter that is unknown (with a near match), of the wrong type or
                out of range, named ``path.<param>``.
        """
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: expected a mapping of parameters, got {params!r}")
        if self.check_params is not None:
            try:
                self.check_params(dict(params))
            except ConfigError as error:
                raise ConfigError(f"{path}.{error}") from None
            except ValueError as error:
                raise ConfigError(f"{path}.{error}") from None
        if self.settings is not None:
            checked(self.settings, params, path)
        return params


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


def summary_of(fn: Callable) -> str:
    """The first paragraph of ``fn``'s docstring on one line."""
    return " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())


def settings_for(name: str, fn: Callable, settings: type | None) -> type | None:
    """The settings dataclass of a method: ``settings`` when given, else one read off the keyword
    parameters of ``fn`` (None when ``fn`` takes ``**params``: its keys cannot be listed)."""
    if settings is not None:
        if not dataclasses.is_dataclass(settings):
            raise ConfigError(f"method {name!r}: settings must be a dataclass, got {settings!r}")
        return settings
    if accepts_any_keyword(fn):
        return None
    return from_signature(name.replace(":", "_").replace(".", "_"), fn)
