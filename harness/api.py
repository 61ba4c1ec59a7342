"""The Python API, the front door of the harness (the command line is a thin shell over it).

    config = harness.load_config("experiments/quickstart.yaml", overrides=["data.limit=2"])
    result = harness.run(config)            # RunResult: output_dir, table, records, run_id
    scores = harness.score_maps("maps.npz", "efficientnet_lite0", "samples", ["deletion"])
    frame = harness.load_frame(result.output_dir)

``run`` computes the records (``harness.runner``, which knows no MLflow), writes the report
(``harness.report``: per-image CSVs, tables, figures) and, with tracking, keeps the MLflow runs
live from start to end (``harness.tracking``). ``table`` and ``log_run`` read a finished run
folder; reading never imports code named by the folder.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from shlex import quote

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from harness.allocator import tune_cpu_allocator
from harness.config import ExperimentConfig, from_dict, load_config
from harness.datasets import Dataset, load_dataset
from harness.distributed import World, agree, close, detect, init, resolve_device
from harness.errors import ConfigError, DataError, RunFolderError
from harness.files import RunLock
from harness.images import preprocess
from harness.mapsfile import load_maps
from harness.metrics.registry import (
    METRICS,
    Unit,
    get_metric,
    metric_curves,
    per_image_table,
)
from harness.models import load_model, model_info, weights_fingerprint
from harness.report import (
    mean_curves,
    method_artifacts,
    render_tables,
    similarity_note,
    summarize,
    table_meta,
    write_report,
    write_tables,
)
from harness.runner import RESOLVED, Prepared, Timings, prepare_run
from harness.runner import run as compute_records
from harness.runstate import RunState
from harness.settings import check_choice, checked
from harness.store import PARQUET, load_frame, load_records, record_keys
from harness.targets import resolve_targets
from harness.tracking import (
    LiveRun,
    RunningMeans,
    TrackingUnavailableError,
    check_tracking,
    column_tags,
    download_run,
    masked,
    resolve_tracking,
    tracking_payload,
)

__all__ = ["RunResult", "load_config", "log_run", "run", "score_maps", "table"]


@dataclass
class RunResult:
    """What ``harness.run`` returns.

    ``output_dir``: the run folder; ``table``: the summary (one row per method and table column:
    mean, ci_low, ci_high, n, undefined, p, p_holm, direction), None on a rank other than 0 of a
    distributed run; ``run_id``: the MLflow parent run (None without tracking); ``records``: every
    per-image record as a frame (``harness.load_frame``, read on first use); ``computed``: the
    records this call computed (the rest were stored by an earlier, resumed run).
    """

    output_dir: Path
    table: pd.DataFrame | None
    run_id: str | None = None
    weights: str | None = None
    similarity: str | None = None
    tracking_offline: str | None = None
    computed: int = 0
    rank: int = 0
    source: str = field(default="", repr=False)

    @cached_property
    def records(self) -> pd.DataFrame:
        return load_frame(self.output_dir)


def _as_config(config: ExperimentConfig | str | Path | Mapping) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        return config
    if isinstance(config, str | Path):
        return load_config(config)
    if isinstance(config, Mapping):
        return from_dict(dict(config))
    raise ConfigError(f"config: expected an ExperimentConfig, a YAML path or a mapping, got "
                      f"{type(config).__name__}")


def run(config: ExperimentConfig | str | Path | Mapping, *, resume: bool = False,
        overwrite: bool = False, force: bool = False, progress: bool = True, log=print,
        source: str = "harness.run", world: World | None = None) -> RunResult:
    """Run an experiment: records (streamed to disk), then per-image CSVs, tables and figures;
    with tracking, the MLflow runs live from start to end.

    Under torchrun (``harness.distributed``) every rank computes its share of the work units;
    rank 0 alone checks the tracking store, writes the tables, figures and MLflow, and returns
    the table (the other ranks return ``table=None``).

    Args:
        config: an ``ExperimentConfig``, a YAML path or a raw mapping (validated first).
        resume: continue the run in ``output_dir`` without recomputing stored records.
        overwrite: start afresh in an ``output_dir`` that holds an earlier run's files (its
            records, maps, tables and figures are replaced; nothing else in the folder).
        force: with ``resume``, continue under another CPU thread count or device type (the
            records then mix values whose last digits differ).
        progress: show a progress bar.
        log: where messages go (``print``).
        source: the entry point recorded in MLflow (``mlflow.source.name``).
        world: this process's place under torchrun (default: read from the environment).

    Returns:
        A ``RunResult``.

    Raises:
        ConfigError: the config cannot run (before any compute).
        RunFolderError: the output folder is in use, damaged, or holds another run.
        TrackingError: the tracking store cannot be used (before any compute).
    """
    config = _as_config(config)
    world = world or detect()
    init(world, resolve_device(config.device, world))
    with terminated_as_interrupt():
        try:
            tracking, failure = None, None
            if config.tracking.enabled and world.leader:
                uri, experiment, where = resolve_tracking(config.tracking.uri,
                                                          config.tracking.experiment)
                log(f"MLflow: {masked(uri)} (from {where}), experiment {experiment!r}")
                try:
                    check_tracking(uri)
                except TrackingUnavailableError as error:
                    failure = error
                tracking = (uri, experiment)
            shared = agree(world, None if failure is None else str(failure))
            if failure is not None:
                raise failure
            if shared is not None:
                raise RunFolderError(f"rank 0 stopped the run: {shared}")
            prepared = prepare_run(config, resume=resume, overwrite=overwrite, force=force,
                                   world=world)
            try:
                if not world.leader:
                    computed = sum(1 for _ in compute_records(config, prepared=prepared,
                                                              progress=progress))
                    return RunResult(prepared.output_dir, None, weights=model_info(
                        prepared.model).weights, computed=computed, rank=world.rank, source=source)
                return _execute(config, prepared, tracking, progress=progress, log=log,
                                source=source)
            finally:
                prepared.release()
        finally:
            close(world)


class RunTerminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler's time limit, ``docker stop``) ends a run as
    Ctrl-C does: the records stored so far stay, the MLflow runs end KILLED naming the signal,
    the folder's lock is released."""


@contextlib.contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises ``RunTerminated`` (main thread only; the previous handler is put
    back after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(number, _frame):
        raise RunTerminated(f"terminated by {signal.Signals(number).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dataset_input(config: ExperimentConfig, prepared: Prepared, fingerprint: str) -> dict:
    """The run's data as MLflow logs it as an input: name, digest, source and image ids."""
    ids = prepared.dataset.ids
    return {"name": config.data.name, "digest": fingerprint,
            "source": {"dataset": config.data.name, "options": config.data.options,
                       "limit": config.data.limit, "seed": config.data.seed},
            "profile": {"num_images": len(ids), "ids": ids[:1000],
                        "ids_truncated": len(ids) > 1000}}


def _execute(config: ExperimentConfig, prepared: Prepared, tracking, *, progress: bool, log,
             source: str) -> RunResult:
    output = prepared.output_dir
    state = RunState.load(output)
    state.output_dir = str(output)
    live = None
    if tracking is not None:
        payload = tracking_payload(config, prepared, source)
        state.tracking_payload = payload
        state.save(output)
        live = LiveRun(*tracking, parent_id=state.mlflow_run_id,
                       child_ids=state.mlflow_child_run_ids, remember=_remember(output),
                       log=log, update_seconds=config.tracking.update_seconds,
                       output_dir=output)
        live.start(**payload, long_params_folder=output / "tracking")
    running = RunningMeans()

    def unit_done(records: list[dict]) -> None:  # after each work unit: the live metrics
        running.add(records)
        live.progress(running.snapshot)

    computed = 0
    try:
        if live is not None and record_keys(output):  # resuming: what is stored counts
            running.add(load_records(output))
        for _ in compute_records(config, prepared=prepared, progress=progress,
                                 on_unit=unit_done if live is not None else None):
            computed += 1
        records = load_records(output)
        log(f"{computed} records computed, {len(records)} in {output / PARQUET}"
            + (f" ({prepared.world.size} ranks)" if prepared.world.distributed else ""))
        info = model_info(prepared.model)
        run_id = live.parent_id if live is not None else None
        run_label = f"MLflow run {run_id}" if run_id else str(output)
        outputs = write_report(config, prepared, records, run_label)
        state = RunState.load(output)
        state.output_dir, state.weights, state.complete = str(output), info.weights, True
        state.metric_directions = dict(zip(outputs["summary"]["metric"],
                                           outputs["summary"]["direction"], strict=True))
        final = {}
        if live is not None:
            fingerprint = prepared.dataset.fingerprint()
            final_tags = {"harness.dataset_fingerprint": fingerprint,
                          "harness.weights_sha256": weights_fingerprint(prepared.model),
                          **column_tags(outputs["summary"], payload["description"])}
            final_tags["mlflow.note.content"] += f"\n\n{outputs['reliability']}"
            if outputs["similarity"]:
                final_tags["harness.similarity"] = outputs["similarity"]
            state.tracking_final_tags = final_tags
            state.tracking_dataset = _dataset_input(config, prepared, fingerprint)
            final = {"tags": final_tags, "dataset": state.tracking_dataset,
                     "seconds": Timings.per_method(output),
                     "table": _table_text(outputs["summary"], config, info.weights, run_label,
                                          outputs["similarity"])}
        state.save(output)
    except KeyboardInterrupt as error:  # Ctrl-C, and SIGTERM (RunTerminated)
        if live is not None:
            live.finish(summary=None, curves={}, artifacts=[], method_artifacts={},
                        status="KILLED", error=str(error) or "interrupted (Ctrl-C)")
        raise
    except BaseException as error:
        if live is not None:
            live.finish(summary=None, curves={}, artifacts=[], method_artifacts={},
                        status="FAILED", error=f"{type(error).__name__}: {error}",
                        failed_method=getattr(error, "harness_method", None))
        raise
    if live is not None:
        live.finish(summary=outputs["summary"], curves=outputs["curves"],
                    artifacts=outputs["artifacts"], method_artifacts=outputs["method_files"],
                    **final)
        if live.offline:
            log(f"MLflow did not get everything ({live.offline}); the results are complete in "
                f"{output}; log them with: harness log {quote(str(output))}")
    return RunResult(output, outputs["summary"], run_id=run_id, weights=info.weights,
                     similarity=outputs["similarity"],
                     tracking_offline=live.offline if live is not None else None,
                     computed=computed, source=source)


def _table_text(summary: pd.DataFrame, config: ExperimentConfig | dict, weights: str,
                run_label: str, similarity: str | None) -> str:
    """The results table as Markdown, for the parent run's description."""
    return render_tables(summary, {**table_meta(config, weights, run_label),
                                   "similarity": similarity})["md"]


def _remember(output: Path):
    """Persist the MLflow ids in the run's state as soon as they exist."""

    def remember(uri: str, experiment: str, parent_id: str | None,
                 child_ids: dict[str, str]) -> None:
        state = RunState.load(output)
        state.mlflow_uri, state.mlflow_experiment = uri, experiment
        state.mlflow_run_id, state.mlflow_child_run_ids = parent_id, dict(child_ids)
        state.save(output)

    return remember


# ----------------------------------------------------------------------------- reading a run


def _resolved(folder: Path) -> dict:
    """The run's resolved config as plain data (never validated against the registries nor
    imported: reading a folder executes nothing it names)."""
    path = folder / RESOLVED
    if not path.is_file():
        raise RunFolderError(f"{folder} has no {RESOLVED}: not a folder written by `harness run` "
                             "(or a damaged one)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RunFolderError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise RunFolderError(f"{path} does not hold a config mapping")
    return raw


def log_run(folder: str | Path, *, log=print) -> str:
    """Upload a run folder to MLflow (``harness log``).

    A finished run: reopen its parent and child runs (or create them), log what is missing, end
    them FINISHED; nothing is duplicated. An unfinished run whose process is gone (its folder is
    not locked): end its MLflow runs KILLED, saying so, without computing anything (``harness
    run CONFIG --resume`` finishes it later under the same runs).

    Args:
        folder: the run's ``output_dir``.
        log: where messages go.

    Returns:
        The MLflow parent run id.

    Raises:
        RunFolderError: not a run folder, tracking was disabled, or a live process holds it.
        TrackingError: the store cannot be used or logging failed.
    """
    output = Path(folder)
    if not RunState.exists(output):
        raise RunFolderError(f"{folder} is not a harness run folder (no state.json)")
    state = RunState.load(output)
    if not state.tracking_payload or not state.mlflow_uri:
        raise RunFolderError(f"{folder}: the run had tracking disabled; nothing to log")
    uri, experiment = state.mlflow_uri, state.mlflow_experiment
    check_tracking(uri)
    with RunLock(output):
        live = LiveRun(uri, experiment, parent_id=state.mlflow_run_id,
                       child_ids=state.mlflow_child_run_ids, remember=_remember(output), log=log,
                       update_seconds=0, output_dir=output)
        if not state.complete or not (output / PARQUET).exists():
            ended = live.close_dead(
                "the run's process ended without closing its runs (killed: SIGKILL, out of "
                "memory, a lost node); its records are safe in the run folder: finish it with "
                "harness run CONFIG --resume")
            if live.offline:
                raise TrackingUnavailableError(f"closing the runs of {folder} at {masked(uri)} "
                                               f"failed: {masked(live.offline)}")
            log(f"{folder} did not finish; ended its {len(ended)} RUNNING MLflow runs as KILLED "
                "(nothing was computed); finish it with harness run CONFIG --resume")
            return state.mlflow_run_id
        config = _resolved(output)
        records = load_records(output)
        summary = summarize(records, reference=config.get("reference"),
                            seed=config.get("seed", 0), ci_method=config.get("ci_method", "bca"),
                            directions=state.metric_directions)
        table_rows = per_image_table(records, directions=state.metric_directions)
        run_label = f"MLflow run {state.mlflow_run_id}" if state.mlflow_run_id else str(output)
        live.start(**state.tracking_payload, long_params_folder=output / "tracking")
        live.finish(summary=summary, curves=mean_curves(records),
                    method_artifacts=method_artifacts(output, dict.fromkeys(table_rows["method"])),
                    artifacts=[output / RESOLVED, output / PARQUET, output / "results.csv",
                               output / "figures", output / "tables"],
                    tags=state.tracking_final_tags, dataset=state.tracking_dataset,
                    seconds=Timings.per_method(output),
                    table=_table_text(summary, config, state.weights or "?", run_label,
                                      similarity_note(records)))
    if live.offline:
        raise TrackingUnavailableError(f"logging {folder} to {masked(uri)} failed: "
                                       f"{masked(live.offline)}")
    log(f"logged {folder} to {masked(uri)}: parent run {live.parent_id}")
    return live.parent_id


def _looks_like_run_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text.lower())


def table(run: str | Path, *, tracking_uri: str | None = None, reference: str | None = None,
          out: str | Path | None = None, seed: int | None = None,
          ci_method: str | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """The paper tables (LaTeX, Markdown, CSV) of a run, from its stored records.

    Args:
        run: a run folder of ``harness run``, or an MLflow parent run id.
        tracking_uri: the MLflow store of a run id (default: ``MLFLOW_TRACKING_URI``, else the
            embedded store).
        reference: overrides the run's reference method for the paired tests.
        seed: overrides the run's seed of the bootstrap.
        ci_method: overrides the run's interval method (``bca`` or ``percentile``).
        out: the folder for ``table.tex/.md/.csv`` (default: the run's ``tables/``).

    Returns:
        (the summary frame, the paths written).

    Raises:
        RunFolderError: not a run folder (no records, no resolved config).
        TrackingError: a run id that the store does not hold.
    """
    folder = Path(run)
    run_label = str(folder)
    state = RunState()
    if folder.is_dir() and not record_keys(folder):
        raise RunFolderError(f"{run} is a folder but not a harness run folder (it has no "
                             f"records: {PARQUET} or records.jsonl); give the output_dir of "
                             "`harness run` or an MLflow run id")
    if not folder.exists() and ("/" in str(run) or not _looks_like_run_id(str(run))):
        raise RunFolderError(f"{str(run)!r} is neither a run folder (no such folder) nor an "
                             "MLflow run id (32 hexadecimal characters)")
    if not folder.is_dir():
        tracking_uri = resolve_tracking(tracking_uri, None)[0]
        folder, tags = download_run(str(run), tracking_uri,
                                    Path(out or ".") / f"mlflow-{str(run)[:8]}")
        run_label = f"MLflow run {run}"
        state.weights = tags.get("harness.weights")
        state.metric_directions = dict(
            pair.split("=", 1) for pair in tags.get("harness.metric_directions", "").split(",")
            if "=" in pair)
    else:
        state = RunState.load(folder)
        if state.provenance and not state.records_complete:
            warnings.warn(f"{run}: the run has not finished (resume it with harness run CONFIG "
                          "--resume); this table covers only the records computed so far",
                          stacklevel=2)
        if state.mlflow_run_id:
            run_label = f"MLflow run {state.mlflow_run_id}"
    config = _resolved(folder)
    if ci_method is not None:
        check_choice("--ci", ci_method, ("bca", "percentile"))
        config["ci_method"] = ci_method
    records = load_frame(folder, curves=False)  # columns only: fast at paper scale
    randomization = (config.get("metrics") or {}).get("model_randomization")
    rows = records[records["metric"] == "model_randomization"]
    if isinstance(randomization, dict) and len(rows) and (
            "measure_version" not in rows or rows["measure_version"].isna().any()):
        # harness 0.1 compared the method's own maps (its configs had no map_normalisation key)
        randomization["map_normalisation"] = "method"
    reference = reference or config.get("reference")
    seed = config.get("seed", 0) if seed is None else seed
    summary = summarize(records, reference=reference, seed=seed,
                        ci_method=config.get("ci_method", "bca"),
                        directions=state.metric_directions)
    meta = table_meta(config, state.weights or "?", run_label)
    meta.update(reference=reference, seed=seed, similarity=similarity_note(records))
    paths = write_tables(summary, meta, Path(out) if out else folder / "tables")
    return summary, paths


# ----------------------------------------------------------------------------- scoring maps


def check_score_metrics(metrics: Sequence[str] | Mapping[str, Mapping | None]) -> dict:
    """The checked settings of each metric ``score_maps`` is asked for (before any model or data
    is loaded).

    Args:
        metrics: metric names (each with its defaults), or ``{name: settings mapping}``.

    Returns:
        ``{name: settings dataclass}``.

    Raises:
        ConfigError: no metric, an unknown metric, a metric that needs more than maps, bad
            settings (named ``metrics.<name>.<key>``).
    """
    chosen = dict.fromkeys(metrics) if not isinstance(metrics, Mapping) else dict(metrics)
    if not chosen:
        raise ConfigError("metrics: name at least one metric")
    settings = {}
    for name, raw in chosen.items():
        entry = get_metric(name)
        if not entry.needs <= {"maps"}:
            usable = _maps_only_metrics()
            raise ConfigError(f"metric {name!r} needs {', '.join(sorted(entry.needs - {'maps'}))}"
                              f", not only maps: run it with `harness run`; scorable from maps: "
                              f"{', '.join(usable)}")
        settings[name] = checked(entry.settings, raw or {}, f"metrics.{name}")
    return settings


def score_maps(maps: np.ndarray | torch.Tensor | str | Path, model: nn.Module | str,
               data: Dataset | str, metrics: Sequence[str] | Mapping[str, Mapping | None], *,
               ids: Sequence[str] | None = None, target: str = "label",
               batch_size: int = 8, device: str = "cpu",
               data_options: Mapping | None = None) -> pd.DataFrame:
    """Score saliency maps made by any tool with every metric that needs only maps.

    Args:
        maps: ``[N, H, W]`` maps (array or tensor), or a maps file (``.npz`` with ``maps`` and
            ``ids``, ``.npy``, ``.pt``: ``harness.mapsfile.load_maps``).
        model: a model with harness metadata, or a name for ``harness.load_model``.
        data: a ``Dataset`` or a dataset name (``data_options`` its options).
        metrics: metric names (each with its defaults), or ``{name: settings mapping}``.
        ids: the image id of each map (default: the file's ids, else the dataset order).
        target: ``"label"`` (the label, top-1 where none) or ``"predicted"`` (top-1).
        batch_size: images per unit of the metrics' work.
        device: where the model runs (a model given as a module stays where it is). On the
            CPU this calls ``harness.tune_cpu_allocator()`` (freed memory is kept for reuse in
            this process until it ends; ``HARNESS_CPU_ALLOCATOR=default`` opts out).

    Returns:
        One row per record: ``image_id``, ``metric``, ``value`` (``None`` where undefined, with a
        ``status``), ``target``, the metric's extra fields and its ``curve`` where it has one.

    Raises:
        ConfigError: an unknown metric, a metric that needs more than maps, bad settings.
        DataError: maps that do not match the images.
    """
    settings = check_score_metrics(metrics)
    if isinstance(maps, str | Path):
        values, file_ids = load_maps(maps)
        source = str(maps)
    else:
        values = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
        file_ids, source = None, "the maps"
        if values.ndim != 3:
            raise DataError(f"maps must be [N, H, W], got shape {values.shape}")
    ids = list(ids) if ids is not None else file_ids
    if isinstance(model, str):
        model = load_model(model, device=device)
    info = model_info(model)
    model_device = next(iter(model.parameters())).device if any(True for _ in model.parameters()) \
        else torch.device(device)
    if model_device.type == "cpu":
        tune_cpu_allocator()
    dataset = data if isinstance(data, Dataset) else load_dataset(data, **dict(data_options or {}))
    if ids is None:
        if len(values) != len(dataset):
            raise DataError(f"{source} has {len(values)} maps without ids for {len(dataset)} "
                            "images; store ids or match the dataset")
        samples = list(dataset)
    else:
        if len(ids) != len(values):
            raise DataError(f"{source}: {len(values)} maps but {len(ids)} ids")
        by_id = {sample.id: sample for sample in dataset}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"{source} has maps for images not in the dataset: {missing[:5]}")
        samples = [by_id[i] for i in ids]
    image_ids = [sample.id for sample in samples]
    x = preprocess([sample.load() for sample in samples], info, device=model_device,
                   ids=image_ids)
    if tuple(values.shape[1:]) != tuple(x.shape[2:]):
        raise DataError(f"{source}: maps of {values.shape[1]}x{values.shape[2]} for the model's "
                        f"{x.shape[2]}x{x.shape[3]} input")
    labels = tuple(s.label for s in samples)
    targets = resolve_targets(model, x, list(labels), image_ids, mode=target)
    unit = Unit(model, x, targets, tuple(image_ids), method="(maps file)", labels=labels,
                batch_size=batch_size,
                fixed_maps=torch.from_numpy(np.ascontiguousarray(values)).to(x.device))
    records = []
    for name, entry_settings in settings.items():
        for record in get_metric(name).fn(unit, entry_settings):
            index = image_ids.index(record["image_id"])
            records.append({"image_id": record["image_id"], "metric": name,
                            "target": int(targets[index]), **record})
    return pd.DataFrame(records)


def _maps_only_metrics() -> list[str]:
    return [name for name in METRICS.list() if get_metric(name).needs <= {"maps"}]


def score_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per metric column of ``score_maps``' records: mean, n and direction."""
    cells = per_image_table(frame.assign(method="maps"))
    rows = []
    for column, values in cells.groupby("metric", sort=False):
        finite = values["value"].to_numpy(dtype=float, na_value=np.nan)
        finite = finite[np.isfinite(finite)]
        rows.append({"metric": column, "mean": float(finite.mean()) if finite.size else np.nan,
                     "n": int(finite.size), "direction": values["direction"].iloc[0]})
    return pd.DataFrame(rows)


def score_curves(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """``{curve name: per-image curves [n, K]}`` of ``score_maps``' records."""
    return {name: by_method["maps"][1]
            for name, by_method in metric_curves(frame.assign(method="maps")).items()}

