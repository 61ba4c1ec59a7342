"""Plain-dict registries filled by decorators at import time.

Each family (models, datasets, methods, metrics) owns one module-level ``dict`` mapping a name to
an entry. ``register`` refuses duplicates, ``lookup`` names the valid choices on a miss, ``names``
lists them (optionally filtered with an fnmatch pattern, as timm's ``list_models`` does).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A registry lookup for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the message as written
        return str(self.args[0])


def register(table: dict[str, T], kind: str, name: str) -> Callable[[T], T]:
    """Decorator adding ``entry`` to ``table`` under ``name``; a duplicate name is an error."""

    def add(entry: T) -> T:
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = entry
        return entry

    return add


def lookup(table: dict[str, T], kind: str, name: str) -> T:
    """``table[name]``, or an ``UnknownNameError`` naming the valid choices (and a near match)."""
    try:
        return table[name]
    except (KeyError, TypeError):
        pass
    close = difflib.get_close_matches(str(name), list(table), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownNameError(
        f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(sorted(table))}"
    )


def names(table: dict[str, object], pattern: str = "*") -> list[str]:
    """Sorted names in ``table`` matching the fnmatch ``pattern``."""
    return sorted(n for n in table if fnmatch.fnmatchcase(n, pattern))
