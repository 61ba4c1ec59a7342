"""One registry type for the four kinds of plug-in: models, datasets, methods and metrics.

A ``Registry`` is a read-only mapping from a name to an entry, filled at import by its
``register`` decorator (as timm's and torchvision's registries are). ``get(name)`` resolves, in
order: a registered name; an installed entry point of the kind's group (``harness.models``,
``harness.datasets``, ``harness.methods``, ``harness.metrics``), loaded on first use; a dynamic
name the kind understands (``captum:<Class>``, ``package.module:function`` for methods). A miss
is an ``UnknownNameError`` with a near match and the valid names. ``list(pattern)`` filters with
fnmatch and includes installed entry points without loading them.

``import_plugins`` imports a user's modules (dotted names or ``.py`` files) before a config is
validated, from the config's folder and the working folder; what they register is then usable
everywhere (configs, the CLI, tables, MLflow), with no edit of the package.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Generic, TypeVar

from harness.errors import ConfigError, MissingDependencyError, PluginError, UnknownNameError

T = TypeVar("T")


LISTED = 40  # at most this many valid names in a message


def listed(names: Sequence[str]) -> str:
    """``a, b, c`` (the first ``LISTED`` names, then how many there are in all)."""
    names = list(names)
    if len(names) <= LISTED:
        return ", ".join(names)
    return ", ".join(names[:LISTED]) + f", ... ({len(names)} in all)"


def did_you_mean(name: object, choices: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices`` (empty when none is close)."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (see the module docstring).

    Args:
        kind: the singular noun used in messages (``"metric"``).
        group: the entry-point group of installed plug-ins (``"harness.metrics"``).
        adopt: ``(name, loaded object, origin) -> entry`` for an entry point whose loading did
            not register ``name`` itself (e.g. a bare method function); None: such an entry
            point is an error.
        resolve: ``name -> entry or None`` for dynamic names (tried after entry points).
        hint: appended to the unknown-name message (the dynamic forms the kind accepts).
    """

    def __init__(self, kind: str, group: str, *,
                 adopt: Callable[[str, object, str], T] | None = None,
                 resolve: Callable[[str], T | None] | None = None, hint: str = ""):
        self.kind, self.group = kind, group
        self.adopt, self.resolve, self.hint = adopt, resolve, hint
        self._entries: dict[str, T] = {}
        self._dynamic: dict[str, T] = {}

    # ------------------------------------------------------------------ the mapping

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    # ------------------------------------------------------------------ filling

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name registered twice is a ``ConfigError``."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if name in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` adds the decorated object as is."""

        def add(entry: T) -> T:
            return self.add(name, entry)

        return add

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests and interactive use that re-register a plug-in)."""
        self._entries.pop(name, None)
        self._dynamic.pop(name, None)

    # ------------------------------------------------------------------ lookup

    def entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        """The installed entry points of this kind's group, by name."""
        return {ep.name: ep for ep in importlib.metadata.entry_points(group=self.group)}

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching the fnmatch ``pattern``: registered names and installed entry
        points (not loaded)."""
        every = set(self._entries) | set(self.entry_points())
        return sorted(name for name in every if fnmatch.fnmatchcase(name, pattern))

    def get(self, name: str) -> T:
        """The entry called ``name`` (registered, an entry point, or a dynamic name).

        Raises:
            UnknownNameError: nothing of that name; the message lists the valid names.
            PluginError: an entry point that does not load or registers nothing usable.
        """
        if not isinstance(name, str):
            raise UnknownNameError(f"{self.kind} names are strings, got {name!r}; valid "
                                   f"{self.kind}s: {listed(self.list())}")
        if name in self._entries:
            return self._entries[name]
        if name in self._dynamic:
            return self._dynamic[name]
        entry = self._load_entry_point(name)
        if entry is None and self.resolve is not None:
            entry = self.resolve(name)
            if entry is not None:
                self._dynamic[name] = entry
        if entry is None:
            names = self.list()
            raise UnknownNameError(f"unknown {self.kind} {name!r}.{did_you_mean(name, names)} "
                                   f"Valid {self.kind}s: {listed(names)}{self.hint}")
        return entry

    def _load_entry_point(self, name: str) -> T | None:
        entry_point = self.entry_points().get(name)
        if entry_point is None:
            return None
        dist = getattr(entry_point, "dist", None)
        origin = (f"entry point {name} = {entry_point.value} of group {self.group!r}"
                  + (f" (distribution {dist.name})" if dist is not None else ""))
        try:
            loaded = entry_point.load()
        except Exception as error:  # noqa: BLE001 - any failure while importing user code
            raise PluginError(f"{origin} does not load: {type(error).__name__}: "
                              f"{error}") from None
        if name in self._entries:  # loading it registered the name (a decorated function)
            return self._entries[name]
        if self.adopt is None:
            raise PluginError(f"{origin} loaded {loaded!r} but registered no {self.kind} named "
                              f"{name!r}: register it with the {self.kind}s' decorator under "
                              "that name")
        entry = self.adopt(name, loaded, origin)
        self._dynamic[name] = entry
        return entry


# ----------------------------------------------------------------------------- user modules


def plugin_folders(config_path: str | os.PathLike | None = None) -> list[Path]:
    """Where a plug-in named in a config is looked for: the config's folder, then the working
    folder (each once)."""
    folders = [] if config_path is None else [Path(config_path).resolve().parent]
    folders.append(Path.cwd().resolve())
    return list(dict.fromkeys(folders))


def import_plugin(spec: str, folders: Sequence[str | os.PathLike]) -> ModuleType:
    """Import the user module ``spec``: a dotted module name (``mymetric``, ``pkg.saliency``)
    looked for on ``sys.path`` and in ``folders``, or a ``.py`` file (absolute, or relative to
    the first of ``folders`` that holds it). Importing it runs its ``register_*`` decorators.

    Raises:
        PluginError: the module is not found or fails while importing; the message names the
            folders searched and how to fix it.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"plugins: expected a module name or a .py file, got {spec!r}")
    folders = [Path(folder) for folder in folders]
    for folder in folders:  # importable for dotted names and for `package.module:function`
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    searched = ", ".join(str(folder) for folder in folders) or "(none)"
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        return _import_file(spec, folders, searched)
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as error:
        if error.name and spec.split(".")[0] == error.name.split(".")[0]:
            raise PluginError(
                f"plug-in {spec!r}: no module {error.name!r} on sys.path nor in the folders "
                f"searched ({searched}). Put {spec.split('.')[0]}.py (or the package) in one of "
                f"those folders, name the file (plugins: [path/to/{spec.split('.')[-1]}.py]), or "
                "install it (pip install -e .)") from None
        raise _failed(spec, error) from None
    except Exception as error:  # noqa: BLE001 - any failure inside the user's module
        raise _failed(spec, error) from None


def _import_file(spec: str, folders: list[Path], searched: str) -> ModuleType:
    path = Path(spec).expanduser()
    candidates = [path] if path.is_absolute() else [folder / path for folder in folders]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise PluginError(f"plug-in file {spec!r} not found (looked in {searched}); give a "
                          "path relative to the config's folder or the working folder")
    found = found.resolve()
    name = found.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if getattr(existing, "__file__", None) and Path(existing.__file__).resolve() == found:
            return existing
        raise PluginError(f"plug-in file {str(found)!r}: a module named {name!r} is already "
                          f"imported from {getattr(existing, '__file__', 'elsewhere')}; rename "
                          "the file")
    module_spec = importlib.util.spec_from_file_location(name, found)
    if module_spec is None or module_spec.loader is None:
        raise PluginError(f"plug-in file {str(found)!r} cannot be imported as a module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - any failure inside the user's module
        sys.modules.pop(name, None)
        raise _failed(str(found), error) from None
    return module


def _failed(spec: str, error: BaseException) -> PluginError:
    return PluginError(f"plug-in {spec!r} failed while importing: {type(error).__name__}: "
                       f"{error}")


def import_plugins(specs: Sequence[str], folders: Sequence[str | os.PathLike]
                   ) -> list[ModuleType]:
    """``import_plugin`` for each of ``specs``, in order."""
    return [import_plugin(spec, folders) for spec in specs]


def lookup(table: Mapping[str, T], kind: str, name: object) -> T:
    """``table[name]`` for a small table of choices (reductions, substrates, sample images), or
    an ``UnknownNameError`` with a near match and the valid names."""
    if isinstance(name, str) and name in table:
        return table[name]
    raise UnknownNameError(f"unknown {kind} {name!r}.{did_you_mean(name, list(table))} Valid "
                           f"{kind}s: {listed(sorted(table))}")


def require(module: str, extra: str, what: str, *, package: str | None = None) -> ModuleType:
    """Import optional ``module`` or raise ``MissingDependencyError`` naming the pip ``extra``
    (and the PyPI ``package``, default the module's top-level name)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = package or module.split(".")[0]
        raise MissingDependencyError(
            f"{what} needs the optional dependency {package!r}, which is not installed "
            f"({error}): pip install -e '.[{extra}]' (or pip install {package})") from None
