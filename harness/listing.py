"""Text for a terminal: the registries as ``harness list`` prints them and a run's compact table.

Everything here is a pure function of the registries or of a summary frame and a width (at most
``MAX_WIDTH`` columns, else the terminal's), so a test renders it at any width. The full tables
with intervals and tests are written by ``harness.report`` (``tables/table.md``, ``.tex``,
``.csv``); the terminal gets means only, one line per method.
"""

from __future__ import annotations

import math
import shutil
import textwrap
from collections.abc import Callable, Iterable

import pandas as pd

from harness.datasets import list_datasets
from harness.errors import MissingDependencyError
from harness.methods import FAMILIES, get_method, list_methods
from harness.methods.plugins import SIGNATURE
from harness.metrics.registry import get_metric, list_metrics
from harness.models import list_models
from harness.settings import defaults

MAX_WIDTH = 100  # the widest output, whatever the terminal
SMALL_N = 10  # below this many images a run's intervals are flagged as meaning little
INDENT = "    "
ARROW = {"up": "↑", "down": "↓"}


def terminal_width(width: int | None = None) -> int:
    """``width``, or the terminal's columns (``COLUMNS`` first), at most ``MAX_WIDTH`` and at
    least 40."""
    if width is None:
        width = shutil.get_terminal_size((MAX_WIDTH, 24)).columns
    return max(40, min(MAX_WIDTH, int(width)))


def _wrap(text: str, width: int, indent: str = INDENT) -> list[str]:
    return textwrap.wrap(" ".join(str(text).split()), width=width, initial_indent=indent,
                         subsequent_indent=indent, break_on_hyphens=False) or [indent.rstrip()]


def _value(value: object) -> str:
    return repr(value) if isinstance(value, str) and not value else str(value)


def settings_text(values: dict) -> str:
    """``key=value, ...`` of a settings dict (strings unquoted, an empty string as ``''``)."""
    return ", ".join(f"{key}={_value(value)}" for key, value in values.items())


def _metric_lines(name: str, width: int) -> list[str]:
    metric = get_metric(name)
    if metric.column_directions:
        directions = ", ".join(f"{c} {ARROW[d]}" for c, d in metric.column_directions)
    else:
        directions = ARROW[metric.direction]
    header = f"  {name}  {directions}"
    details = f"({metric.criterion}; needs {', '.join(sorted(metric.needs))})"
    if len(header) + 2 + len(details) <= width:
        lines = [f"{header}  {details}"]
    else:
        lines = [header] + _wrap(details, width)
    lines += _wrap(metric.summary, width)
    lines += _wrap(f"settings: {settings_text(metric.defaults()) or 'none'}", width)
    lines += _wrap(f"source: {metric.citation}", width)
    return lines


def _method_lines(name: str, width: int) -> list[str]:
    method = get_method(name)
    lines = [f"  {name}"]
    lines += _wrap(method.summary, width)
    if method.settings is not None:
        lines += _wrap(f"params: {settings_text(defaults(method.settings)) or 'none'}",
                       width)
    lines += _wrap(f"source: {method.citation}", width)
    return lines


def _adapter_lines(width: int) -> list[str]:
    lines = ["adapters (optional libraries; a method is <prefix>:<Class>):"]
    for prefix, family in FAMILIES.items():
        try:
            members = family.members()
        except MissingDependencyError:
            lines.append(f"  {prefix}:<Class>")
            lines += _wrap(f"{family.library} is not installed: pip install -e "
                           f"'.[{family.extra}]'", width)
            continue
        lines.append(f"  {prefix}:<Class>  {family.summary} ({len(members)})")
        lines += _wrap(", ".join(members), width)
    lines.append("plug-ins:")
    lines += _wrap("entry points of group 'harness.methods' are listed with the registered "
                   f"methods; any package.module:function with the signature {SIGNATURE}, or a "
                   "module named in a config's plugins: / --plugin", width)
    return lines


def list_text(kinds: Iterable[str], width: int | None = None) -> str:
    """What ``harness list [kind]`` prints: models, datasets, methods (with their parameters and
    defaults) and metrics (direction, needs, settings with defaults, source), wrapped to
    ``width`` (default: the terminal's, at most ``MAX_WIDTH``).

    Args:
        kinds: any of ``models``, ``datasets``, ``methods``, ``metrics``.
        width: the line width.

    Returns:
        The text, every line at most ``width`` columns (a single word longer than the width, such
        as a long model name, keeps its own line).
    """
    width = terminal_width(width)
    names: dict[str, Callable[[], list[str]]] = {
        "models": list_models, "datasets": list_datasets, "methods": list_methods,
        "metrics": list_metrics}
    lines: list[str] = []
    for kind in kinds:
        listed = names[kind]()
        if kind == "methods":
            lines.append(f"methods ({len(listed)} registered; params with their defaults):")
            for name in listed:
                lines += _method_lines(name, width)
            lines += _adapter_lines(width)
        elif kind == "metrics":
            lines.append(f"metrics ({len(listed)}; ↑ higher is better, ↓ lower is better):")
            for name in listed:
                lines += _metric_lines(name, width)
        else:
            lines.append(f"{kind} ({len(listed)}):")
            lines += _wrap(", ".join(listed), width, indent="  ")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- a run's table


def _mean_text(mean: float) -> str:
    if math.isnan(mean):
        return "n/a"
    if mean != 0 and (abs(mean) >= 1e5 or abs(mean) < 1e-3):
        return f"{mean:.2e}"
    return f"{mean:.3f}"


def compact_table(summary: pd.DataFrame, width: int | None = None) -> str:
    """The run's table for a terminal: the mean of each (method, column), one line per method,
    the best per column marked ``*``, the columns split into blocks that fit ``width`` (default:
    the terminal's, at most ``MAX_WIDTH``), each block repeating the method names.

    Args:
        summary: ``harness.report.summarize``'s frame (method, metric, direction, mean, n, ...).
        width: the line width.

    Returns:
        The text (no caption; the full table with intervals is ``tables/table.md``).
    """
    width = terminal_width(width)
    methods = list(dict.fromkeys(summary["method"]))
    metrics = list(dict.fromkeys(summary["metric"]))
    directions = dict(zip(summary["metric"], summary["direction"], strict=True))
    means = {(row["method"], row["metric"]): row["mean"] for row in summary.to_dict("records")}
    best = {}
    for metric in metrics:
        column = summary[(summary["metric"] == metric) & summary["mean"].notna()]
        if len(column):
            pick = column["mean"].idxmax() if directions[metric] == "up" else \
                column["mean"].idxmin()
            best[metric] = column.loc[pick, "method"]
    name_width = max(len("method"), *(len(m) for m in methods))
    cells = {}
    for metric in metrics:
        header = f"{metric} {ARROW[directions[metric]]}"
        values = []
        for method in methods:
            if (method, metric) not in means:
                values.append("—")
                continue
            text = _mean_text(means[(method, metric)])
            values.append(text + ("*" if best.get(metric) == method else " "))
        cells[metric] = (header, values, max(len(header), *(len(v) for v in values)))
    blocks, block, used = [], [], name_width
    for metric in metrics:
        column_width = cells[metric][2] + 2
        if block and used + column_width > width:
            blocks.append(block)
            block, used = [], name_width
        block.append(metric)
        used += column_width
    if block:
        blocks.append(block)
    lines = []
    for number, block in enumerate(blocks):
        if number:
            lines.append("")
        lines.append("method".ljust(name_width) + "".join(
            "  " + cells[m][0].rjust(cells[m][2]) for m in block))
        for row, method in enumerate(methods):
            lines.append(method.ljust(name_width) + "".join(
                "  " + cells[m][1][row].rjust(cells[m][2]) for m in block))
    return "\n".join(lines)


def small_n_warning(summary: pd.DataFrame, least: int = SMALL_N) -> str | None:
    """A warning when the largest cell has fewer than ``least`` images: bootstrap intervals and
    paired tests on so few images mean little (None otherwise)."""
    n = int(summary["n"].max()) if len(summary) else 0
    if n >= least:
        return None
    return (f"warning: n = {n} image{'s' if n != 1 else ''}: the intervals and tests mean little "
            f"below {least} images; do not cite these numbers")
