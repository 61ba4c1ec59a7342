"""The reliability section of a run: statistics (``harness.reliability.agreement``,
``harness.reliability.ranking``) from the run's stored records, Markdown and CSV tables, the
agreement heatmap and a one-paragraph note for MLflow. ``write_reliability`` is what a finished run
calls; ``reliability_for`` is ``harness reliability RUN_DIR`` (read-only unless given ``out``).

Verdicts use Krippendorff's conventional thresholds for alpha (Krippendorff 2004, Content
Analysis, 2nd ed., section 11.4): alpha >= 0.800 reliable, 0.667 <= alpha < 0.800 only for
tentative conclusions, below 0.667 unreliable (do not cite the column's ranking of the methods on
this data).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from harness.errors import ConfigError, RunFolderError  # noqa: E402
from harness.files import atomic_save, atomic_write  # noqa: E402
from harness.methods.baselines import CONTROLS  # noqa: E402
from harness.metrics.registry import (  # noqa: E402
    CRITERIA,
    METRICS,
    as_frame,
    per_image_table,
)
from harness.registry import did_you_mean  # noqa: E402
from harness.reliability.agreement import (  # noqa: E402
    agreement,
    alpha_interval,
    consistency,
    score_matrix,
)
from harness.reliability.ranking import aggregate_ranking, control_ranks  # noqa: E402
from harness.runner import RESOLVED  # noqa: E402
from harness.runstate import RunState  # noqa: E402
from harness.settings import check_int, check_seed  # noqa: E402
from harness.store import load_frame  # noqa: E402

RELIABLE, TENTATIVE = 0.800, 0.667
STEM = "reliability"
FIGURE = "agreement.png"


@dataclass(frozen=True)
class Reliability:
    """Every statistic of the section (frames; see the module docstrings for definitions)."""

    columns: pd.DataFrame  # one row per table column: alpha (both levels), verdict, controls
    agreement: pd.DataFrame  # one row per ordered pair of columns
    consistency: pd.DataFrame  # one row per pair of variants
    column_ranks: pd.DataFrame  # LATEC per column
    ranking: pd.DataFrame  # LATEC per criterion
    controls: pd.DataFrame  # where the control methods land per column
    n_images: int
    methods: tuple[str, ...]
    resamples: int
    seed: int

    @property
    def note(self) -> str:
        """A short paragraph for the MLflow description."""
        return note(self)


def column_sources(frame: pd.DataFrame) -> dict[str, str]:
    """``{table column: registered metric}`` from the records (``road_morf`` -> ``road``)."""
    out: dict[str, str] = {}
    frame = frame.drop(columns=[c for c in ("curve", "curve_x") if c in frame])
    for metric, rows in frame.groupby("metric", sort=False):
        if metric not in METRICS:
            continue
        first = rows[rows["method"] == rows["method"].iloc[0]]
        for column in dict.fromkeys(METRICS[metric].columns(first)["column"]):
            out[column] = metric
    return out


def variant_groups(sources: Mapping[str, str], declared: Sequence[Sequence[str]] = ()
                   ) -> list[tuple[str, ...]]:
    """The variant groups: the columns of each metric that writes several (ROAD's orders, model
    randomization's similarity measures), then the ``declared`` groups (columns that measure one
    metric with other settings, e.g. ``deletion`` with the zero substrate and ``morf`` with
    ``rise_blur``: one definition, two registered names). Unknown columns are an error naming the
    valid ones."""
    groups: dict[str, list[str]] = {}
    for column, metric in sources.items():
        groups.setdefault(metric, []).append(column)
    out = [tuple(columns) for columns in groups.values() if len(columns) > 1]
    for group in declared:
        group = tuple(dict.fromkeys(group))
        unknown = [c for c in group if c not in sources]
        if unknown:
            raise ConfigError(f"variants: {unknown[0]!r} is not a column of this run."
                              f"{did_you_mean(unknown[0], list(sources))} Columns: "
                              f"{', '.join(sources)}")
        if len(group) < 2:
            raise ConfigError(f"variants: a group needs two or more columns, got {list(group)}")
        out.append(group)
    return out


def controls_of(methods: Mapping[str, str] | None) -> list[str]:
    """The display names whose registry method is one of the harness's input-only controls
    (``harness.methods.baselines.CONTROLS``: random, sobel, center)."""
    return [display for display, registry_name in (methods or {}).items()
            if registry_name in CONTROLS]


def verdict(alpha: float, low: float = math.nan, high: float = math.nan) -> str:
    """Krippendorff's reading of ``alpha``; ``uncertain`` is added when its bootstrap interval
    [``low``, ``high``] contains 0.667 (too few images to tell)."""
    if not math.isfinite(alpha):
        return "undefined"
    text = ("reliable" if alpha >= RELIABLE else "tentative" if alpha >= TENTATIVE
            else "unreliable")
    if math.isfinite(low) and math.isfinite(high) and low < TENTATIVE <= high:
        text += ", uncertain"
    return text


def reliability(records: Sequence[dict] | pd.DataFrame, *, methods: Mapping[str, str] | None = None,
                variants: Sequence[Sequence[str]] = (), seed: int = 0,
                n_resamples: int = 1000, directions: Mapping[str, str] | None = None
                ) -> Reliability:
    """Every statistic of the reliability section from a run's ``records`` (dicts or the store's
    frame). ``methods``: display name -> registry name (to find the controls); ``variants``:
    declared variant groups (see ``variant_groups``); ``directions``: ``{column: up|down}`` of
    metrics not registered in this process (a plug-in's records, ``RunState.metric_directions``:
    one column each, criterion ``faithfulness``, the registry's default)."""
    check_int("n_resamples", n_resamples, 1)
    check_seed("seed", seed)
    frame = as_frame(records)
    table = per_image_table(frame, directions=dict(directions or {}))
    columns = list(dict.fromkeys(table["metric"]))
    sources = {column: column for column in columns}  # unregistered: a column of its own
    sources.update(column_sources(frame))
    criteria = {c: METRICS[sources[c]].criterion if sources[c] in METRICS else CRITERIA[0]
                for c in columns}
    groups = variant_groups(sources, variants)
    controls = controls_of(methods)
    placed = control_ranks(table, controls)
    rows = []
    for column in columns:
        matrix = score_matrix(table, column)
        row = {"metric": column, "source": sources[column], "criterion": criteria[column],
               "direction": table.loc[table["metric"] == column, "direction"].iloc[0],
               "n_images": int(matrix.shape[0]), "n_methods": int(matrix.shape[1])}
        for level in ("ordinal", "interval"):
            interval = alpha_interval(matrix, level, n_resamples=n_resamples, seed=seed)
            row.update({f"alpha_{level}": interval.alpha, f"alpha_{level}_low": interval.low,
                        f"alpha_{level}_high": interval.high})
        row["verdict"] = verdict(row["alpha_ordinal"], row["alpha_ordinal_low"],
                                 row["alpha_ordinal_high"])
        mine = placed[placed["metric"] == column]
        row["controls"] = "; ".join(
            f"{r.control} {r.rank:g}/{r.of}" + (" (last)" if r.below_all else "")
            for r in mine.itertuples())
        rows.append(row)
    pairs = agreement(table)
    column_ranks, ranking = aggregate_ranking(table, criteria, n_resamples=n_resamples, seed=seed)
    return Reliability(pd.DataFrame(rows), pairs, consistency(table, groups, pairs), column_ranks,
                       ranking, placed, int(table["image_id"].nunique()),
                       tuple(dict.fromkeys(table["method"])), n_resamples, seed)


# ----------------------------------------------------------------------------- rendering


def _number(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(value: float, low: float, high: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return _number(value)
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _matrix(pairs: pd.DataFrame, statistic: str) -> list[str]:
    columns = list(dict.fromkeys(pairs["first"]))
    values = pairs.set_index(["first", "second"])[statistic]
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for first in columns:
        lines.append(f"| {first} | " + " | ".join(_number(values[(first, second)])
                                                  for second in columns) + " |")
    return lines


def render_markdown(result: Reliability, source: str = "") -> str:
    """The section as Markdown (every table with a caption saying what its numbers are)."""
    out = ["# Can these metrics be trusted here? Reliability of the run's metric columns",
           "", f"{result.n_images} images, {len(result.methods)} methods "
           f"({', '.join(result.methods)}); computed from the stored per-image values"
           + (f" of {source}" if source else "") + f"; bootstrap: {result.resamples:,} "
           f"resamples of the images, seed {result.seed}; 95% intervals: BCa for alpha, "
           "percentile for ranks.", "",
           "## Inter-rater reliability (Krippendorff's alpha; images as raters of the method "
           "ranking)", "",
           "| column | criterion | alpha ordinal [95% CI] | alpha interval [95% CI] | verdict | "
           "controls (rank of n; 1 = best) |", "|---|---|---|---|---|---|"]
    for row in result.columns.to_dict("records"):
        out.append(f"| {row['metric']} {'↑' if row['direction'] == 'up' else '↓'} | "
                   f"{row['criterion']} | "
                   + _interval(row["alpha_ordinal"], row["alpha_ordinal_low"],
                               row["alpha_ordinal_high"]) + " | "
                   + _interval(row["alpha_interval"], row["alpha_interval_low"],
                               row["alpha_interval_high"])
                   + f" | {row['verdict']} | {row['controls'] or '—'} |")
    out += ["", "Each image ranks the methods by the column (ties averaged); alpha is the "
            "agreement of those rankings across images (`krippendorff` package): 1 every image "
            "ranks the methods alike, 0 chance. Verdict (ordinal alpha, Krippendorff 2004): "
            f">= {RELIABLE:.3f} reliable, >= {TENTATIVE:.3f} tentative, below: unreliable, do not "
            f"cite this column's ranking of the methods on this data; uncertain: the interval "
            f"contains {TENTATIVE:.3f} (more images needed). (last): the control ranks "
            "below every non-control method.", ""]
    if len(result.agreement) > 1:
        out += ["## Agreement between columns", "",
                "Mean over images of the per-image Spearman correlation of the methods' scores "
                "(direction-aligned: 1 the two columns order the methods alike on an image, -1 "
                "reversed):", "", *_matrix(result.agreement, "per_image"), "",
                "Spearman correlation of the method means (the table's ranking):", "",
                *_matrix(result.agreement, "spearman_means"), "",
                "Kendall (tau-b) correlation of the method means:", "",
                *_matrix(result.agreement, "kendall_means"), ""]
    if len(result.consistency):
        out += ["## Internal consistency of metric variants", "",
                "| variants | pair | per-image rho | Kendall tau of means | rho over cells |",
                "|---|---|---|---|---|"]
        for row in result.consistency.to_dict("records"):
            out.append(f"| {row['group']} | {row['first']} vs {row['second']} | "
                       f"{_number(row['per_image'])} | {_number(row['kendall_means'])} | "
                       f"{_number(row['cells'])} |")
        out += ["", "Variants: the columns one metric writes (ROAD's orders, model "
                "randomization's measures) and groups declared with `--variants`; a low "
                "correlation means the variants measure different things.", ""]
    criteria = list(dict.fromkeys(result.ranking["criterion"]))
    if criteria:
        lookup = result.ranking.set_index(["method", "criterion"])
        out += ["## Aggregate ranking (LATEC: median per column, mean rank per criterion)", "",
                "| method | " + " | ".join(criteria) + " |", "|---|" + "---|" * len(criteria)]
        for method in result.methods:
            cells = []
            for criterion in criteria:
                row = lookup.loc[(method, criterion)]
                cells.append(_interval(row["mean_rank"], row["low"], row["high"]))
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out += ["", "Mean rank (1 = best) over the criterion's columns, each column ranking the "
                "methods by their median over images (ties averaged); [95% bootstrap interval "
                "over images].", ""]
    return "\n".join(out)


def plot_agreement(pairs: pd.DataFrame, path: str | os.PathLike) -> str | None:
    """Heatmaps of the agreement matrix: the Spearman correlation of the method means and the
    mean per-image Spearman correlation (None with fewer than two columns)."""
    columns = list(dict.fromkeys(pairs["first"]))
    if len(columns) < 2:
        return None
    values = pairs.set_index(["first", "second"])
    size = max(4.0, 0.55 * len(columns) + 2.0)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size + 3, size), layout="constrained")
    for axis, (statistic, title) in zip(axes, [("spearman_means", "Spearman of method means"),
                                               ("per_image", "mean per-image Spearman")],
                                        strict=True):
        matrix = np.array([[values.loc[(a, b), statistic] for b in columns] for a in columns])
        image = axis.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1)
        axis.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=8)
        axis.set_yticks(range(len(columns)), columns, fontsize=8)
        axis.set_title(title, fontsize=10)
        if len(columns) <= 14:
            for i in range(len(columns)):
                for j in range(len(columns)):
                    if math.isfinite(matrix[i, j]):
                        axis.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                                  fontsize=7, color="white" if abs(matrix[i, j]) > 0.6 else "k")
    figure.colorbar(image, ax=list(axes), shrink=0.8)
    atomic_save(path, lambda temporary: figure.savefig(temporary, dpi=110, bbox_inches="tight"))
    plt.close(figure)
    return str(path)


def note(result: Reliability) -> str:
    """A short paragraph for the MLflow description."""
    parts = [f"`{r['metric']}` {_number(r['alpha_ordinal'])} ({r['verdict']})"
             for r in result.columns.to_dict("records")]
    return ("Reliability (tables/reliability.md, figures/agreement.png): Krippendorff's alpha of "
            "the method ranking across images (ordinal): " + ", ".join(parts) + ".")


def write_reliability(records: Sequence[dict] | pd.DataFrame, output: str | os.PathLike, *,
                      methods: Mapping[str, str] | None = None,
                      variants: Sequence[Sequence[str]] = (), seed: int = 0,
                      n_resamples: int = 1000, source: str = "",
                      tables: str = "tables", figures: str = "figures",
                      directions: Mapping[str, str] | None = None) -> Reliability:
    """Compute the section and write ``<output>/tables/reliability.{md,csv}`` (+ ``_agreement``,
    ``_consistency``, ``_ranking``, ``_column_ranks`` CSVs) and ``<output>/figures/agreement.png``
    (atomically). Returns the statistics."""
    result = reliability(records, methods=methods, variants=variants, seed=seed,
                         n_resamples=n_resamples, directions=directions)
    folder = Path(output) / tables
    atomic_write(folder / f"{STEM}.md", render_markdown(result, source))
    for suffix, frame in [("", result.columns), ("_agreement", result.agreement),
                          ("_consistency", result.consistency), ("_ranking", result.ranking),
                          ("_column_ranks", result.column_ranks)]:
        atomic_write(folder / f"{STEM}{suffix}.csv", frame.to_csv(index=False))
    plot_agreement(result.agreement, Path(output) / figures / FIGURE)
    return result


def reliability_for(run: str | os.PathLike, *, out: str | os.PathLike | None = None,
                    variants: Sequence[Sequence[str]] = (), seed: int | None = None,
                    n_resamples: int = 1000) -> tuple[Reliability, str]:
    """``harness reliability RUN_DIR``: the section of a run folder (any harness version's
    store: harness 0.1's ``records.jsonl``, shards, ``records.parquet``), from its records and,
    where present, ``config.resolved.yaml`` (methods, seed) and ``state.json`` (the directions of
    plug-in metrics). Writes nothing unless ``out`` is given (then ``out/tables``,
    ``out/figures``).

    Returns:
        (the statistics, the Markdown).

    Raises:
        RunFolderError: not a run folder (no records) or a damaged one.
        ConfigError: ``variants``, ``seed`` or ``n_resamples`` that cannot be used.
    """
    folder = Path(run)
    frame = load_frame(folder, curves=False)
    raw: dict = {}
    if (folder / RESOLVED).is_file():
        try:
            raw = yaml.safe_load((folder / RESOLVED).read_text()) or {}
        except yaml.YAMLError as error:
            raise RunFolderError(f"{folder / RESOLVED} is not valid YAML: {error}") from None
        if not isinstance(raw, dict):
            raise RunFolderError(f"{folder / RESOLVED} does not hold a config mapping")
    methods = {}
    for entry in raw.get("methods") or []:
        entry = {"name": entry} if isinstance(entry, str) else entry
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            methods[entry["name"]] = entry.get("method") or entry["name"]
    if seed is None:
        seed = raw.get("seed", 0) if isinstance(raw.get("seed", 0), int) else 0
    directions = RunState.load(folder).metric_directions
    if out is not None:
        result = write_reliability(frame, out, methods=methods, variants=variants, seed=seed,
                                   n_resamples=n_resamples, source=str(folder),
                                   directions=directions)
    else:
        result = reliability(frame, methods=methods, variants=variants, seed=seed,
                             n_resamples=n_resamples, directions=directions)
    return result, render_markdown(result, str(folder))
