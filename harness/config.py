"""Experiment configs: YAML -> typed, validated, frozen dataclasses, before any compute.

An unknown key, an unknown registry name or a wrong type is an error naming the key path (for
example ``methods[1].params.n``) and the valid choices. ``--set path.to.key=value`` overrides are
applied to the raw YAML before validation (list items by index: ``methods.1.params.n=10``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.registry import UnknownNameError
from harness.stats import CI_METHODS


class ConfigError(ValueError):
    """A config that cannot run; the message names the key path."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "efficientnet_lite0"
    weights: str = "default"
    checkpoint: str | None = None


@dataclass(frozen=True)
class DataConfig:
    name: str = "samples"
    limit: int | None = None
    seed: int | None = None
    options: dict = field(default_factory=dict)
    workers: int = 0  # DataLoader processes decoding the next batches (0: the main process)


@dataclass(frozen=True)
class MethodConfig:
    name: str
    method: str | None = None
    params: dict = field(default_factory=dict)

    @property
    def registry_name(self) -> str:
        return self.method or self.name


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str | None = None  # None: MLFLOW_EXPERIMENT_NAME, else harness
    update_seconds: float = 60.0  # live metrics at most this often


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    methods: tuple[MethodConfig, ...]
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    metrics: dict = field(default_factory=dict)  # metric name -> its registry settings
    target: str = "predicted"
    reference: str | None = None
    ci_method: str = "bca"  # bootstrap CI of the tables: bca | percentile (harness.stats)
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:N | mps | auto (cuda:LOCAL_RANK where CUDA exists)
    batch_size: int = 8  # images per work unit
    method_batch_size: int | None = None  # images per method call (default: batch_size)
    figure_images: int = 6
    output_dir: str = "outputs/experiment"
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def hash(self) -> str:
        """SHA-256 of the canonical JSON of everything that affects the per-image records (not
        tracking, the output folder, the figures or the tables' CI method, which the resolved
        config also records)."""
        content = self.to_dict()
        for key in ("tracking", "output_dir", "figure_images", "ci_method"):
            content.pop(key)
        content["data"].pop("workers")  # how images are decoded changes no number
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------- generic checking


def _type_ok(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _type_name(annotation) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def build(cls, raw, path: str):
    """Instantiate dataclass ``cls`` from mapping ``raw``: unknown keys, missing required keys and
    wrong types are ``ConfigError``s naming ``path.key``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {_join(path, unknown[0])!r}; valid keys at "
                          f"{path or 'top level'}: {', '.join(fields)}")
    values = {}
    for name, spec in fields.items():
        key = _join(path, name)
        if name not in raw:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required key {key!r}")
            continue
        value = raw[name]
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = build(annotation, value, key)
            continue
        if not _type_ok(value, annotation):
            raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}")
        values[name] = value
    return cls(**values)


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


# ----------------------------------------------------------------------------- the experiment


def _check_choice(value: str, choices, key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of: {', '.join(choices)}")


def _method_param_names(method_name: str) -> set[str] | None:
    from harness.methods import get_method

    method = get_method(method_name)
    signature = inspect.signature(method.attribution or method.fn)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    names = {p for p in list(signature.parameters)[3:]}
    if method.attribution is not None:
        names.add("reduce")
    return names


def _check_param_types(method_name: str, params: dict, path: str) -> None:
    """Each parameter against the annotation of the method's function (``n: int`` refuses
    ``"20"``), so a wrong type is named before any compute, not raised mid-run."""
    from harness.methods import get_method

    method = get_method(method_name)
    functions = [f for f in (method.fn, method.attribution) if f is not None]
    for function in functions:
        try:
            hints = typing.get_type_hints(function)
        except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check
            continue
        for name, value in params.items():
            if name in hints and not _type_ok(value, hints[name]):
                raise ConfigError(f"{path}.{name}: expected {_type_name(hints[name])}, got "
                                  f"{value!r}")


def check_signature_options(fn, options: dict, path: str, what: str,
                            skip: tuple[str, ...] = ()) -> None:
    """``options`` against the keyword parameters of ``fn``: an unknown key, a missing required
    one or a value of the wrong type (by annotation) is a ``ConfigError`` naming ``path.key``."""
    signature = inspect.signature(fn)
    parameters = {name: p for name, p in signature.parameters.items()
                  if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in skip}
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    for name in options:
        if name not in parameters:
            raise ConfigError(f"{path}.{name}: not an option of {what}; valid: "
                              f"{', '.join(parameters) or '(none)'}")
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and name not in options:
            raise ConfigError(f"{path}.{name}: required by {what}")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check
        hints = {}
    for name, value in options.items():
        if name in hints and not _type_ok(value, hints[name]):
            raise ConfigError(f"{path}.{name}: expected {_type_name(hints[name])}, got {value!r}")


DEVICE_TYPES = ("cpu", "cuda", "cuda:N", "mps", "auto")


def check_device(device: str, key: str = "device") -> None:
    """A device string torch knows and this machine has: ``cpu``, ``cuda`` / ``cuda:N`` (with
    CUDA and that many GPUs), ``mps``."""
    import torch

    if device == "auto":  # cuda:LOCAL_RANK where CUDA exists, else the CPU (harness.distributed)
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}: {device!r} is not a device; valid: "
                          f"{', '.join(DEVICE_TYPES)}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {device!r} but CUDA is not available on this machine "
                              "(use device: cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {device!r} but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{key}: 'mps' is not available on this machine (use device: cpu)")
    elif parsed.type != "cpu":
        raise ConfigError(f"{key}: {device!r} is not supported; valid: "
                          f"{', '.join(DEVICE_TYPES)}")


def _default_base(method_name: str) -> str | None:
    """The default ``base`` of a wrapper method (``smoothgrad``: ``vanilla``), else None."""
    from harness.methods import get_method

    parameter = inspect.signature(get_method(method_name).fn).parameters.get("base")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def _resolve_method(name, key: str):
    """The registry entry of method ``name`` (registered, adapter or plug-in), or a ConfigError
    naming ``key``: an unknown name, a missing optional library, a plug-in that does not import."""
    from harness.methods import MissingDependencyError, get_method, list_methods, list_plugins

    try:
        return get_method(name)
    except UnknownNameError as error:
        if isinstance(name, str) and ":" in name:
            raise ConfigError(f"{key}: {error}") from None
        valid = ", ".join([*list_methods(), *list_plugins()])
        raise ConfigError(f"{key}: unknown method {name!r}; valid: {valid} (or captum:<Class>, "
                          "gradcam:<CAMClass>, package.module:function)") from None
    except (MissingDependencyError, ValueError) as error:  # PluginError is a ValueError
        raise ConfigError(f"{key}: {error}") from None


def _check_method_params(name: str, params, path: str) -> None:
    """Parameter names against the method's signature, then the method's own check."""
    entry = _resolve_method(name, path)
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping, got {params!r}")
    allowed = _method_param_names(name)
    for param in params:
        if allowed is not None and param not in allowed:
            raise ConfigError(f"{path}.{param}: not a parameter of {name!r}; valid: "
                              f"{', '.join(sorted(allowed))}")
    _check_param_types(name, params, path)
    if entry.check_params is not None:
        try:
            entry.check_params(params)
        except ValueError as error:
            raise ConfigError(f"{path}.{error}") from None


def _validate_methods(raw_methods, path: str = "methods") -> tuple[MethodConfig, ...]:
    if not isinstance(raw_methods, list) or not raw_methods:
        raise ConfigError(f"{path}: expected a non-empty list of methods")
    methods = []
    for index, raw in enumerate(raw_methods):
        key = f"{path}[{index}]"
        if isinstance(raw, str):
            raw = {"name": raw}
        method = build(MethodConfig, raw, key)
        field_name = "method" if method.method else "name"
        _resolve_method(method.registry_name, f"{key}.{field_name}")
        _check_method_params(method.registry_name, method.params, f"{key}.params")
        base = method.params.get("base", _default_base(method.registry_name))
        if base is not None:
            _resolve_method(base, f"{key}.params.base")
            _check_method_params(base, method.params.get("base_params") or {},
                                 f"{key}.params.base_params")
        methods.append(method)
    names = [m.name for m in methods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: display name {duplicates[0]!r} is used twice; give each "
                          "entry its own name (and the registry name under 'method')")
    return tuple(methods)


def _validate_metrics(raw_metrics) -> dict:
    """Each metric's settings through its registry entry: unknown metric names and keys, types
    and the settings' own range checks, named by key path."""
    from harness.metrics.registry import METRICS, check_settings

    if raw_metrics is None:
        return {}
    if not isinstance(raw_metrics, dict):
        raise ConfigError("metrics: expected a mapping of metric name -> settings")
    metrics = {}
    for name, raw in raw_metrics.items():
        key = f"metrics.{name}"
        _check_choice(name, tuple(METRICS), "metrics")
        settings = build(METRICS[name].settings, raw, key)
        try:
            check_settings(settings)
        except ValueError as error:
            raise ConfigError(f"{key}.{error}") from None
        substrate = getattr(settings, "substrate", None)
        if isinstance(substrate, dict):
            from harness.metrics.substrates import SUBSTRATES

            params = {k: v for k, v in substrate.items() if k != "name"}
            check_signature_options(SUBSTRATES[substrate["name"]], params, f"{key}.substrate",
                                    f"substrate {substrate['name']!r}", skip=("x",))
        metrics[name] = settings
    return metrics


def from_dict(raw: dict) -> ExperimentConfig:
    """Validate a raw config mapping (see ``load_config``)."""
    from harness.data import list_datasets
    from harness.models import list_models

    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping at the top level")
    raw = dict(raw)
    methods = _validate_methods(raw.pop("methods", None))
    metrics = _validate_metrics(raw.pop("metrics", None))
    if "meta" in raw:  # read by `harness meta` (harness.meta); checked here, unused by runs
        from harness.meta.settings import meta_settings

        meta_settings(raw.pop("meta"), metrics, [m.name for m in methods])
    raw.setdefault("name", "experiment")
    config = build(ExperimentConfig, {**raw, "methods": [], "metrics": {}}, "")
    config = dataclasses.replace(config, methods=methods, metrics=metrics)
    if config.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {config.model.name!r}; see "
                          "`harness list models` (e.g. efficientnet_lite0, squeezenet1_1)")
    _check_choice(config.data.name, tuple(list_datasets()), "data.name")
    from harness.data import DATASETS

    check_signature_options(DATASETS[config.data.name], config.data.options, "data.options",
                            f"dataset {config.data.name!r}")
    from harness.data import MASKED_DATASETS, has_masks
    from harness.metrics.registry import METRICS

    for name in metrics:
        if "masks" in METRICS[name].needs and not has_masks(config.data.name,
                                                             config.data.options):
            with_masks = ", ".join(sorted(MASKED_DATASETS)) or "none registered"
            raise ConfigError(f"metrics.{name}: needs ground-truth masks, which dataset "
                              f"{config.data.name!r} with these options does not give; datasets "
                              f"with masks: {with_masks}")
    if config.data.limit is not None and config.data.limit < 1:
        raise ConfigError(f"data.limit: must be >= 1 (or omitted for every image), got "
                          f"{config.data.limit}")
    if config.data.workers < 0:
        raise ConfigError(f"data.workers: must be >= 0, got {config.data.workers}")
    if config.method_batch_size is not None and config.method_batch_size < 1:
        raise ConfigError(f"method_batch_size: must be >= 1 (or omitted for batch_size), got "
                          f"{config.method_batch_size}")
    if config.figure_images < 0:
        raise ConfigError(f"figure_images: must be >= 0, got {config.figure_images}")
    check_device(config.device)
    _check_choice(config.target, ("label", "predicted"), "target")
    _check_choice(config.ci_method, CI_METHODS, "ci_method")
    names = [m.name for m in methods]
    if not metrics:
        raise ConfigError("metrics: name at least one metric (see `harness list metrics`)")
    for metric, settings in metrics.items():
        chosen = getattr(settings, "methods", None)
        if chosen is not None and not chosen:
            raise ConfigError(f"metrics.{metric}.methods: an empty list runs the metric for no "
                              "method; omit the key for every method")
        for name in chosen or []:
            _check_choice(name, tuple(names), f"metrics.{metric}.methods")
    for key, value in (("seed", config.seed), ("data.seed", config.data.seed)):
        if value is not None and value < 0:
            raise ConfigError(f"{key}: must be >= 0 (numpy's generators refuse negative seeds), "
                              f"got {value}")
    if config.reference is not None and config.reference not in names:
        raise ConfigError(f"reference: {config.reference!r} is not one of the methods: "
                          f"{', '.join(names)}")
    if config.batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {config.batch_size}")
    return config


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``path.to.key=value`` overrides (YAML-parsed values) to a raw config mapping."""
    raw = json.loads(json.dumps(raw))  # deep copy
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set {item!r}: expected path.to.key=value")
        parts = path.split(".")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problem = str(error).splitlines()[0]
            raise ConfigError(f"--set {path}: the value {text!r} is not valid YAML "
                              f"({problem}); quote strings, e.g. {path}='\"...\"'") from None
        node = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_index(part, node, parts[: depth + 1])]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                break
            if not isinstance(node, dict | list):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {path}: {where} is {node!r}, not a mapping or list; "
                                  f"set {where} itself (e.g. {where}={{name: {node}, ...}})")
        last = parts[-1]
        if isinstance(node, list):
            node[_index(last, node, parts)] = value
        else:
            node[last] = value
    return raw


def _index(part: str, node: list, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {'.'.join(parts)}: {part!r} is not an index of a list of "
                          f"{len(node)}")
    return int(part)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment YAML file (no model or data is loaded)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    try:
        return from_dict(apply_overrides(raw, overrides or []))
    except UnknownNameError as error:
        raise ConfigError(str(error)) from None
