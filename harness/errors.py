"""The errors the harness raises on purpose, all under ``HarnessError``.

The command line prints a ``HarnessError`` as ``harness: error: <message>`` (exit 2); anything
else is a bug and shows its traceback (exit 1). Each error keeps a builtin second base where
callers rely on it (``ValueError`` for bad input, ``RuntimeError`` for a state of the world), so
``except ValueError`` around a harness call keeps working.

    HarnessError
    ├── ConfigError (ValueError)        a config, a setting or a name that cannot run
    │   ├── UnknownNameError            a registry miss; the message lists the choices
    │   └── PluginError                 a plug-in module or object that cannot be used
    ├── DataError (ValueError)          images, labels, boxes, maps files
    ├── ModelError (RuntimeError)       weights that cannot be found or do not fit
    ├── MethodError (ValueError)        a saliency method's input or output
    ├── MetricError (ValueError)        a metric's input, or a value it cannot define
    ├── RunFolderError (RuntimeError)   a run folder that is locked, damaged or not a run's
    ├── TrackingError (RuntimeError)    an MLflow store that cannot be used
    ├── DistributedError (RuntimeError) ranks that cannot join or agree
    └── MissingDependencyError (ImportError)  an optional library is not installed
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error the harness raises on purpose (a user's input or environment)."""


class ConfigError(HarnessError, ValueError):
    """A config, a setting or a name that cannot run; the message names the key path."""


class UnknownNameError(ConfigError):
    """A registry lookup for a name that is not registered; the message lists the valid names
    (and a near match)."""


class PluginError(ConfigError):
    """A plug-in (module, file or entry point) that cannot be used; the message says which, why
    and what to do."""


class DataError(HarnessError, ValueError):
    """Images, labels, ground truth or a maps file that cannot be used; the message names the
    file or image."""


class ModelError(HarnessError, RuntimeError):
    """A model that cannot be built: weights not found, not readable or not fitting."""


class MethodError(HarnessError, ValueError):
    """A saliency method's input or output that cannot be used (names the method or image)."""


class MetricError(HarnessError, ValueError):
    """A metric's input that cannot be used, or a value it cannot define."""


class RunFolderError(HarnessError, RuntimeError):
    """A run folder that is in use, damaged, or not a folder this harness may write or read."""


class TrackingError(HarnessError, RuntimeError):
    """An MLflow tracking store that cannot be reached or written."""


class DistributedError(HarnessError, RuntimeError):
    """A rank cannot join or coordinate the run; the message says what to change."""


class MissingDependencyError(HarnessError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


__all__ = [
    "ConfigError", "DataError", "DistributedError", "HarnessError", "MethodError", "MetricError",
    "MissingDependencyError", "ModelError", "PluginError", "RunFolderError", "TrackingError",
    "UnknownNameError",
]
