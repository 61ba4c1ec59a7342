"""``harness meta CONFIG``: the meta-evaluation's outputs and MLflow run.

Writes to ``meta.output_dir`` (default ``<output_dir>-meta``, beside the run folder as
``--smoke``'s ``<output_dir>-smoke``: a run folder holds only what a run wrote):
``config.resolved.yaml`` (the config with its ``meta:`` section), ``scores.parquet`` (every
per-image value of every pass), ``kept.csv`` (which images each perturbation kept),
``tables/meta.{md,csv}`` (the MC table) and ``figures/meta_area.png`` (MetaQuantus' area plot:
per metric column the diamond with corners IAC_NR (top), IEC_AR (right), IEC_NR (bottom), IAC_AR
(left), one per perturbation space, over the ideal estimator's unit diamond). With tracking, one
MLflow run (``harness.role`` = ``meta-evaluation``) with the config and ``meta.*`` as params,
``<column>.MC``, ``<column>.<space>.MC``, ``.IAC_NR``, ... as metrics and the folder's files as
artifacts; its id is kept in ``tracking.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from harness.allocator import tune_cpu_allocator  # noqa: E402
from harness.config import (  # noqa: E402
    ExperimentConfig,
    _plain,
    apply_overrides,
    load_config,
)
from harness.datasets import load_dataset  # noqa: E402
from harness.distributed import ONE_PROCESS, resolve_device  # noqa: E402
from harness.files import RunLock, atomic_path, atomic_save, atomic_write  # noqa: E402
from harness.meta.evaluate import MetaResult, meta_evaluate, passes  # noqa: E402
from harness.meta.settings import MetaSettings, meta_settings  # noqa: E402
from harness.models import load_model  # noqa: E402
from harness.provenance import git_commit  # noqa: E402
from harness.runner import (  # noqa: E402
    check_filter_model,
    check_layers,
    check_output_dir,
    check_steps,
)
from harness.tracking import (  # noqa: E402
    LiveRun,
    check_tracking,
    flat_params,
    masked,
    resolve_tracking,
    standard_tags,
)
from harness.version import __version__  # noqa: E402

PARTS = ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR")


def overall(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per metric column: ``MC`` (the mean over the perturbation spaces, as MetaQuantus'
    area plot titles) and ``MC_<space>``."""
    rows = []
    for column, part in summary.groupby("metric", sort=False):
        row = {"metric": column, "direction": part["direction"].iloc[0]}
        for item in part.to_dict("records"):
            row[f"MC_{item['space']}"] = item["MC"]
        values = part["MC"].to_numpy(dtype=float)
        row["MC"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def render_markdown(result: MetaResult, config: ExperimentConfig) -> str:
    """The MC table and the per-space details, with what the numbers are."""
    settings = result.settings
    spaces = list(settings.tests)
    table = overall(result.summary)
    lines = ["# Meta-evaluation of the metrics (MetaQuantus: noise resilience and adversarial "
             "reactivity)", "",
             f"{config.model.name} on {config.data.name}, methods "
             f"{', '.join(result.methods)}; K = {settings.n_perturbations} "
             f"perturbations x {settings.iterations} iterations per test, {result.passes} passes "
             f"in all. Model tests: weights x N(1, std^2), std {settings.model_resilience_std} "
             f"(NR) / {settings.model_adversary_std} (AR); input tests: x + U(-a, a), a "
             f"{settings.input_resilience_noise} (NR) / {settings.input_adversary_noise} (AR).",
             "", "| column | MC | " + " | ".join(f"MC {s}" for s in spaces) + " |",
             "|---|---|" + "---|" * len(spaces)]
    for row in table.to_dict("records"):
        lines.append(f"| {row['metric']} {'↑' if row['direction'] == 'up' else '↓'} | "
                     f"{_number(row['MC'])} | "
                     + " | ".join(_number(row.get(f"MC_{s}", math.nan)) for s in spaces) + " |")
    lines += ["", "| column | space | IAC_NR | IAC_AR | IEC_NR | IEC_AR | MC ± std | images kept "
              "NR / AR |", "|---|---|---|---|---|---|---|---|"]
    for row in result.summary.to_dict("records"):
        lines.append(f"| {row['metric']} | {row['space']} | "
                     + " | ".join(_number(row[f"{p}_mean"]) for p in PARTS)
                     + f" | {_number(row['MC'])} ± {_number(row['MC_std'])} | "
                     f"{row['kept_NR']:.1f} / {row['kept_AR']:.1f} of {row['n_images']} |")
    lines += ["", "MC in [0, 1] (1: the ideal estimator): the mean of IAC_NR (Wilcoxon p between "
              "unperturbed and minor-perturbation scores: high = the scores did not move), IAC_AR "
              "(1 - p under disruptive perturbations: high = they moved), IEC_NR (share of the "
              "methods' per-image order kept) and IEC_AR (share of scores that got worse). n/a: "
              "no image kept (e.g. no disruptive perturbation changed a prediction), left out of "
              "the means as in MetaQuantus.", ""]
    return "\n".join(lines)


def plot_area(result: MetaResult, path: str | os.PathLike) -> str:
    """MetaQuantus' area plot (``helpers/plotting.py`` ``plot_multiple_estimator_area``): per
    column, per space the quadrilateral (-IAC_AR, 0), (0, IAC_NR), (IEC_AR, 0), (0, -IEC_NR) over
    the ideal unit diamond, titled with the column's MC."""
    summary = result.summary
    columns = list(dict.fromkeys(summary["metric"]))
    mc = overall(summary).set_index("metric")["MC"]
    n_cols = min(4, len(columns))
    n_rows = math.ceil(len(columns) / n_cols)
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(3.4 * n_cols, 3.4 * n_rows),
                                squeeze=False)
    styles = {"model": {"alpha": 0.45, "hatch": "/", "color": "tab:blue"},
              "input": {"alpha": 0.6, "color": "tab:orange"}}
    for axis, column in zip(axes.flat, columns, strict=False):
        axis.fill([-1, 0, 1, 0], [0, 1, 0, -1], color="black", alpha=0.075, label="ideal")
        for row in summary[summary["metric"] == column].to_dict("records"):
            values = {p: row[f"{p}_mean"] if math.isfinite(row[f"{p}_mean"]) else 0.0
                      for p in PARTS}
            axis.fill([-values["IAC_AR"], 0, values["IEC_AR"], 0],
                      [0, values["IAC_NR"], 0, -values["IEC_NR"]], edgecolor="black",
                      label=row["space"], **styles[row["space"]])
        for text, where in [("IAC_AR", (-1, 0.05)), ("IAC_NR", (0.05, 0.9)),
                            ("IEC_AR", (0.62, 0.05)), ("IEC_NR", (0.05, -0.95))]:
            axis.annotate(text, where, fontsize=7)
        axis.set_xlim(-1.05, 1.05)
        axis.set_ylim(-1.05, 1.05)
        axis.set_title(f"{column} (MC {_number(mc[column])})", fontsize=9)
        axis.set_xticks([-1, -0.5, 0, 0.5, 1], ["1", "0.5", "0", "0.5", "1"], fontsize=7)
        axis.set_yticks([-1, -0.5, 0, 0.5, 1], ["1", "0.5", "0", "0.5", "1"], fontsize=7)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6, loc="lower left")
    for axis in list(axes.flat)[len(columns):]:
        axis.axis("off")
    figure.tight_layout()
    atomic_save(path, lambda temporary: figure.savefig(temporary, dpi=110))
    plt.close(figure)
    return str(path)


def write_meta(result: MetaResult, config: ExperimentConfig, folder: Path) -> list[Path]:
    """Every output file (atomically); returns the paths."""
    resolved = {**config.to_dict(), "meta": _plain(dataclasses.asdict(result.settings))}
    paths = [atomic_write(folder / "config.resolved.yaml",
                          yaml.safe_dump(resolved, sort_keys=False))]
    with atomic_path(folder / "scores.parquet") as temporary:
        result.scores.to_parquet(temporary, index=False)
    paths.append(folder / "scores.parquet")
    paths.append(atomic_write(folder / "kept.csv", result.kept.to_csv(index=False)))
    paths.append(atomic_write(folder / "tables" / "meta.md", render_markdown(result, config)))
    table = result.summary.merge(overall(result.summary)[["metric", "MC"]].rename(
        columns={"MC": "MC_overall"}), on="metric")
    paths.append(atomic_write(folder / "tables" / "meta.csv", table.to_csv(index=False)))
    paths.append(Path(plot_area(result, folder / "figures" / "meta_area.png")))
    return paths


def load_meta(path: str | os.PathLike | dict, overrides: list[str] | None = None
              ) -> tuple[ExperimentConfig, MetaSettings]:
    """An experiment config (a YAML file or a mapping) and its ``meta:`` section (defaults where
    absent), validated before any compute (``harness.config.load_config``; errors name the key, e.g.
    ``meta.iterations``).

    Raises:
        ConfigError: a missing or invalid file, or a config or ``meta:`` section that cannot run.
    """
    config = load_config(path, overrides)  # checks the file, the config and its meta: section
    raw = path if isinstance(path, dict) else yaml.safe_load(Path(path).read_text()) or {}
    raw = apply_overrides(raw, overrides or [])
    return config, meta_settings(raw.get("meta"), config.metrics, [m.name for m in config.methods])


def run_meta(config: ExperimentConfig, settings: MetaSettings, *, log=print,
             progress: bool = True, source: str = "harness meta") -> dict:
    """Load the model and data, run the meta-evaluation, write its outputs and (with tracking)
    its MLflow run. Returns the summary, the output folder, the files and the MLflow run id."""
    folder = check_output_dir(settings.output_dir or f"{config.output_dir}-meta")
    tracking = None
    if config.tracking.enabled:
        uri, experiment, where = resolve_tracking(config.tracking.uri, config.tracking.experiment)
        log(f"MLflow: {masked(uri)} (from {where}), experiment {experiment!r}")
        check_tracking(uri)
        tracking = (uri, experiment)
    with RunLock(folder):
        device = resolve_device(config.device, ONE_PROCESS)
        if torch.device(device).type == "cpu":
            tune_cpu_allocator()
        model = load_model(config.model.name, weights=config.model.weights,
                           checkpoint=config.model.checkpoint, seed=config.seed, device=device)
        check_steps(config, model)
        check_layers(config, model)
        dataset = load_dataset(config.data.name, limit=config.data.limit, seed=config.data.seed,
                               **config.data.options)
        check_filter_model(dataset, model)
        live = _start(tracking, config, settings, folder, model, source, log)
        try:
            result = meta_evaluate(config, settings, model, dataset,
                                   progress=log if progress else None)
            paths = write_meta(result, config, folder)
        except BaseException as error:
            if live is not None:
                live.finish(summary=None, curves={}, artifacts=[], method_artifacts={},
                            status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED",
                            error=f"{type(error).__name__}: {error}")
            raise
        if live is not None:
            live.finish(summary=None, curves={}, method_artifacts={},
                        artifacts=[folder / "config.resolved.yaml", folder / "scores.parquet",
                                   folder / "kept.csv", folder / "tables", folder / "figures"],
                        tags={"mlflow.note.content": _description(result, config)},
                        parent_metrics=parent_metrics(result))
    return {"summary": result.summary, "result": result, "output_dir": folder, "paths": paths,
            "run_id": live.parent_id if live is not None else None,
            "tracking_offline": live.offline if live is not None else None}


def parent_metrics(result: MetaResult) -> dict[str, tuple[float, int]]:
    """``{<column>.MC: (value, 0), <column>.<space>.MC: ..., <column>.<space>.IAC_NR: ...}``
    (finite values only)."""
    out: dict[str, tuple[float, int]] = {}
    for row in overall(result.summary).to_dict("records"):
        out[f"{row['metric']}.MC"] = (row["MC"], 0)
    for row in result.summary.to_dict("records"):
        prefix = f"{row['metric']}.{row['space']}"
        out[f"{prefix}.MC"] = (row["MC"], 0)
        for part in PARTS:
            out[f"{prefix}.{part}"] = (row[f"{part}_mean"], 0)
    return {k: (float(v), step) for k, (v, step) in out.items() if math.isfinite(v)}


def _description(result: MetaResult, config: ExperimentConfig) -> str:
    table = overall(result.summary)
    return (f"**{config.name}** meta-evaluation (MetaQuantus, Hedström et al. 2023): "
            f"{result.passes} passes, K = {result.settings.n_perturbations}, "
            f"{result.settings.iterations} iterations. MC per column (1 = ideal): "
            + ", ".join(f"`{r['metric']}` {_number(r['MC'])}" for r in table.to_dict("records"))
            + ". Tables: tables/meta.md; figure: figures/meta_area.png.")


def _start(tracking, config, settings, folder, model, source, log):
    """The MLflow run (RUNNING while the passes compute), or None without tracking; its id is
    kept in ``<folder>/tracking.json``."""
    if tracking is None:
        return None

    def remember(uri: str, experiment: str, parent_id: str | None,
                 child_ids: dict[str, str]) -> None:
        atomic_write(folder / "tracking.json", json.dumps(
            {"output_dir": str(folder), "mlflow_uri": uri, "mlflow_experiment": experiment,
             "mlflow_run_id": parent_id}, indent=2))

    live = LiveRun(*tracking, remember=remember, log=log, update_seconds=0, output_dir=folder)
    commit = git_commit()
    params = flat_params("", {k: v for k, v in config.to_dict().items() if k != "tracking"}, {})
    params.update(flat_params("meta", _plain(dataclasses.asdict(settings)), {}))
    tags = {**standard_tags(commit, source), "harness.git_commit": commit,
            "harness.config_hash": config.hash(), "harness.model": config.model.name,
            "harness.weights": model.harness_info.weights, "harness.version": __version__,
            "harness.role": "meta-evaluation", "harness.passes": str(passes(settings))}
    live.start(run_name=f"{config.name} meta-evaluation", params=params, tags=tags, methods={},
               description="meta-evaluation running", long_params_folder=folder / "tracking")
    return live
