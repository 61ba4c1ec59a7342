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

from harness.stats import bootstrap_ci, holm, paired_wilcoxon

CI_NAMES = {"bca": "BCa", "percentile": "percentile"}
DIRECTION = {"deletion": "down", "insertion": "up", "morf": "down", "lerf": "up", "abpc": "up"}
ARROWS = {"up": ("↑", r"$\uparrow$"), "down": ("↓", r"$\downarrow$")}


def direction(metric: str) -> str:
    """``up`` if higher is better; randomization similarities: lower (more sensitive) is better."""
    return DIRECTION.get(metric, "down")


def per_image_table(records: Sequence[dict]) -> pd.DataFrame:
    """One row per (method, metric column, image) with the value the table aggregates."""
    frame = pd.DataFrame(list(records))
    if frame.empty:
        raise ValueError("no records to report")
    rows = frame[frame["metric"] != "model_randomization"][["method", "metric", "image_id",
                                                            "value"]]
    if "measure" in frame and (frame["metric"] == "model_randomization").any():
        randomization = frame[frame["metric"] == "model_randomization"]
        last = randomization[randomization["step"] == randomization["step"].max()]
        last = last.assign(metric="rand_" + last["measure"])
        rows = pd.concat([rows, last[["method", "metric", "image_id", "value"]]])
    return rows.reset_index(drop=True)


def summarize(records: Sequence[dict], *, reference: str | None = None, seed: int = 0,
              n_resamples: int = 10_000, ci_method: str = "bca") -> pd.DataFrame:
    """Per (method, metric): mean, ci_low, ci_high (``harness.stats.bootstrap_ci`` with
    ``ci_method``), n, undefined (values missing), and against the reference method: p (Wilcoxon)
    and p_holm."""
    table = per_image_table(records)
    methods = list(dict.fromkeys(table["method"]))
    metrics = list(dict.fromkeys(table["metric"]))
    rows = []
    for method in methods:
        for metric in metrics:
            values = table[(table["method"] == method) & (table["metric"] == metric)]
            finite = values["value"].dropna().to_numpy(dtype=float)
            row = {"method": method, "metric": metric, "n": int(finite.size),
                   "undefined": int(len(values) - finite.size)}
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


def _cell(row, bold: bool, latex: bool) -> str:
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
    pick = column["mean"].idxmax() if direction(metric) == "up" else column["mean"].idxmin()
    return column.loc[pick, "method"]


def caption(meta: dict, summary: pd.DataFrame) -> str:
    n = int(summary["n"].max()) if len(summary) else 0
    parts = [f"Model {meta.get('model', '?')} ({meta.get('weights', '?')}), data "
             f"{meta.get('data', '?')}, n = {n} images, targets: {meta.get('target', '?')}."]
    if meta.get("metric_settings"):
        parts.append(f"Metrics: {meta['metric_settings']}.")
    method = CI_NAMES[meta.get("ci_method", "bca")]
    parts.append(f"Mean [95% {method} bootstrap CI of the mean] "
                 f"({meta.get('n_resamples', 10_000):,} resamples, seed {meta.get('seed', 0)}); "
                 "best per column in bold.")
    if meta.get("reference"):
        parts.append(f"* / **: paired Wilcoxon signed-rank test against {meta['reference']}, "
                     "Holm-corrected across the table, p < 0.05 / p < 0.01.")
    parts.append(f"Source: {meta.get('run', '?')}.")
    return " ".join(parts)


def render_tables(summary: pd.DataFrame, meta: dict) -> dict[str, str]:
    """LaTeX (booktabs), Markdown and CSV text of the summary."""
    methods = list(dict.fromkeys(summary["method"]))
    metrics = list(dict.fromkeys(summary["metric"]))
    best = {metric: _best(summary, metric) for metric in metrics}
    lookup = {(r["method"], r["metric"]): r for r in summary.to_dict("records")}
    text_caption = caption(meta, summary)
    # Markdown
    header = ["method"] + [f"{m} {ARROWS[direction(m)][0]}" for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        cells = [method] + [_cell(lookup[(method, m)], best[m] == method, latex=False)
                            for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + f"\n\n{text_caption}\n"
    # LaTeX
    def escape(text: str) -> str:
        return (text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
                .replace("<", "$<$").replace(">", "$>$"))

    latex_header = " & ".join(["Method"] + [f"{escape(m)} {ARROWS[direction(m)][1]}"
                                            for m in metrics])
    body = []
    for method in methods:
        cells = [escape(method)] + [_cell(lookup[(method, m)], best[m] == method, latex=True)
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
        path.write_text(text)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- figures


def plot_mean_curves(records: Sequence[dict], path: str | os.PathLike, *, seed: int = 0
                     ) -> str | None:
    """Mean deletion/insertion (and MoRF/LeRF) curves per method with 95% bootstrap bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from harness.metrics import auc

    frame = pd.DataFrame([r for r in records if r.get("curve") is not None])
    if frame.empty:
        return None
    metrics = list(dict.fromkeys(frame["metric"]))
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    rng = np.random.default_rng(seed)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for method in dict.fromkeys(frame["method"]):
            curves = np.array(frame[(frame["metric"] == metric) &
                                    (frame["method"] == method)]["curve"].tolist(), dtype=float)
            if curves.size == 0:
                continue
            xs = np.linspace(0, 1, curves.shape[1])
            mean = curves.mean(axis=0)
            picks = rng.integers(0, len(curves), (2000, len(curves)))
            boot = curves[picks].mean(axis=1)
            low, high = np.quantile(boot, [0.025, 0.975], axis=0)
            area = float(auc(torch.from_numpy(mean)))
            axis.plot(xs, mean, label=f"{method} (AUC of mean {area:.3f})")
            axis.fill_between(xs, low, high, alpha=0.2)
        axis.set_title(metric)
        axis.set_xlabel("fraction of pixels changed")
        axis.set_ylim(0, 1.02)
    axes[0, 0].set_ylabel("score of the target class")
    for axis in axes[0]:
        axis.legend(fontsize=7)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)


def plot_randomization(records: Sequence[dict], path: str | os.PathLike, *, seed: int = 0
                       ) -> str | None:
    """Similarity-versus-block curves with 95% bands, from randomization records."""
    from harness.sanity.figures import similarity_curves
    from harness.sanity.randomization import RandomizationResult

    rows = [r for r in records if r["metric"] == "model_randomization"]
    if not rows:
        return None
    results = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        blocks = tuple(dict.fromkeys(r["block"] for r in sorted(mine, key=lambda r: r["step"])))
        results.append(RandomizationResult(method, mine[0]["mode"], mine[0]["target_mode"], seed,
                                           blocks, mine))
    measures = tuple(dict.fromkeys(r["measure"] for r in rows))
    return similarity_curves(results, path, measures=measures, seed=seed)
