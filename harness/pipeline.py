"""End-to-end: validated config -> records -> tables, figures -> MLflow. Used by ``harness run``
and ``harness table`` and usable from notebooks."""

from __future__ import annotations

import dataclasses
import json
import platform
import warnings
from pathlib import Path

import pandas as pd
import torch
import yaml

import harness
from harness.config import ExperimentConfig, from_dict
from harness.experiment import RESOLVED, STATE, figure_maps, load_records, prepare_run, run
from harness.io import atomic_write
from harness.report import (
    per_image_table,
    plot_mean_curves,
    plot_randomization,
    similarity_note,
    summarize,
    write_tables,
)


def metric_settings(config: ExperimentConfig) -> str:
    parts = []
    for name, settings in config.metrics.items():  # the measures' definitions: similarity_note
        fields = {k: ("/".join(map(str, v)) if isinstance(v, list) else v)
                  for k, v in vars(settings).items() if v is not None}
        parts.append(f"{name} (" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")")
    return "; ".join(parts)


def table_meta(config: ExperimentConfig, weights: str, run_label: str) -> dict:
    data = config.data.name + (f", limit {config.data.limit}" if config.data.limit else "")
    if config.data.options:
        data += ", " + ", ".join(f"{k}={v}" for k, v in config.data.options.items())
    return {"name": config.name, "model": config.model.name, "weights": weights, "data": data,
            "target": "top-1 prediction" if config.target == "predicted" else
            "dataset label (top-1 where none)", "metric_settings": metric_settings(config),
            "seed": config.seed, "reference": config.reference, "run": run_label,
            "ci_method": config.ci_method}


def saliency_figure(prepared, path: Path) -> Path | None:
    from harness.data import crop_pixels, preprocess, resolve_targets
    from harness.figures import saliency_grid
    from harness.methods import saliency_batched

    config = prepared.config
    samples = list(prepared.dataset)[: config.figure_images]
    if not samples:
        return None
    info = prepared.model.harness_info
    images = [sample.load() for sample in samples]
    with warnings.catch_warnings():  # the run warned about small images already
        warnings.simplefilter("ignore")
        x = preprocess(images, info, device=config.device)
    ids = [s.id for s in samples]
    target = resolve_targets(prepared.model, x, [s.label for s in samples], ids, mode=config.target)
    maps = {}
    for m in config.methods:  # kept by the runner; computed here only when it kept none
        kept = figure_maps(prepared.output_dir, m.name, ids)
        maps[m.name] = kept if kept is not None else saliency_batched(
            m.registry_name, prepared.model, x, target, batch_size=config.batch_size, **m.params)
    names = prepared.dataset.class_names or info.categories
    titles = [names[int(t)] if int(t) < len(names) else str(int(t)) for t in target]
    saliency_grid(crop_pixels(images, info), titles, maps, path)
    return path


def run_experiment(config: ExperimentConfig, *, resume: bool = False, progress: bool = True,
                   log=print) -> dict:
    """Run ``config``: records, per-image CSV, tables, figures, then MLflow (when enabled).
    Returns a dict with the summary DataFrame, the output folder and the MLflow run id."""
    if config.tracking.enabled:
        from harness.tracking import check_tracking

        check_tracking(config.tracking.uri)
    prepared = prepare_run(config, resume=resume)
    try:
        return _finish(config, prepared, resume=resume, progress=progress, log=log)
    finally:
        prepared.release()


def _finish(config: ExperimentConfig, prepared, *, resume: bool, progress: bool, log) -> dict:
    output = prepared.output_dir
    computed = sum(1 for _ in run(config, resume=resume, progress=progress, prepared=prepared))
    records = load_records(output)
    log(f"{computed} records computed, {len(records)} in {output / 'records.jsonl'}")
    summary = summarize(records, reference=config.reference, seed=config.seed,
                        ci_method=config.ci_method)
    info = prepared.model.harness_info
    atomic_write(output / "results.csv", per_image_table(records).to_csv(index=False))
    figures = output / "figures"
    saliency_figure(prepared, figures / "saliency_grid.png")
    plot_mean_curves(records, figures / "curves.png", seed=config.seed)
    plot_randomization(records, figures / "randomization.png", seed=config.seed)
    state = json.loads((output / STATE).read_text())
    state["weights"] = info.weights
    atomic_write(output / STATE, json.dumps(state, indent=2))
    run_id = None
    if config.tracking.enabled:
        from harness.models import weights_fingerprint
        from harness.tracking import git_commit, log_run

        tags = {
            "harness.git_commit": git_commit(), "harness.config_hash": config.hash(),
            "harness.dataset_fingerprint": prepared.dataset.fingerprint(),
            "harness.model": config.model.name, "harness.weights": info.weights,
            "harness.weights_sha256": weights_fingerprint(prepared.model),
            "harness.version": harness.__version__, "torch.version": torch.__version__,
            "harness.device": config.device if config.device != "cpu" else
            f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
            "harness.target": config.target, "harness.n_images": str(len(prepared.dataset)),
        }
        if similarity_note(records):
            tags["harness.similarity"] = similarity_note(records)
        run_id = log_run(
            uri=config.tracking.uri, experiment=config.tracking.experiment, run_name=config.name,
            params=config.to_dict(), tags=tags, summary=summary,
            method_params={m.name: {"registry_name": m.registry_name, **m.params}
                           for m in config.methods},
            artifacts=[output / RESOLVED, output / "records.jsonl", output / "results.csv",
                       figures],
            parent_run_id=state.get("mlflow_run_id") if resume else None)
        state["mlflow_run_id"] = run_id
        atomic_write(output / STATE, json.dumps(state, indent=2))
    label = f"MLflow run {run_id}" if run_id else str(output)
    write_tables(summary, {**table_meta(config, info.weights, label),
                           "similarity": similarity_note(records)}, output / "tables")
    if run_id:  # the caption names the run id, so the tables are logged after the run exists
        from harness.tracking import log_tables

        log_tables(config.tracking.uri, run_id, output / "tables")
    return {"summary": summary, "output_dir": output, "run_id": run_id, "weights": info.weights,
            "similarity": similarity_note(records)}


def _looks_like_run_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text.lower())


def table_for(run: str, *, tracking_uri: str = "sqlite:///mlflow.db",
              reference: str | None = None, out: str | Path | None = None,
              seed: int | None = None, ci_method: str | None = None
              ) -> tuple[pd.DataFrame, list[Path]]:
    """Tables for ``run``: an output folder of ``harness run`` or an MLflow parent run id.
    ``reference``, ``seed`` and ``ci_method`` override the run's config."""
    folder = Path(run)
    run_label = str(folder)
    weights = "?"
    if folder.is_dir() and not (folder / "records.jsonl").exists():
        raise ValueError(f"{run} is a folder but not a harness run folder (it has no "
                         "records.jsonl); give the output_dir of `harness run` or an MLflow "
                         "run id")
    if not folder.exists() and ("/" in run or not _looks_like_run_id(run)):
        raise ValueError(f"{run!r} is neither a run folder (no such folder) nor an MLflow run id "
                         "(32 hexadecimal characters)")
    if not (folder / "records.jsonl").exists():
        from harness.tracking import download_run

        folder, tags = download_run(run, tracking_uri, Path(out or ".") / f"mlflow-{run[:8]}")
        run_label = f"MLflow run {run}"
        weights = tags.get("harness.weights", "?")
    else:
        state = json.loads((folder / STATE).read_text()) if (folder / STATE).exists() else {}
        weights = state.get("weights", "?")
        if state.get("mlflow_run_id"):
            run_label = f"MLflow run {state['mlflow_run_id']}"
    config = from_dict(yaml.safe_load((folder / RESOLVED).read_text()))
    if ci_method is not None:
        config = dataclasses.replace(config, ci_method=ci_method)
    records = load_records(folder)
    randomization = config.metrics.get("model_randomization")
    if randomization is not None and any(r.get("metric") == "model_randomization"
                                         and "measure_version" not in r for r in records):
        # harness 0.1 compared the method's own maps (its configs had no map_normalisation key)
        config = dataclasses.replace(config, metrics={
            **config.metrics,
            "model_randomization": dataclasses.replace(randomization, map_normalisation="method")})
    reference = reference or config.reference
    seed = config.seed if seed is None else seed
    summary = summarize(records, reference=reference, seed=seed, ci_method=config.ci_method)
    meta = table_meta(config, weights, run_label)
    meta.update(reference=reference, seed=seed, similarity=similarity_note(records))
    paths = write_tables(summary, meta, Path(out) if out else folder / "tables")
    return summary, paths
