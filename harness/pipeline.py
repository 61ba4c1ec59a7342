"""End-to-end: validated config -> records -> tables, figures -> MLflow. Used by ``harness run``
and ``harness table`` and usable from notebooks."""

from __future__ import annotations

import dataclasses
import json
import platform
import warnings
from collections.abc import Callable
from pathlib import Path
from shlex import quote

import numpy as np
import pandas as pd
import torch
import yaml

import harness
from harness.config import ExperimentConfig, from_dict
from harness.experiment import (
    RESOLVED,
    STATE,
    figure_maps,
    load_records,
    prepare_run,
    run,
)
from harness.io import RunLock, atomic_write
from harness.report import (
    metric_curves,
    per_image_table,
    plot_mean_curves,
    plot_randomization,
    similarity_note,
    summarize,
    write_tables,
)
from harness.store import PARQUET, load_frame, record_keys


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


def figure_inputs(prepared) -> tuple[np.ndarray, list[str], dict[str, torch.Tensor]] | None:
    """The figure images (cropped pixels), their titles and every method's maps: kept by the
    runner, computed here only for a method whose maps it did not keep."""
    from harness.data import crop_pixels, preprocess, resolve_targets
    from harness.methods import saliency_batched

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


def write_outputs(config: ExperimentConfig, prepared, records, run_label: str) -> dict:
    """Everything a finished run writes besides its records: per-image CSVs (all, and one per
    method), tables, figures (the saliency grid, one grid per method, mean curves, randomization).
    Returns the summary and what MLflow logs."""
    from harness.figures import saliency_grid

    output = prepared.output_dir
    info = prepared.model.harness_info
    summary = summarize(records, reference=config.reference, seed=config.seed,
                        ci_method=config.ci_method)
    table = per_image_table(records)
    atomic_write(output / "results.csv", table.to_csv(index=False))
    figures = output / "figures"
    method_files: dict[str, list[Path]] = {}
    for method in dict.fromkeys(table["method"]):
        path = output / "methods" / f"{method}.csv"
        atomic_write(path, table[table["method"] == method].to_csv(index=False))
        method_files[method] = [path]
    inputs = figure_inputs(prepared)
    if inputs is not None:
        images, titles, maps = inputs
        saliency_grid(images, titles, maps, figures / "saliency_grid.png")
        for method, values in maps.items():
            path = figures / "methods" / f"{method}.png"
            saliency_grid(images, titles, {method: values}, path)
            method_files.setdefault(method, []).append(path)
    plot_mean_curves(records, figures / "curves.png", seed=config.seed)
    plot_randomization(records, figures / "randomization.png", seed=config.seed)
    note = similarity_note(records)
    write_tables(summary, {**table_meta(config, info.weights, run_label), "similarity": note},
                 output / "tables")
    from harness.reliability import write_reliability  # tables/reliability.*, figures/agreement

    reliability = write_reliability(records, output, seed=config.seed, source=run_label,
                                    methods={m.name: m.registry_name for m in config.methods})
    return {"summary": summary, "curves": mean_curves(records), "method_files": method_files,
            "similarity": note, "artifacts": [output / RESOLVED, output / PARQUET,
                                              output / "results.csv", figures, output / "tables"],
            "reliability": reliability.note}


def mean_curves(records) -> dict[str, dict[str, np.ndarray]]:
    """``{method: {curve name: the mean over images}}`` (MLflow's step metrics)."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name, by_method in metric_curves(records).items():
        for method, (_, values) in by_method.items():
            curves.setdefault(method, {})[name] = np.nanmean(values, axis=0)
    return curves


class RunningMeans:
    """Per method and table column, the running mean and n of the per-image values, for the
    live MLflow metrics (fed each unit's records)."""

    def __init__(self):
        self.sums: dict[str, dict[str, list[float]]] = {}

    def add(self, records: list[dict]) -> None:
        if not records:
            return
        table = per_image_table(records).dropna(subset=["value"])
        for (method, column), values in table.groupby(["method", "metric"])["value"]:
            entry = self.sums.setdefault(method, {}).setdefault(column, [0.0, 0])
            entry[0] += float(values.sum())
            entry[1] += int(values.size)

    def snapshot(self) -> dict[str, dict[str, tuple[float, int]]]:
        return {method: {column: (total / n, n) for column, (total, n) in columns.items() if n}
                for method, columns in self.sums.items()}


def describe_metrics(config: ExperimentConfig) -> tuple[str, str]:
    """(A Markdown description of the run for ``mlflow.note.content``: each metric's direction,
    definition and source; the ``metric=direction`` list for the ``harness.metric_directions``
    tag)."""
    from harness.metrics import get_metric

    lines = [f"**{config.name}**: {config.model.name} on {config.data.name}, targets: "
             f"{config.target}. Per-image values; ↑ higher is better, ↓ lower is better.", ""]
    directions = []
    for name, settings in config.metrics.items():
        entry = get_metric(name)
        arrow = entry.directions_text()
        lines.append(f"- `{name}` {arrow} {entry.summary} ({entry.citation}). Settings: "
                     f"{', '.join(f'{k}={v}' for k, v in vars(settings).items() if v is not None)}")
        directions.extend([f"{c}={d}" for c, d in entry.column_directions]
                          or [f"{name}={entry.direction}"])
    return "\n".join(lines), ",".join(directions)


def column_tags(summary: pd.DataFrame, description: str) -> dict[str, str]:
    """The directions of the table's columns, which name the logged metrics (``rand_<measure>``,
    ``road_morf`` lower and ``road_lerf`` higher, ...), where the run's start knew only each
    metric's: the ``harness.metric_directions`` tag and a line added to the description."""
    columns = dict(zip(summary["metric"], summary["direction"], strict=True))
    listed = ", ".join(f"`{c}` {'↑' if d == 'up' else '↓'}" for c, d in columns.items())
    return {"harness.metric_directions": ",".join(f"{c}={d}" for c, d in columns.items()),
            "mlflow.note.content": f"{description}\n\nTable columns (the logged metrics' "
                                   f"names) and their better direction: {listed}."}


def tracking_payload(config: ExperimentConfig, prepared, source: str) -> dict:
    """What the parent and child runs are created with (kept in the run's state, so that
    ``harness log`` can create them later without the model)."""
    from harness.tracking import flat_params, git_commit, standard_tags

    info = prepared.model.harness_info
    description, directions = describe_metrics(config)
    commit = git_commit()
    tags = {
        **standard_tags(commit, source),
        "harness.git_commit": commit, "harness.config_hash": config.hash(),
        "harness.model": config.model.name, "harness.weights": info.weights,
        "harness.version": harness.__version__, "torch.version": torch.__version__,
        "harness.device": (prepared.device if prepared.device != "cpu" else
                           f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)")
        + (f" x {prepared.world.size} ranks" if prepared.world.distributed else ""),
        "harness.target": config.target, "harness.n_images": str(len(prepared.dataset)),
        "harness.metric_directions": directions,
    }
    params = flat_params("", {k: v for k, v in config.to_dict().items() if k != "tracking"}, {})
    methods = {m.name: {"registry_name": m.registry_name, **m.params} for m in config.methods}
    return {"run_name": config.name, "params": params, "tags": tags, "methods": methods,
            "description": description}


def _save_state(output: Path) -> Callable[[dict], None]:
    return lambda state: atomic_write(output / STATE, json.dumps(state, indent=2))


def run_experiment(config: ExperimentConfig, *, resume: bool = False, progress: bool = True,
                   log=print, source: str = "harness run", world=None) -> dict:
    """Run ``config``: records (streamed to disk), then per-image CSVs, tables and figures; with
    tracking, the MLflow runs live from start to end (``harness.tracking``). Returns a dict with
    the summary DataFrame, the output folder and the MLflow run id.

    Under torchrun (``harness.distributed``) every rank computes its share of the work units;
    rank 0 alone checks the tracking store, writes the tables, figures and MLflow, and returns
    the summary (the other ranks return ``summary: None``)."""
    from harness.distributed import agree, close, detect, init, resolve_device

    world = world or detect()
    init(world, resolve_device(config.device, world))
    try:
        tracking, failure = None, None
        if config.tracking.enabled and world.leader:
            from harness.tracking import (
                TrackingUnavailableError,
                check_tracking,
                resolve_tracking,
            )

            uri, experiment, where = resolve_tracking(config.tracking.uri,
                                                      config.tracking.experiment)
            log(f"MLflow: {uri} (from {where}), experiment {experiment!r}")
            try:
                check_tracking(uri)
            except TrackingUnavailableError as error:
                failure = error
            tracking = (uri, experiment)
        shared = agree(world, None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if shared is not None:
            raise RuntimeError(f"rank 0 stopped the run: {shared}")
        prepared = prepare_run(config, resume=resume, world=world)
        try:
            if not world.leader:
                computed = sum(1 for _ in run(config, prepared=prepared, progress=progress))
                return {"summary": None, "output_dir": prepared.output_dir, "run_id": None,
                        "weights": prepared.model.harness_info.weights, "similarity": None,
                        "tracking_offline": None, "computed": computed, "rank": world.rank}
            return _execute(config, prepared, tracking, progress=progress, log=log,
                            source=source)
        finally:
            prepared.release()
    finally:
        close(world)


def _execute(config: ExperimentConfig, prepared, tracking, *, progress: bool, log,
             source: str) -> dict:
    output = prepared.output_dir
    state = json.loads((output / STATE).read_text())
    state["output_dir"] = str(output)
    live = None
    if tracking is not None:
        from harness.tracking import LiveRun

        payload = tracking_payload(config, prepared, source)
        state["tracking_payload"] = payload
        state.pop("complete", None)
        _save_state(output)(state)
        live = LiveRun(*tracking, state=state, save_state=_save_state(output), log=log,
                       update_seconds=config.tracking.update_seconds)
        live.start(**payload, long_params_folder=output / "tracking")
    running = RunningMeans()

    def unit_done(records: list[dict]) -> None:  # after each work unit: the live metrics
        running.add(records)
        live.progress(running.snapshot)

    computed = 0
    try:
        if live is not None and record_keys(output):  # resuming: what is stored counts
            running.add(load_records(output))
        for _ in run(config, prepared=prepared, progress=progress,
                     on_unit=unit_done if live is not None else None):
            computed += 1
        state = {**json.loads((output / STATE).read_text()), "output_dir": str(output)}
        records = load_records(output)
        log(f"{computed} records computed, {len(records)} in {output / PARQUET}"
            + (f" ({prepared.world.size} ranks)" if prepared.world.distributed else ""))
        info = prepared.model.harness_info
        state["weights"] = info.weights
        run_id = live.parent_id if live is not None else None
        outputs = write_outputs(config, prepared, records,
                                f"MLflow run {run_id}" if run_id else str(output))
        state["complete"] = True
        final_tags = {}
        if live is not None:
            from harness.models import weights_fingerprint

            final_tags = {"harness.dataset_fingerprint": prepared.dataset.fingerprint(),
                          "harness.weights_sha256": weights_fingerprint(prepared.model),
                          **column_tags(outputs["summary"], payload["description"])}
            final_tags["mlflow.note.content"] += f"\n\n{outputs['reliability']}"
            if outputs["similarity"]:
                final_tags["harness.similarity"] = outputs["similarity"]
            state["tracking_final_tags"] = final_tags
        _save_state(output)(state)
    except KeyboardInterrupt:
        if live is not None:
            live.finish(summary=None, curves={}, artifacts=[], method_artifacts={},
                        status="KILLED", error="interrupted (Ctrl-C)")
        raise
    except BaseException as error:
        if live is not None:
            live.finish(summary=None, curves={}, artifacts=[], method_artifacts={},
                        status="FAILED", error=f"{type(error).__name__}: {error}")
        raise
    if live is not None:
        live.finish(summary=outputs["summary"], curves=outputs["curves"],
                    artifacts=outputs["artifacts"], method_artifacts=outputs["method_files"],
                    tags=final_tags)
        if live.offline:
            log(f"MLflow did not get everything ({live.offline}); the results are complete in "
                f"{output}; log them with: harness log {quote(str(output))}")
    return {"summary": outputs["summary"], "output_dir": output, "run_id": run_id,
            "weights": info.weights, "similarity": outputs["similarity"],
            "tracking_offline": live.offline if live is not None else None}


def log_folder(folder: str | Path, *, log=print) -> str:
    """Upload a finished run folder to MLflow (``harness log``): reopen its parent and child runs
    (or create them), log what is missing, end them FINISHED. Nothing is duplicated."""
    from harness.tracking import LiveRun, check_tracking

    output = Path(folder)
    if not (output / PARQUET).exists() or not (output / STATE).exists():
        raise ValueError(f"{folder} is not a finished harness run folder (no {PARQUET} / "
                         f"{STATE})")
    state = json.loads((output / STATE).read_text())
    if not state.get("complete"):
        raise ValueError(f"{folder}: the run did not finish; complete it first with harness run "
                         "CONFIG --resume (which logs it)")
    payload = state.get("tracking_payload")
    if not payload or not state.get("mlflow_uri"):
        raise ValueError(f"{folder}: the run had tracking disabled; nothing to log")
    uri, experiment = state["mlflow_uri"], state["mlflow_experiment"]
    check_tracking(uri)
    with RunLock(output):
        config = from_dict(yaml.safe_load((output / RESOLVED).read_text()))
        records = load_records(output)
        summary = summarize(records, reference=config.reference, seed=config.seed,
                            ci_method=config.ci_method)
        table = per_image_table(records)
        curves = mean_curves(records)
        method_files = {m: [p for p in (output / "methods" / f"{m}.csv",
                                        output / "figures" / "methods" / f"{m}.png")
                            if p.exists()] for m in dict.fromkeys(table["method"])}
        live = LiveRun(uri, experiment, state=state, save_state=_save_state(output), log=log,
                       update_seconds=0)
        live.start(**payload, long_params_folder=output / "tracking")
        live.finish(summary=summary, curves=curves, method_artifacts=method_files,
                    artifacts=[output / RESOLVED, output / PARQUET, output / "results.csv",
                               output / "figures", output / "tables"],
                    tags=state.get("tracking_final_tags", {}))
    if live.offline:
        from harness.tracking import TrackingUnavailableError

        raise TrackingUnavailableError(f"logging {folder} to {uri} failed: {live.offline}")
    log(f"logged {folder} to {uri}: parent run {live.parent_id}")
    return live.parent_id


def _looks_like_run_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text.lower())


def table_for(run: str, *, tracking_uri: str | None = None,
              reference: str | None = None, out: str | Path | None = None,
              seed: int | None = None, ci_method: str | None = None
              ) -> tuple[pd.DataFrame, list[Path]]:
    """Tables for ``run``: an output folder of ``harness run`` or an MLflow parent run id.
    ``reference``, ``seed`` and ``ci_method`` override the run's config."""
    folder = Path(run)
    run_label = str(folder)
    weights = "?"
    if folder.is_dir() and not record_keys(folder):
        raise ValueError(f"{run} is a folder but not a harness run folder (it has no records: "
                         f"{PARQUET} or records.jsonl); give the output_dir of `harness run` or "
                         "an MLflow run id")
    if not folder.exists() and ("/" in run or not _looks_like_run_id(run)):
        raise ValueError(f"{run!r} is neither a run folder (no such folder) nor an MLflow run id "
                         "(32 hexadecimal characters)")
    if not folder.is_dir():
        from harness.tracking import download_run, resolve_tracking

        tracking_uri = resolve_tracking(tracking_uri, None)[0]
        folder, tags = download_run(run, tracking_uri, Path(out or ".") / f"mlflow-{run[:8]}")
        run_label = f"MLflow run {run}"
        weights = tags.get("harness.weights", "?")
    else:
        state = json.loads((folder / STATE).read_text()) if (folder / STATE).exists() else {}
        weights = state.get("weights", "?")
        if state.get("provenance") and not state.get("records_complete"):
            warnings.warn(f"{run}: the run has not finished (resume it with harness run CONFIG "
                          "--resume); this table covers only the records computed so far",
                          stacklevel=2)
        if state.get("mlflow_run_id"):
            run_label = f"MLflow run {state['mlflow_run_id']}"
    config = from_dict(yaml.safe_load((folder / RESOLVED).read_text()))
    if ci_method is not None:
        config = dataclasses.replace(config, ci_method=ci_method)
    records = load_frame(folder, curves=False)  # columns only: fast at paper scale
    randomization = config.metrics.get("model_randomization")
    rows = records[records["metric"] == "model_randomization"]
    if randomization is not None and len(rows) and (
            "measure_version" not in rows or rows["measure_version"].isna().any()):
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
