"""Paper tables from per-image records, and everything a finished run writes beside them.

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
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.agreement import run_agreement
from harness.config import ExperimentConfig
from harness.errors import RunFolderError
from harness.figures import plot_mean_curves, plot_randomization, saliency_grid
from harness.files import atomic_write, file_name
from harness.images import crop_pixels, preprocess
from harness.methods import saliency_batched
from harness.metrics.registry import as_frame, metric_curves, per_image_table
from harness.reliability import write_reliability
from harness.runner import RESOLVED, Prepared, figure_maps
from harness.sanity.similarity import describe
from harness.stats import bootstrap_ci, holm, paired_wilcoxon
from harness.store import PARQUET
from harness.targets import resolve_targets

CI_NAMES = {"bca": "BCa", "percentile": "percentile"}
ARROWS = {"up": ("↑", r"$\uparrow$"), "down": ("↓", r"$\downarrow$")}


def summarize(records: Sequence[dict] | pd.DataFrame, *, reference: str | None = None,
              seed: int = 0, n_resamples: int = 10_000, ci_method: str = "bca",
              directions: dict[str, str] | None = None) -> pd.DataFrame:
    """Per (method, table column): mean, ci_low, ci_high (``harness.stats.bootstrap_ci`` with
    ``ci_method``), n, undefined (values missing or not finite), and against the reference
    method: p (Wilcoxon) and p_holm.

    Args:
        records: per-image records (dicts or a frame).
        reference: the method of the paired tests (None: no tests).
        seed, n_resamples, ci_method: the bootstrap's.
        directions: ``{column: up|down}`` for metrics that are not registered in this process
            (a plug-in's records read without importing it: ``RunState.metric_directions``).

    Returns:
        One row per method and column.
    """
    table = per_image_table(records, directions=directions)
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
        raise RunFolderError(f"the records mix similarity settings (measure versions {versions}, "
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


# ----------------------------------------------------------------------------- a run's report


def metric_settings(config: ExperimentConfig | dict) -> str:
    """Each metric's settings as ``name (key=value, ...)`` for a table's caption (``config``: a
    validated config, or the plain resolved config a reader loads from a run folder)."""
    if isinstance(config, ExperimentConfig):
        by_metric = {name: vars(settings) for name, settings in config.metrics.items()}
    else:
        by_metric = {name: dict(settings or {})
                     for name, settings in (config.get("metrics") or {}).items()}
    parts = []
    for name, settings in by_metric.items():  # the measures' definitions: similarity_note
        fields = {k: ("/".join(map(str, v)) if isinstance(v, list) else v)
                  for k, v in settings.items() if v is not None}
        parts.append(f"{name} (" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")")
    return "; ".join(parts)


def table_meta(config: ExperimentConfig | dict, weights: str, run_label: str) -> dict:
    """What a table's caption says of its run: model, weights, data, targets, metric settings,
    seed, reference method, source and CI method (``config`` as for ``metric_settings``)."""
    plain = config.to_dict() if isinstance(config, ExperimentConfig) else config
    data_config = plain.get("data") or {}
    data = str(data_config.get("name", "?")) + (f", limit {data_config['limit']}"
                                                if data_config.get("limit") else "")
    if data_config.get("options"):
        data += ", " + ", ".join(f"{k}={v}" for k, v in data_config["options"].items())
    return {"name": plain.get("name", "experiment"),
            "model": (plain.get("model") or {}).get("name", "?"), "weights": weights,
            "data": data, "target": "top-1 prediction" if plain.get("target") == "predicted"
            else "dataset label (top-1 where none)", "metric_settings": metric_settings(config),
            "seed": plain.get("seed", 0), "reference": plain.get("reference"), "run": run_label,
            "ci_method": plain.get("ci_method", "bca")}


def figure_inputs(prepared: Prepared
                  ) -> tuple[np.ndarray, list[str], dict[str, torch.Tensor]] | None:
    """The figure images (cropped pixels), their titles and every method's maps: kept by the
    runner, computed here only for a method whose maps it did not keep."""
    config = prepared.config
    samples = list(prepared.dataset)[: config.figure_images]
    if not samples:
        return None
    info = prepared.model.harness_info
    images = [sample.load() for sample in samples]
    with warnings.catch_warnings():  # the run warned about small images already
        warnings.simplefilter("ignore")
        x = preprocess(images, info, device=prepared.device)
    ids = [s.id for s in samples]
    target = resolve_targets(prepared.model, x, [s.label for s in samples], ids, mode=config.target)
    maps = {}
    for m in config.methods:
        kept = figure_maps(prepared.output_dir, m.name, ids)
        maps[m.name] = kept if kept is not None else saliency_batched(
            m.registry_name, prepared.model, x, target, batch_size=config.batch_size,
            method_params=m.params)
    names = prepared.dataset.class_names or info.categories
    titles = [names[int(t)] if int(t) < len(names) else str(int(t)) for t in target]
    return crop_pixels(images, info), titles, maps


METHODS_FOLDER = "methods"  # methods/<name>/per_image.csv and maps.png: one folder per method


def method_folder(output_dir: Path, method: str) -> Path:
    """``<output_dir>/methods/<method>``: a method's files under the same names in every method's
    folder (so MLflow's Compare pairs them); display names are checked to be file names when the
    config is validated (``harness.files.check_file_name``; ``file_name`` turns ':' into
    '_')."""
    return Path(output_dir) / METHODS_FOLDER / file_name(method)


def method_artifacts(output_dir: Path, methods) -> dict[str, list[Path]]:
    """The files of each method that exist: ``per_image.csv`` and ``maps.png``."""
    return {method: [path for path in (method_folder(output_dir, method) / "per_image.csv",
                                       method_folder(output_dir, method) / "maps.png")
                     if path.exists()] for method in methods}


def write_report(config: ExperimentConfig, prepared: Prepared, records,
                 run_label: str) -> dict:
    """Everything a finished run writes besides its records: per-image CSVs (all, and one per
    method), tables, figures (the saliency grid, one grid per method, mean curves, randomization)
    and the reliability section (``harness.reliability``: ``tables/reliability.*``,
    ``figures/agreement.png``).

    Returns:
        ``summary`` (the table's frame), ``curves`` (mean curves per method), ``method_files``,
        ``similarity`` (the randomization measures' note), ``reliability`` (its paragraph for the
        MLflow description) and ``artifacts`` (what MLflow logs on the parent run).
    """
    output = prepared.output_dir
    info = prepared.model.harness_info
    summary = summarize(records, reference=config.reference, seed=config.seed,
                        ci_method=config.ci_method)
    table = per_image_table(records)
    atomic_write(output / "results.csv", table.to_csv(index=False))
    figures = output / "figures"
    methods = list(dict.fromkeys(table["method"]))
    for method in methods:
        atomic_write(method_folder(output, method) / "per_image.csv",
                     table[table["method"] == method].to_csv(index=False))
    inputs = figure_inputs(prepared)
    if inputs is not None:
        images, titles, maps = inputs
        saliency_grid(images, titles, maps, figures / "saliency_grid.png")
        for method, values in maps.items():
            saliency_grid(images, titles, {method: values},
                          method_folder(output, method) / "maps.png")
    plot_mean_curves(records, figures / "curves.png", seed=config.seed)
    plot_randomization(records, figures / "randomization.png", seed=config.seed)
    plot_randomization(records, figures / "smooth_mprt.png", seed=config.seed,
                       metric="smooth_mprt")
    if inputs is not None and config.agreement.top_k is not None:  # harness.agreement
        run_agreement(config, prepared, inputs[2])
    note = similarity_note(records)
    write_tables(summary, {**table_meta(config, info.weights, run_label), "similarity": note},
                 output / "tables")
    reliability = write_reliability(records, output, seed=config.seed, source=run_label,
                                    methods={m.name: m.registry_name for m in config.methods})
    return {"summary": summary, "curves": mean_curves(records),
            "method_files": method_artifacts(output, [m.name for m in config.methods]),
            "similarity": note, "reliability": reliability.note,
            "artifacts": [output / RESOLVED, output / PARQUET, output / "results.csv", figures,
                          output / "tables"]}


def mean_curves(records) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{method: {curve name: (x [K], the mean over images [K])}}`` (MLflow's step metrics
    ``curve.<name>`` and their x values ``curve.<name>.x``)."""
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name, by_method in metric_curves(records).items():
        for method, (xs, values) in by_method.items():
            curves.setdefault(method, {})[name] = (np.asarray(xs, dtype=float),
                                                   np.nanmean(values, axis=0))
    return curves

