"""The metric registry: one entry per metric, read by config validation, the runner, the tables,
the figures and MLflow (nothing else keeps a list of metric names).

A metric is registered with ``@register_metric(name, settings=..., direction=..., citation=...,
needs=...)`` on a function ``(unit: Unit, settings) -> list[dict]`` returning per-image records:
``image_id``, ``value`` (the per-image number the paper reports; None where undefined, with a
``status`` saying why) and extra fields (a ``curve``, a ``measure`` naming a part of the metric,
...). The runner adds ``method``, ``metric``, ``target`` and ``target_source``.

- ``settings``: a frozen dataclass whose defaults are the paper's; an optional ``check()`` method
  raises ``ValueError("field: why")`` for values out of range (config errors name
  ``metrics.<name>.<field>``). A ``methods`` field (display names), where present, limits the
  methods the metric runs for.
- ``needs``: what the metric reads from the unit: ``maps`` (the method's maps, computed once per
  unit and shared), ``method`` (it calls the method again, on perturbed inputs or other models),
  ``masks`` (ground-truth masks from the dataset).
- ``columns``: the metric's records of one method (a ``pandas.DataFrame``, one row per record,
  curves left out) -> table cells, a frame with ``column``, ``direction``, ``image_id``,
  ``value``; by default one column named after the metric with the metric's direction.
- ``parts``: (settings, model) -> the ``(measure, block)`` identities each image gets (default one
  record per image: ``[(None, None)]``); the runner resumes by them.
- ``curves``: the metric's records of one method (a frame with a ``curve`` column) ->
  ``{name: (x [K], curves [n, K])}`` for the mean-curve figure and MLflow's step metrics
  (default: the ``curve`` column, x from ``curve_x`` or evenly spaced on [0, 1]).
- ``criterion``: what the metric evaluates, one of ``CRITERIA`` (Quantus' and LATEC's families;
  default ``faithfulness``); the reliability report's aggregate ranking averages ranks per
  criterion (``harness.reliability``).

Frames rather than lists of dicts, so that a paper-scale run (hundreds of thousands of records)
is summarised column-wise.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from harness.errors import ConfigError, MetricError, UnknownNameError
from harness.methods import NonFiniteMapError, get_method, saliency_batched
from harness.registry import Registry

NEEDS = frozenset({"maps", "method", "masks"})
DIRECTIONS = ("up", "down")
CRITERIA = ("faithfulness", "robustness", "localisation", "complexity", "randomisation")


@dataclass(frozen=True)
class Unit:
    """One work unit: an image batch and one method, with everything a metric may read.

    ``x`` ``[N, C, H, W]`` model input, ``target`` ``[N]`` the class explained, ``labels`` the
    dataset labels (None where absent), ``masks`` ``[N, H, W]`` bool ground truth (None without),
    ``method``/``method_params`` the registry method and its parameters, ``seed`` the experiment
    seed, ``batch_size`` images per method call. ``maps`` and ``signed_maps`` are computed on first
    use and shared by every metric of the unit; ``fixed_maps`` ``[N, H, W]``, where given, are
    the unit's maps instead of the method's (``harness.score_maps`` scores maps made elsewhere:
    no method is called and there are no signed maps)."""

    model: nn.Module
    x: torch.Tensor
    target: torch.Tensor
    ids: tuple[str, ...]
    method: str
    method_params: dict = field(default_factory=dict)
    labels: tuple[int | None, ...] | None = None
    masks: torch.Tensor | None = None
    seed: int = 0
    batch_size: int = 8
    fixed_maps: torch.Tensor | None = None

    @cached_property
    def maps(self) -> torch.Tensor:
        if self.fixed_maps is not None:
            return self.fixed_maps
        return self._maps(signed=False)

    @cached_property
    def signed_maps(self) -> torch.Tensor | None:
        if self.fixed_maps is not None or get_method(self.method).signed is None:
            return None
        return self._maps(signed=True)

    def _maps(self, *, signed: bool) -> torch.Tensor:
        """The method's maps ``[N, H, W]``; a NaN/inf map is named by its image's id."""
        try:
            return saliency_batched(self.method, self.model, self.x, self.target, signed=signed,
                                    batch_size=self.batch_size, method_params=self.method_params)
        except NonFiniteMapError as error:
            where = f"image {self.ids[error.index]}" + (" (signed map)" if signed else "")
            raise NonFiniteMapError(self.method, error.index, where) from None

    @cached_property
    def shared(self) -> dict:
        """Work that several metrics of this unit share, keyed by what was computed (e.g. the
        robustness metrics' one pass of the method over the perturbed inputs)."""
        return {}

    @property
    def label_tensor(self) -> torch.Tensor:
        """Labels ``[N]`` with the target where an image has none."""
        labels = self.labels or (None,) * len(self.ids)
        return torch.tensor([int(t) if label is None else int(label)
                             for label, t in zip(labels, self.target.tolist(), strict=True)],
                            device=self.x.device)


CELL_COLUMNS = ["column", "direction", "image_id", "value"]


@dataclass(frozen=True)
class Metric:
    """A registered metric (see the module docstring)."""

    name: str
    fn: Callable[[Unit, Any], list[dict]]
    settings: type
    direction: str
    citation: str
    summary: str
    needs: frozenset[str]
    columns: Callable[[pd.DataFrame], pd.DataFrame]
    parts: Callable[[Any, nn.Module], list[tuple]]
    curves: Callable[[pd.DataFrame], dict[str, tuple[np.ndarray, np.ndarray]]]
    # the table columns and their directions where they differ from ``direction`` (e.g. ROAD's
    # road_morf lower, road_lerf and road_combined higher); empty: one column, ``direction``
    column_directions: tuple[tuple[str, str], ...] = ()
    criterion: str = "faithfulness"  # one of CRITERIA

    def directions_text(self) -> str:
        """``↑`` / ``↓``, or each column's arrow where the columns differ."""
        if not self.column_directions:
            return "↑" if self.direction == "up" else "↓"
        return "(" + ", ".join(f"{c} {'↑' if d == 'up' else '↓'}"
                               for c, d in self.column_directions) + ")"

    def defaults(self) -> dict:
        return {f.name: _default(f) for f in dataclasses.fields(self.settings)}


def _default(spec: dataclasses.Field):
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None


METRICS: Registry[Metric] = Registry("metric", "harness.metrics")


def value_records(unit: Unit, values: torch.Tensor, reason: str) -> list[dict]:
    """One record per image of ``unit`` from its ``values`` ``[N]``: a non-finite value is
    ``None`` with the status ``undefined: <reason>``."""
    records = []
    for image_id, value in zip(unit.ids, values.tolist(), strict=True):
        record = {"image_id": image_id, "value": value if math.isfinite(value) else None}
        if not math.isfinite(value):
            record["status"] = f"undefined: {reason}"
        records.append(record)
    return records


def value_column(name: str, direction: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """One table column ``name`` holding each record's ``value``."""

    def columns(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"column": name, "direction": direction,
                             "image_id": frame["image_id"].to_numpy(),
                             "value": frame["value"].to_numpy(dtype=float, na_value=np.nan)})

    return columns


def record_curves(name: str) -> Callable[[pd.DataFrame], dict]:
    """The records' ``curve`` (x from ``curve_x``, else evenly spaced on [0, 1])."""

    def curves(frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if "curve" not in frame:
            return {}
        rows = frame[frame["curve"].notna()]
        if rows.empty:
            return {}
        values = np.stack([np.asarray(c, dtype=float) for c in rows["curve"]])
        first = rows["curve_x"].iloc[0] if "curve_x" in rows else None
        x = (np.asarray(first, dtype=float) if first is not None and not _missing(first)
             else np.linspace(0, 1, values.shape[1]))
        return {name: (x, values)}

    return curves


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def one_part(settings, model) -> list[tuple]:
    return [(None, None)]


def register_metric(name: str, *, settings: type, direction: str, citation: str,
                    needs: Sequence[str] = ("maps",),
                    columns: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                    parts: Callable[[Any, nn.Module], list[tuple]] | None = None,
                    curves: Callable[[pd.DataFrame], dict] | None = None,
                    summary: str | None = None,
                    column_directions: Sequence[tuple[str, str]] = (),
                    criterion: str = "faithfulness") -> Callable:
    """Decorator registering ``fn(unit, settings) -> records`` as metric ``name`` (see the
    module docstring for what a record holds).

    Args:
        name: the name configs use (``metrics: {name: {...}}``).
        settings: a frozen dataclass of the settings, defaults = the paper's, with a ``check()``
            raising ``ConfigError("field: why")`` for values out of range.
        direction: ``"up"`` (higher is better) or ``"down"``.
        citation: the metric's source.
        needs: what it reads from a unit: ``maps``, ``method``, ``masks``.
        columns: records of one method -> table cells (default: one column named ``name``).
        parts: (settings, model) -> the ``(measure, block)`` parts each image gets.
        curves: records -> ``{name: (x, curves)}`` for figures and MLflow.
        summary: one line for listings (default: the function's first docstring paragraph).
        column_directions: the direction of each column where the columns differ.
        criterion: what the metric evaluates, one of ``CRITERIA`` (the reliability report's
            aggregate ranking averages ranks per criterion).

    Returns:
        The decorator (it returns the function unchanged).

    Raises:
        ConfigError: a taken name, an unknown direction, need or criterion, settings not a
            dataclass.
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"metric {name!r}: criterion {criterion!r} is not one of: "
                          f"{', '.join(CRITERIA)}")
    for label, value in [("direction", direction), *column_directions]:
        if value not in DIRECTIONS:
            raise ConfigError(f"metric {name!r}: {label} direction {value!r} is not one of: up, "
                              "down")
    unknown = set(needs) - NEEDS
    if unknown:
        raise ConfigError(f"metric {name!r}: unknown needs {sorted(unknown)}; valid: "
                          f"{', '.join(sorted(NEEDS))}")
    if not dataclasses.is_dataclass(settings):
        raise ConfigError(f"metric {name!r}: settings must be a frozen dataclass, got "
                          f"{settings!r}")

    def add(fn: Callable[[Unit, Any], list[dict]]) -> Callable:
        text = " ".join((summary or (fn.__doc__ or "").strip().split("\n\n")[0]).split())
        METRICS.add(name, Metric(name, fn, settings, direction, citation, text, frozenset(needs),
                                 columns or value_column(name, direction), parts or one_part,
                                 curves or record_curves(name), tuple(column_directions),
                                 criterion))
        return fn

    return add


def list_metrics(pattern: str = "*") -> list[str]:
    """Names of the metrics.

    Args:
        pattern: an fnmatch pattern (``"road*"``).

    Returns:
        The sorted names: registered metrics and installed entry points of group
        ``harness.metrics``.

    Raises:
        Nothing.
    """
    return METRICS.list(pattern)


def get_metric(name: str) -> Metric:
    """The registry entry of metric ``name``.

    Args:
        name: a metric name (``list_metrics()``).

    Returns:
        The ``Metric`` entry (function, settings dataclass, direction, citation, needs).

    Raises:
        UnknownNameError: no such metric (with a near match and the valid names).
    """
    return METRICS.get(name)


def applies(settings, method: str) -> bool:
    """Whether a metric with ``settings`` runs for the method with display name ``method``."""
    chosen = getattr(settings, "methods", None)
    return chosen is None or method in chosen


# ----------------------------------------------------------------------------- reading records


def as_frame(records: Sequence[dict] | pd.DataFrame) -> pd.DataFrame:
    """Records as a frame (one row per record); a frame is returned as it is."""
    if isinstance(records, pd.DataFrame):
        return records
    return pd.DataFrame(list(records))


def _registered(metric: str) -> Metric | None:
    try:
        return METRICS.get(metric)
    except UnknownNameError:
        return None


def per_image_table(records: Sequence[dict] | pd.DataFrame, *,
                    directions: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (method, table column, image): the value the table aggregates and the column's
    direction (``up`` if higher is better), from each metric's registry entry (``columns``).

    A metric not registered in this process (a plug-in's records read without importing it) is
    one column of its records' ``value`` when ``directions`` names its direction, and is left out
    with a warning otherwise.
    """
    frame = as_frame(records)
    if frame.empty:
        raise MetricError("no records to report")
    frame = frame.drop(columns=[c for c in ("curve", "curve_x") if c in frame])
    parts, skipped = [], []
    for (method, metric), rows in frame.groupby(["method", "metric"], sort=False):
        entry = _registered(metric)
        if entry is not None:
            cells = entry.columns(rows)
        elif directions and metric in directions:
            cells = value_column(metric, directions[metric])(rows)
        else:
            skipped.append(metric)
            continue
        parts.append(cells.assign(method=method)[["method", *CELL_COLUMNS]])
    for metric in dict.fromkeys(skipped):
        warnings.warn(f"records of metric {metric!r} left out: it is not registered here (import "
                      "its plug-in: --plugin MODULE)", stacklevel=2)
    if not parts:
        raise MetricError("no records of a registered metric to report")
    table = pd.concat(parts, ignore_index=True).rename(columns={"column": "metric"})
    return table[["method", "metric", "image_id", "value", "direction"]]


def metric_curves(records: Sequence[dict] | pd.DataFrame, *, exclude: Sequence[str] = ()
                  ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{curve name: {method: (x [K], per-image curves [n, K])}}`` from each metric's registry
    entry (``curves``), for the figures and MLflow's step metrics."""
    frame = as_frame(records)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (method, metric), rows in frame.groupby(["method", "metric"], sort=False):
        entry = None if metric in exclude else _registered(metric)
        if entry is None:
            continue
        for name, curve in entry.curves(rows).items():
            out.setdefault(name, {})[method] = curve
    return out
