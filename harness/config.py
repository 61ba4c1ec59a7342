"""Experiment configs: YAML -> typed, validated, frozen dataclasses, before any compute.

An unknown key, an unknown registry name or a wrong type is a ``ConfigError`` naming the key path
(for example ``methods[1].params.n``), a near match and the valid choices; every method's and
metric's settings go through the one validation path of ``harness.settings``. ``plugins:`` (and
``--plugin``) import the user's modules first, from the config's folder and the working folder,
so what they register is valid here. ``--set path.to.key=value`` overrides are applied to the raw
YAML before validation (list items by index, ``methods.1.params.n=10``, or methods by display
name, ``methods.smoothgrad.params.n=10``); ``--smoke`` shrinks any config to a one-minute try.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

import harness.sanity  # noqa: F401  (registers the sanity checks as metrics)
from harness.datasets import DATASETS, MASKED_DATASETS, has_masks
from harness.errors import ConfigError, HarnessError
from harness.files import check_file_name, file_name
from harness.meta.settings import meta_settings
from harness.methods import get_method
from harness.metrics.registry import get_metric
from harness.metrics.substrates import SUBSTRATES
from harness.models import get_model_builder
from harness.registry import did_you_mean, import_plugins, plugin_folders
from harness.settings import build, check, check_choice, type_name, type_ok
from harness.stats import CI_METHODS


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
    """A method entry: its display ``name`` (tables, MLflow, file names), the registry ``method``
    (default: the display name) and its ``params``."""

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
class AgreementConfig:
    """Agreement between every pair of methods (``harness.agreement``, Krishna et al. 2022) on
    the figure images; off unless ``top_k`` is set: pixels (an integer) or a fraction of them."""

    top_k: int | float | None = None

    def check(self) -> None:
        top_k = self.top_k
        if top_k is not None and ((isinstance(top_k, int) and top_k < 1) or (
                isinstance(top_k, float) and not 0 < top_k <= 1)):
            raise ConfigError(f"top_k: pixels (an integer >= 1) or a fraction in (0, 1], got "
                              f"{top_k!r}")


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
    plugins: tuple[str, ...] = ()  # user modules (names or .py files) imported before validation
    smoke: bool = False  # a smoke run: 2 images, coarse steps, few samples (``--smoke``)
    agreement: AgreementConfig = field(default_factory=AgreementConfig)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def hash(self) -> str:
        """SHA-256 of the canonical JSON of everything that affects the per-image records (not
        tracking, the output folder, the figures or the tables' CI method, which the resolved
        config also records)."""
        content = self.to_dict()
        for key in ("tracking", "output_dir", "figure_images", "ci_method", "agreement"):
            content.pop(key)
        for key, empty in (("plugins", []), ("smoke", False)):  # as before these keys existed
            if content[key] == empty:
                content.pop(key)
        content["data"].pop("workers")  # how images are decoded changes no number
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------- checks


def check_signature_options(fn, options: dict, path: str, what: str,
                            skip: tuple[str, ...] = ()) -> None:
    """``options`` against the keyword parameters of ``fn`` (a dataset builder, a substrate): an
    unknown key (with a near match), a missing required one or a value of the wrong type (by
    annotation) is a ``ConfigError`` naming ``path.key``."""
    signature = inspect.signature(fn)
    parameters = {name: p for name, p in signature.parameters.items()
                  if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in skip}
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {options!r}")
    for name in options:
        if name not in parameters:
            raise ConfigError(f"{path}.{name}: not an option of {what}."
                              f"{did_you_mean(name, list(parameters))} Valid: "
                              f"{', '.join(parameters) or '(none)'}")
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and name not in options:
            raise ConfigError(f"{path}.{name}: required by {what}")
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check
        hints = {}
    for name, value in options.items():
        if name in hints and not type_ok(value, hints[name]):
            raise ConfigError(f"{path}.{name}: expected {type_name(hints[name])}, got {value!r}")


DEVICE_TYPES = ("cpu", "cuda", "cuda:N", "mps", "auto")


def check_device(device: str, key: str = "device") -> None:
    """A device string torch knows and this machine has: ``cpu``, ``cuda`` / ``cuda:N`` (with
    CUDA and that many GPUs), ``mps``."""
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


def _method_entry(name, key: str):
    """The registry entry of method ``name`` (registered, adapter or plug-in), or a ConfigError
    naming ``key``: an unknown name, a missing optional library, a plug-in that does not import."""
    try:
        return get_method(name)
    except HarnessError as error:
        raise ConfigError(f"{key}: {error}") from None


def validate_method(name: str, params, path: str) -> None:
    """Method ``name`` exists and ``params`` pass its settings (names, types, ranges), named by
    ``path`` (e.g. ``methods[1].params``)."""
    entry = _method_entry(name, path.rsplit(".", 1)[0] + ".method")
    entry.validate(params, path)


def _validate_methods(raw_methods, path: str = "methods") -> tuple[MethodConfig, ...]:
    if not isinstance(raw_methods, list) or not raw_methods:
        raise ConfigError(f"{path}: expected a non-empty list of methods")
    methods = []
    for index, raw in enumerate(raw_methods):
        key = f"{path}[{index}]"
        if isinstance(raw, str):
            raw = {"name": raw}
        method = build(MethodConfig, raw, key)
        if not isinstance(method.name, str) or not method.name:
            raise ConfigError(f"{key}.name: expected a non-empty string, got {method.name!r}")
        check_file_name(method.name, f"{key}.name")
        field_name = "method" if method.method else "name"
        entry = _method_entry(method.registry_name, f"{key}.{field_name}")
        entry.validate(method.params, f"{key}.params")
        methods.append(method)
    names = [m.name for m in methods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: display name {duplicates[0]!r} is used twice; give each "
                          "entry its own name (and the registry name under 'method')")
    folded = [file_name(n).casefold() for n in names]
    clash = sorted({n for n in names if folded.count(file_name(n).casefold()) > 1})
    if clash:
        raise ConfigError(f"{path}: display names {', '.join(map(repr, clash))} give the same "
                          "file name (':' becomes '_', and case-insensitive disks ignore case); "
                          "rename one")
    return tuple(methods)


def validate_metrics(raw_metrics) -> dict:
    """Each metric's settings through its registry entry: unknown metric names and keys (with a
    near match), types and the settings' own range checks, named by key path."""
    if raw_metrics is None:
        return {}
    if not isinstance(raw_metrics, dict):
        raise ConfigError("metrics: expected a mapping of metric name -> settings")
    metrics = {}
    for name, raw in raw_metrics.items():
        key = f"metrics.{name}"
        try:
            entry = get_metric(name)
        except HarnessError as error:
            raise ConfigError(f"metrics: {error}") from None
        settings = check(build(entry.settings, raw, key), key)
        substrate = getattr(settings, "substrate", None)
        if isinstance(substrate, dict):
            params = {k: v for k, v in substrate.items() if k != "name"}
            check_signature_options(SUBSTRATES[substrate["name"]], params, f"{key}.substrate",
                                    f"substrate {substrate['name']!r}", skip=("x",))
        metrics[name] = settings
    return metrics


def from_dict(raw: dict, *, config_path: str | Path | None = None) -> ExperimentConfig:
    """Validate a raw config mapping (see ``load_config``); ``config_path`` is where it was read
    from (its folder is searched for ``plugins``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got "
                          f"{type(raw).__name__} {raw!r}")
    raw = dict(raw)
    plugins = raw.get("plugins") or []
    if not isinstance(plugins, list | tuple) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"plugins: expected a list of module names or .py files, got "
                          f"{plugins!r}")
    import_plugins(plugins, plugin_folders(config_path))
    methods = _validate_methods(raw.pop("methods", None))
    metrics = validate_metrics(raw.pop("metrics", None))
    if "meta" in raw:  # read by `harness meta` (harness.meta); checked here, unused by runs
        meta_settings(raw.pop("meta"), metrics, [m.name for m in methods])
    raw.setdefault("name", "experiment")
    config = build(ExperimentConfig, {**raw, "methods": [], "metrics": {},
                                      "plugins": list(plugins)}, "")
    config = dataclasses.replace(config, methods=methods, metrics=metrics,
                                 plugins=tuple(plugins))
    if not isinstance(config.name, str) or not config.name:
        raise ConfigError(f"name: expected a non-empty string, got {config.name!r}")
    try:
        get_model_builder(config.model.name)
    except HarnessError as error:
        raise ConfigError(f"model.name: {error}") from None
    check_choice("data.name", config.data.name, DATASETS.list())
    check_signature_options(DATASETS.get(config.data.name), config.data.options, "data.options",
                            f"dataset {config.data.name!r}")
    for name in metrics:
        if "masks" in get_metric(name).needs and not has_masks(config.data.name,
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
    if not math.isfinite(config.tracking.update_seconds) or config.tracking.update_seconds < 0:
        raise ConfigError(f"tracking.update_seconds: must be a finite number >= 0, got "
                          f"{config.tracking.update_seconds}")
    if config.agreement.top_k is not None:
        check(config.agreement, "agreement")
        if len(methods) < 2 or config.figure_images < 1:
            raise ConfigError("agreement.top_k: agreement compares the maps of two or more "
                              "methods on the figure images; this config has "
                              f"{len(methods)} method(s) and figure_images "
                              f"{config.figure_images}")
    check_device(config.device)
    check_choice("target", config.target, ("label", "predicted"))
    check_choice("ci_method", config.ci_method, CI_METHODS)
    names = [m.name for m in methods]
    if not metrics:
        raise ConfigError("metrics: name at least one metric (see `harness list metrics`)")
    for metric, settings in metrics.items():
        chosen = getattr(settings, "methods", None)
        if chosen is not None and not chosen:
            raise ConfigError(f"metrics.{metric}.methods: an empty list runs the metric for no "
                              "method; omit the key for every method")
        for name in chosen or []:
            check_choice(f"metrics.{metric}.methods", name, names)
    for key, value in (("seed", config.seed), ("data.seed", config.data.seed)):
        if value is not None and not 0 <= value < 2**63:
            raise ConfigError(f"{key}: must be in [0, 2**63) (numpy and torch refuse other "
                              f"seeds), got {value}")
    if config.reference is not None:
        check_choice("reference", config.reference, names)
    if config.batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {config.batch_size}")
    return config


# ----------------------------------------------------------------------------- overrides


def _method_index(part: str, node: list, parts: list[str]) -> int:
    """A method addressed by display name (``methods.smoothgrad.params.n``)."""
    names = [item if isinstance(item, str) else item.get("name") if isinstance(item, dict)
             else None for item in node]
    if part in names:
        return names.index(part)
    raise ConfigError(f"--set {'.'.join(parts)}: no method named {part!r}."
                      f"{did_you_mean(part, [n for n in names if isinstance(n, str)])} Methods: "
                      f"{', '.join(str(n) for n in names)} (or an index 0..{len(node) - 1})")


def _index(part: str, node: list, parts: list[str], depth: int) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    if parts[:depth] == ["methods"] and not part.isdigit():
        return _method_index(part, node, parts)
    raise ConfigError(f"--set {'.'.join(parts)}: {part!r} is not an index of a list of "
                      f"{len(node)}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``path.to.key=value`` overrides (YAML-parsed values) to a raw config mapping (not
    modified: a copy is returned)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level to apply --set to, got "
                          f"{type(raw).__name__} {raw!r}")
    raw = json.loads(json.dumps(raw, default=str))  # deep copy (YAML dates become text)
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
                index = _index(part, node, parts, depth)
                if isinstance(node[index], str) and parts[:depth] == ["methods"]:
                    node[index] = {"name": node[index]}  # a method given by name alone
                node = node[index]
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
            node[_index(last, node, parts, len(parts) - 1)] = value
        else:
            node[last] = value
    return raw


# ----------------------------------------------------------------------------- smoke runs

SMOKE_IMAGES = 2
# method parameters and their smoke values (only lowered, only where the method has them)
SMOKE_METHOD = {"n": 4, "n_masks": 256, "n_steps": 8, "n_samples": 8}
# metric settings and their smoke values (only lowered; ``step`` only raised: fewer steps)
SMOKE_METRIC = {"n_samples": 4, "n_subsets": 8, "n_perturbations": 4, "n_segments": 20}
SMOKE_STEP = 224 * 28  # 8 deletion steps on a 224 x 224 input (clamped to smaller inputs)


def _shrink(params: dict, table: dict) -> dict:
    out = dict(params)
    for key, value in table.items():
        if isinstance(out.get(key), int) and not isinstance(out[key], bool):
            out[key] = min(out[key], value)
    return out


def smoke(raw: dict) -> dict:
    """A raw config shrunk for a one-minute try (``--smoke``): 2 images, 2 figure images, fewer
    noise samples, masks, path steps and perturbations, 8 deletion steps, 3 ROAD percentages;
    ``-smoke`` appended to the name and the output folder, so a real run's folder is never used.
    The shrunk values are set only where the method or metric has them (its settings), and only
    lowered."""
    raw = json.loads(json.dumps(raw, default=str))
    data = raw.setdefault("data", {}) or {}
    raw["data"] = data
    limit = data.get("limit")
    data["limit"] = SMOKE_IMAGES if not isinstance(limit, int) else min(limit, SMOKE_IMAGES)
    raw["figure_images"] = min(raw.get("figure_images", 6), SMOKE_IMAGES)
    raw["name"] = f"{raw.get('name', 'experiment')}-smoke"
    raw["output_dir"] = f"{raw.get('output_dir', 'outputs/experiment')}-smoke"
    raw["smoke"] = True
    methods = []
    for item in raw.get("methods") or []:
        if isinstance(item, dict):
            item = {**item, "params": _shrink(item.get("params") or {}, SMOKE_METHOD)}
            base = item["params"].get("base_params")
            if isinstance(base, dict):
                item["params"]["base_params"] = _shrink(base, SMOKE_METHOD)
        methods.append(item)
    if methods:
        raw["methods"] = methods
    for name, settings in (raw.get("metrics") or {}).items():
        settings = dict(settings or {})
        try:
            fields = {f.name: f for f in dataclasses.fields(get_metric(name).settings)}
        except HarnessError:
            continue  # named by validation
        for key, value in SMOKE_METRIC.items():
            if key in fields:
                current = settings.get(key, fields[key].default)
                if isinstance(current, int) and not isinstance(current, bool):
                    settings[key] = min(current, value)
                elif current is None:
                    settings[key] = value
        if "step" in fields:
            settings["step"] = max(settings.get("step", fields["step"].default), SMOKE_STEP)
        if "percentages" in fields:
            given = list(settings.get("percentages", fields["percentages"].default))
            settings["percentages"] = sorted({given[0], given[len(given) // 2], given[-1]})
        raw["metrics"][name] = settings
    return raw


def load_config(path: str | Path | dict, overrides: list[str] | None = None, *,
                smoke_run: bool = False) -> ExperimentConfig:
    """Read, override and validate an experiment config (no model or data is loaded).

    Args:
        path: the YAML file, or a config as a mapping (plug-ins are then looked for in the
            working folder).
        overrides: ``path.to.key=value`` items (``--set``).
        smoke_run: shrink the config for a one-minute try (``smoke``).

    Returns:
        The validated ``ExperimentConfig``.

    Raises:
        ConfigError: a missing or invalid file, or a config that cannot run (the key path, a near
            match and the valid choices named); ``PluginError`` for a plug-in that fails.
    """
    if isinstance(path, dict):
        raw = apply_overrides(path, overrides or [])
        return from_dict(smoke(raw) if smoke_run else raw)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping of keys at the top "
                          f"level, got {type(raw).__name__} {raw!r}")
    raw = apply_overrides(raw, overrides or [])
    if smoke_run:
        raw = smoke(raw)
    return from_dict(raw, config_path=path)
