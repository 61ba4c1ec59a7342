"""Paper tables and figures from per-image records.

A table is methods x metrics: mean and 95% bootstrap CI [low, high] (BCa by default, seeded;
intervals of skewed per-image scores are asymmetric, so no ± half-width), best per column in bold, a
direction arrow per metric, n images, and the paired Wilcoxon signed-rank test of each method
against the reference method on the same images, Holm-corrected across all comparisons in the
table. The caption names the model, data, metric settings and run.

Metric columns: the curve metrics by name (AUC; ABPC for ``abpc``) and, for model randomization,
``rand_<measure>``: the similarity to the original map after the last randomization step (all
blocks randomized in cascading mode), per image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.io import atomic_save, atomic_write
from harness.stats import bootstrap_ci, holm, paired_wilcoxon

CI_NAMES = {"bca": "BCa", "percentile": "percentile"}
# their curves run over randomization steps, not fractions: figures of their own
RANDOMIZATION_METRICS = ("model_randomization", "smooth_mprt", "efficient_mprt")
ARROWS = {"up": ("↑", r"$\uparrow$"), "down": ("↓", r"$\downarrow$")}


def as_frame(records: Sequence[dict] | pd.DataFrame) -> pd.DataFrame:
    """Records as a frame (one row per record); a frame is returned as it is."""
    if isinstance(records, pd.DataFrame):
        return records
    return pd.DataFrame(list(records))


def per_image_table(records: Sequence[dict] | pd.DataFrame) -> pd.DataFrame:
    """One row per (method, table column, image): the value the table aggregates and the column's
    direction (``up`` if higher is better), from each metric's registry entry (``columns``)."""
    from harness.metrics.registry import CELL_COLUMNS, METRICS

    frame = as_frame(records)
    if frame.empty:
        raise ValueError("no records to report")
    frame = frame.drop(columns=[c for c in ("curve", "curve_x") if c in frame])
    parts = []
    for (method, metric), rows in frame.groupby(["method", "metric"], sort=False):
        if metric in METRICS:
            cells = METRICS[metric].columns(rows)
            parts.append(cells.assign(method=method)[["method", *CELL_COLUMNS]])
    if not parts:
        raise ValueError("no records of a registered metric to report")
    table = pd.concat(parts, ignore_index=True).rename(columns={"column": "metric"})
    return table[["method", "metric", "image_id", "value", "direction"]]


def summarize(records: Sequence[dict], *, reference: str | None = None, seed: int = 0,
              n_resamples: int = 10_000, ci_method: str = "bca") -> pd.DataFrame:
    """Per (method, metric): mean, ci_low, ci_high (``harness.stats.bootstrap_ci`` with
    ``ci_method``), n, undefined (values missing or not finite), and against the reference
    method: p (Wilcoxon) and p_holm."""
    table = per_image_table(records)
    methods = list(dict.fromkeys(table["method"]))
    metrics = list(dict.fromkeys(table["metric"]))
    directions = dict(zip(table["metric"], table["direction"], strict=True))
    rows = []
    for method in methods:
        for metric in metrics:
            values = table[(table["method"] == method) & (table["metric"] == metric)]
            if values.empty:  # the metric did not run for this method (e.g. ``methods:``)
                continue
            finite = values["value"].to_numpy(dtype=float, na_value=np.nan)
            finite = finite[np.isfinite(finite)]  # as bootstrap_ci and the paired test count
            row = {"method": method, "metric": metric, "direction": directions[metric],
                   "n": int(finite.size), "undefined": int(len(values) - finite.size)}
            if finite.size:
                interval = bootstrap_ci(finite, seed=seed, n_resamples=n_resamples,
                                        method=ci_method)
                row.update(mean=interval.mean, ci_low=interval.low, ci_high=interval.high)
            else:
                row.update(mean=math.nan, ci_low=math.nan, ci_high=math.nan)
            row["p"] = math.nan
            if reference is not None and method != reference:
                mine = values.set_index("image_id")["value"]
                theirs = table[(table["method"] == reference) &
                               (table["metric"] == metric)].set_index("image_id")["value"]
                common = mine.index.intersection(theirs.index)
                if len(common):
                    row["p"] = paired_wilcoxon(mine[common].to_numpy(float),
                                               theirs[common].to_numpy(float))
            rows.append(row)
    summary = pd.DataFrame(rows)
    summary["p_holm"] = math.nan
    tested = summary["p"].notna()
    if tested.any():
        summary.loc[tested, "p_holm"] = holm(summary.loc[tested, "p"].tolist())
    return summary


def similarity_note(records: Sequence[dict] | pd.DataFrame) -> str | None:
    """The similarity measures and map normalisation behind the model-randomization records (from
    the records themselves, so tables of older runs name the settings that produced them)."""
    from harness.sanity.similarity import describe

    frame = as_frame(records)
    if frame.empty or "metric" not in frame:
        return None
    rows = frame[frame["metric"] == "model_randomization"]
    if rows.empty:
        return None

    def values(column):
        if column not in rows:
            return {None}
        return {None if pd.isna(v) else v for v in rows[column]}

    versions, normalisations = values("measure_version"), values("map_normalisation")
    if len(versions) > 1 or len(normalisations) > 1:
        raise ValueError(f"the records mix similarity settings (measure versions {versions}, "
                         f"normalisations {normalisations}); tables need one setting per run")
    version = versions.pop()
    measures = list(dict.fromkeys(rows["measure"]))
    modes, orders = values("mode"), values("order")  # records before ``order``: top-down
    return describe(measures, normalisations.pop(), None if version is None else int(version),
                    order=orders.pop() if len(orders) == 1 else None,
                    mode=modes.pop() if len(modes) == 1 else None)


def _cell(row, bold: bool, latex: bool) -> str:
    if row is None:  # the metric was not run for this method
        return "--" if latex else "—"
    if math.isnan(row["mean"]):
        return "n/a"
    interval = f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    text = f"{row['mean']:.3f} {interval}" if not latex else \
        f"{row['mean']:.3f} {{\\scriptsize {interval}}}"
    stars = ""
    if not math.isnan(row["p_holm"]):
        stars = "**" if row["p_holm"] < 0.01 else "*" if row["p_holm"] < 0.05 else ""
        if stars and latex:
            stars = f"$^{{{stars}}}$"
    if bold:
        text = f"\\textbf{{{text}}}" if latex else f"**{text}**"
    return text + stars


def _best(summary: pd.DataFrame, metric: str) -> str | None:
    column = summary[summary["metric"] == metric].dropna(subset=["mean"])
    if column.empty:
        return None
    way = column["direction"].iloc[0]
    pick = column["mean"].idxmax() if way == "up" else column["mean"].idxmin()
    return column.loc[pick, "method"]


def caption(meta: dict, summary: pd.DataFrame) -> str:
    n = int(summary["n"].max()) if len(summary) else 0
    fewer = bool(len(summary) and (summary["n"] < n).any())
    parts = [f"Model {meta.get('model', '?')} ({meta.get('weights', '?')}), data "
             f"{meta.get('data', '?')}, n = {n} images"
             + (" (fewer in cells with undefined values or metrics run for some methods: "
                "table.csv gives each cell's n)" if fewer else "")
             + f", targets: {meta.get('target', '?')}."]
    if meta.get("metric_settings"):
        parts.append(f"Metrics: {meta['metric_settings']}.")
    if meta.get("similarity"):
        parts.append(f"Model randomization: {meta['similarity']}.")
    method = CI_NAMES[meta.get("ci_method", "bca")]
    parts.append(f"Mean [95% {method} bootstrap CI of the mean] "
                 f"({meta.get('n_resamples', 10_000):,} resamples, seed {meta.get('seed', 0)}); "
                 "best per column in bold.")
    if meta.get("reference"):
        parts.append(f"* / **: paired Wilcoxon signed-rank test against {meta['reference']}, "
                     "Holm-corrected across the table, p < 0.05 / p < 0.01.")
    parts.append(f"Source: {meta.get('run', '?')}.")
    return " ".join(parts)


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": "$<$", ">": "$>$",
}


def escape(text: str) -> str:
    """``text`` with every LaTeX special character escaped (names, paths, captions)."""
    return "".join(LATEX_SPECIAL.get(char, char) for char in str(text))


def render_tables(summary: pd.DataFrame, meta: dict) -> dict[str, str]:
    """LaTeX (booktabs), Markdown and CSV text of the summary."""
    methods = list(dict.fromkeys(summary["method"]))
    metrics = list(dict.fromkeys(summary["metric"]))
    best = {metric: _best(summary, metric) for metric in metrics}
    lookup = {(r["method"], r["metric"]): r for r in summary.to_dict("records")}
    text_caption = caption(meta, summary)
    # Markdown
    directions = dict(zip(summary["metric"], summary["direction"], strict=True))
    header = ["method"] + [f"{m} {ARROWS[directions[m]][0]}" for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        cells = [method] + [_cell(lookup.get((method, m)), best[m] == method, latex=False)
                            for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + f"\n\n{text_caption}\n"
    # LaTeX

    latex_header = " & ".join(["Method"] + [f"{escape(m)} {ARROWS[directions[m]][1]}"
                                            for m in metrics])
    body = []
    for method in methods:
        cells = [escape(method)] + [_cell(lookup.get((method, m)), best[m] == method, latex=True)
                                    for m in metrics]
        body.append(" & ".join(cells) + r" \\")
    latex = "\n".join([
        r"\begin{table}[t]", r"\centering", r"\small",
        r"\begin{tabular}{l" + "c" * len(metrics) + "}", r"\toprule", latex_header + r" \\",
        r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
        r"\caption{" + escape(text_caption) + "}",
        r"\label{tab:" + escape(str(meta.get("name", "results"))) + "}", r"\end{table}", ""])
    csv = summary.to_csv(index=False)
    return {"tex": latex, "md": markdown, "csv": csv}


def write_tables(summary: pd.DataFrame, meta: dict, folder: str | os.PathLike,
                 stem: str = "table") -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in render_tables(summary, meta).items():
        path = folder / f"{stem}.{suffix}"
        atomic_write(path, text)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- figures


def metric_curves(records: Sequence[dict] | pd.DataFrame, *, exclude: Sequence[str] = ()
                  ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{curve name: {method: (x [K], per-image curves [n, K])}}`` from each metric's registry
    entry (``curves``), for the figures and MLflow's step metrics."""
    from harness.metrics.registry import METRICS

    frame = as_frame(records)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (method, metric), rows in frame.groupby(["method", "metric"], sort=False):
        if metric in exclude or metric not in METRICS:
            continue
        for name, curve in METRICS[metric].curves(rows).items():
            out.setdefault(name, {})[method] = curve
    return out


def plot_mean_curves(records: Sequence[dict], path: str | os.PathLike, *, seed: int = 0
                     ) -> str | None:
    """Mean curves per method (deletion, insertion, MoRF/LeRF, ROAD, ...: every metric whose
    records carry curves, model randomization apart) with 95% bootstrap bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from harness.metrics import auc

    curves = metric_curves(records, exclude=RANDOMIZATION_METRICS)
    if not curves:
        return None
    figure, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), squeeze=False)
    rng = np.random.default_rng(seed)
    for axis, (name, by_method) in zip(axes[0], curves.items(), strict=True):
        bounded = True
        for method, (xs, values) in by_method.items():
            mean = np.nanmean(values, axis=0)
            picks = rng.integers(0, len(values), (2000, len(values)))
            low, high = np.nanquantile(np.nanmean(values[picks], axis=1), [0.025, 0.975], axis=0)
            even = np.allclose(xs, np.linspace(0, 1, len(xs)))
            summary = (f"AUC of mean {float(auc(torch.from_numpy(mean))):.3f}" if even else
                       f"mean {float(np.mean(mean)):.3f}")
            axis.plot(xs, mean, marker=None if even else "o", markersize=3,
                      label=f"{method} ({summary})")
            axis.fill_between(xs, low, high, alpha=0.2)
            bounded &= bool(np.nanmin(values) >= 0 and np.nanmax(values) <= 1)
        axis.set_title(name)
        axis.set_xlabel("fraction of pixels changed" if even else "fraction")
        if bounded:
            axis.set_ylim(0, 1.02)
    axes[0, 0].set_ylabel("score of the target class")
    for axis in axes[0]:
        axis.legend(fontsize=7)
    figure.tight_layout()
    atomic_save(path, lambda temporary: figure.savefig(temporary, dpi=110))
    plt.close(figure)
    return str(path)


def plot_randomization(records: Sequence[dict] | pd.DataFrame, path: str | os.PathLike, *,
                       seed: int = 0, metric: str = "model_randomization") -> str | None:
    """Similarity-versus-block curves with 95% bands, from the records of a randomization
    metric (``model_randomization`` or ``smooth_mprt``)."""
    from harness.sanity.figures import similarity_curves
    from harness.sanity.randomization import RandomizationResult

    frame = as_frame(records)
    if frame.empty or "metric" not in frame:
        return None
    frame = frame[frame["metric"] == metric]
    if frame.empty:
        return None
    frame = frame.drop(columns=[c for c in ("curve", "curve_x") if c in frame])
    results = []
    for method, rows in frame.groupby("method", sort=False):
        mine = rows.sort_values("step", kind="stable").to_dict("records")
        blocks = tuple(dict.fromkeys(r["block"] for r in mine))
        normalisation = mine[0].get("map_normalisation")
        order = mine[0].get("order")
        results.append(RandomizationResult(
            method, mine[0]["mode"], mine[0]["target_mode"], seed, blocks, mine,
            map_normalisation="method" if normalisation is None or pd.isna(normalisation)
            else normalisation,
            order="top_down" if order is None or pd.isna(order) else order))
    measures = tuple(dict.fromkeys(frame["measure"]))
    return similarity_curves(results, path, measures=measures, seed=seed)
