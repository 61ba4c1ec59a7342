"""The experiment runner: config -> model + data -> maps per method -> metrics -> records.

``run(config)`` yields per-image records as they are computed and appends them to a write-ahead
shard (``harness.store``: ``records.jsonl`` for one process, ``shards/rank-<r>.jsonl`` per rank
under torchrun; flushed and fsynced per work unit), so a killed run loses nothing already done;
when every unit is done the shards are merged into ``records.parquet`` in a canonical order.
``run(config, resume=True)`` repairs a torn last line and computes only the records that are
missing: the same records as an uninterrupted run, without duplicates (every random choice is
seeded by the config and the image, by its id or its values, never by its position or rank; the
batches are fixed by the dataset order and ``batch_size``). Resuming with another config, other
code, other weights or other images is refused (``harness.provenance``).

A work unit is (image batch, method): the batch is preprocessed and its targets resolved once,
each method's maps are computed once and read by every metric that needs them (the metric
registry). The maps of the first ``figure_images`` images are kept in
``<output_dir>/maps/<method>.npz`` (ids and ``[n, H, W]`` maps, the format ``harness score``
reads) for the saliency figure. The runner knows nothing of MLflow (``harness.api`` feeds
``harness.tracking``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from harness.allocator import tune_cpu_allocator
from harness.config import ExperimentConfig
from harness.datasets import Dataset, load_dataset
from harness.distributed import ONE_PROCESS, World, agree, barrier, resolve_device
from harness.errors import ConfigError, HarnessError, RunFolderError
from harness.files import (
    MANIFEST,
    RunLock,
    atomic_write,
    created_files,
    file_name,
    note_created,
    owned_by,
    remove_created,
)
from harness.loading import load_batches
from harness.mapsfile import load_maps, save_maps
from harness.metrics.registry import Unit, applies, get_metric
from harness.models import get_module, load_model, model_info
from harness.provenance import mismatch, provenance
from harness.runstate import STATE, RunState
from harness.store import (
    JSONL,
    PARQUET,
    SHARDS,
    ShardWriter,
    compact,
    load_frame,
    record_key,
    record_keys,
    shard_path,
)
from harness.store import load_records as load_store_records
from harness.targets import resolve_targets

__all__ = ["prepare_run", "run", "load_records", "figure_maps"]

RESOLVED = "config.resolved.yaml"
MAPS = "maps"


@dataclass(frozen=True)
class Prepared:
    """What ``prepare_run`` resolved: the validated config, model, dataset and output folder, and
    the folder's lock (held until ``release()``)."""

    config: ExperimentConfig
    model: torch.nn.Module
    dataset: Dataset
    output_dir: Path
    parts: dict[str, list[tuple]]
    lock: RunLock | None = None
    world: World = ONE_PROCESS
    device: str = "cpu"
    ownership: contextlib.ExitStack | None = None

    def release(self) -> None:
        if self.ownership is not None:
            self.ownership.close()
        if self.lock is not None:
            self.lock.release()


def check_output_dir(path: str | Path) -> Path:
    """``output_dir`` as a folder this process can write: a ``ConfigError`` naming the key if it
    is a file or cannot be created or written."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir: {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"output_dir: cannot create {str(folder)!r}: {error.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir: {str(folder)!r} is not writable")
    return folder


def check_steps(config: ExperimentConfig, model: torch.nn.Module) -> None:
    """Every metric ``step`` (and top-k ``k``) within the pixels of the model's input (known once
    it is loaded)."""
    side = model_info(model).input_size
    for name, settings in config.metrics.items():
        for key in ("step", "k"):
            count = getattr(settings, key, None)
            if isinstance(count, int) and count > side * side:
                raise ConfigError(f"metrics.{name}.{key}: {count} is more than the {side * side} "
                                  f"pixels of {config.model.name}'s {side}x{side} input")


SMOKE_BLOCKS = 3  # randomization steps of a smoke run (the top blocks)


def smoke_steps(config: ExperimentConfig, model: torch.nn.Module) -> ExperimentConfig:
    """What a smoke run shrinks once the model is known: ``step``s clamped to its input
    (``harness.config.smoke`` sets them for 8 steps of a 224 x 224 input), and model
    randomization over its top ``SMOKE_BLOCKS`` blocks where the config names none."""
    info = model_info(model)
    side = info.input_size
    metrics = {}
    for name, settings in config.metrics.items():
        step = getattr(settings, "step", None)
        if isinstance(step, int) and step > side * side:
            settings = dataclasses.replace(settings, step=max(1, -(-side * side // 8)))
        if "blocks" in {f.name for f in dataclasses.fields(settings)} and \
                settings.blocks is None and len(info.blocks) > SMOKE_BLOCKS:
            settings = dataclasses.replace(
                settings, blocks=[block.label for block in info.blocks[:SMOKE_BLOCKS]])
        metrics[name] = settings
    return dataclasses.replace(config, metrics=metrics)


def check_layers(config: ExperimentConfig, model: torch.nn.Module) -> None:
    """Every ``layer`` a method names (its own or its base's) exists in the model: a
    ``ConfigError`` before any compute, not an error after earlier methods stored records."""
    for index, method in enumerate(config.methods):
        places = [("params", method.params)]
        base = method.params.get("base_params")
        if isinstance(base, dict):
            places.append(("params.base_params", base))
        for where, params in places:
            layer = params.get("layer")
            if isinstance(layer, str):
                try:
                    get_module(model, layer)
                except ConfigError as error:
                    raise ConfigError(f"methods[{index}].{where}.layer: {error}") from None


def check_filter_model(dataset: Dataset, model: torch.nn.Module) -> None:
    """Warn when the dataset's images were chosen by another model's predictions
    (``pasted_objects`` keeps what its filter model recognises)."""
    chosen_by = getattr(dataset, "filter_model", None)
    info = model_info(model)
    evaluated = f"{info.name} ({info.weights})"
    if chosen_by is not None and chosen_by != evaluated:
        warnings.warn(f"dataset {dataset.name!r} kept the images that {chosen_by} recognised, but "
                      f"the model evaluated is {evaluated}: its accuracy on them is not that of "
                      "a random sample, and localisation scores describe images another model "
                      "chose (set data.options.model to the evaluated model to filter with it)",
                      stacklevel=3)


def _has_records(output_dir: Path) -> bool:
    shards = output_dir / SHARDS
    return ((output_dir / JSONL).exists() and (output_dir / JSONL).stat().st_size > 0) or \
        (output_dir / PARQUET).exists() or (shards.is_dir() and any(shards.iterdir()))


OURS = {RunLock.NAME, MANIFEST}  # what an attempt that stopped before any record leaves


def _foreign(output_dir: Path) -> list[str]:
    """The entries of a folder that no run of this harness made (``output_dir`` that is not a
    run folder)."""
    if RunState.exists(output_dir):
        return []
    return sorted(p.name for p in output_dir.iterdir() if p.name not in OURS)


def _legacy_files(output_dir: Path, config: ExperimentConfig) -> list[Path]:
    """The files of a run folder made before runs kept a manifest: exact names only."""
    fixed = [output_dir / name for name in (JSONL, PARQUET, "records.f64", STATE, RESOLVED,
                                            "results.csv")]
    shards = sorted((output_dir / SHARDS).glob("rank-[0-9][0-9][0-9].*")) \
        if (output_dir / SHARDS).is_dir() else []
    maps = [path for method in config.methods
            for path in [output_dir / MAPS / f"{file_name(method.name)}.npz",
                         *sorted((output_dir / MAPS).glob(
                             f"{glob.escape(file_name(method.name))}.rank-[0-9][0-9][0-9].npz"))]]
    return [path for path in fixed + shards + maps if path.is_file()]


def _claim_folder(config: ExperimentConfig, output_dir: Path, resume: bool,
                  overwrite: bool) -> RunLock:
    """The leader's part of ``prepare_run``: lock, refuse to mix runs or to write into a folder
    that holds other files, clean up what the harness itself left (its manifest's temporary
    files on resume; the earlier run's files with ``overwrite``), repair torn records on resume,
    write the state and the resolved config."""
    lock = RunLock(output_dir).acquire()
    try:
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: resume continues the "
                              "run in output_dir, overwrite starts it afresh")
        if _has_records(output_dir) and not RunState.exists(output_dir):
            raise RunFolderError(f"{output_dir} holds records but no {STATE}: this harness did "
                                 "not start a run there (e.g. a folder downloaded from MLflow); "
                                 "choose another output_dir")
        foreign = _foreign(output_dir)
        if foreign and not overwrite:
            raise RunFolderError(
                f"output_dir {output_dir} is not empty and is not a run folder (it holds "
                f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); choose a new "
                "or empty output_dir, or pass --overwrite to write the run's files beside them "
                "(nothing of theirs is deleted)")
        if _has_records(output_dir) and not (resume or overwrite):
            raise RunFolderError(f"{output_dir} already holds records of a run; pass --resume to "
                                 "continue it, --overwrite to start it afresh, or choose another "
                                 "output_dir (nothing was changed)")
        state = RunState.load(output_dir) if resume else RunState()
        if resume and state.config_hash is not None and state.config_hash != config.hash():
            raise ConfigError(f"--resume: the config differs from the one that started the run "
                              f"in {output_dir} (hash {state.config_hash[:12]} vs "
                              f"{config.hash()[:12]}); resume needs the same settings")
        if overwrite and RunState.exists(output_dir):
            earlier = created_files(output_dir) or _legacy_files(output_dir, config)
            for path in earlier:
                path.unlink(missing_ok=True)
            remove_created(output_dir, temporary_only=False)
        else:
            remove_created(output_dir, temporary_only=True)  # what a killed write left
        if resume:
            shards = [output_dir / JSONL, *sorted((output_dir / SHARDS).glob("rank-*.jsonl"))]
            for shard in shards:
                for note in ShardWriter(shard).repair():
                    warnings.warn(note, stacklevel=3)
        state.config_hash = config.hash()
        state.records_complete = state.complete = False  # true again when this run ends
        with owned_by(output_dir):
            state.save(output_dir)
            atomic_write(output_dir / RESOLVED, yaml.safe_dump(config.to_dict(),
                                                               sort_keys=False))
    except BaseException:
        lock.release()
        raise
    return lock


def prepare_run(config: ExperimentConfig, *, resume: bool = False, overwrite: bool = False,
                force: bool = False, world: World = ONE_PROCESS) -> Prepared:
    """Lock and check the output folder (refuse to mix runs; on ``resume`` repair torn or corrupt
    record lines, saying so; with ``overwrite`` delete the earlier run's files), then load the
    model and data. Under several ranks the leader (rank 0) does the folder's part and the others
    wait for it; a failure of any rank's checks stops every rank with the same message. The lock
    is held by the returned ``Prepared`` until its ``release()``; files the run creates in the
    folder are listed in its manifest until then."""
    output_dir = check_output_dir(config.output_dir)
    lock, failure = None, None
    if world.leader:
        try:
            lock = _claim_folder(config, output_dir, resume, overwrite)
        except (HarnessError, OSError) as error:
            failure = error
    shared = agree(world, None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if shared is not None:
        raise RunFolderError(f"rank 0 stopped the run: {shared}")
    ownership = contextlib.ExitStack()
    try:
        ownership.enter_context(owned_by(output_dir))
        device = resolve_device(config.device, world)
        if torch.device(device).type == "cpu":
            tune_cpu_allocator()
        model = load_model(config.model.name, weights=config.model.weights,
                           checkpoint=config.model.checkpoint, seed=config.seed, device=device)
        if config.smoke:
            config = smoke_steps(config, model)
            if world.leader:  # the steps this run uses
                atomic_write(output_dir / RESOLVED, yaml.safe_dump(config.to_dict(),
                                                                   sort_keys=False))
        check_steps(config, model)
        check_layers(config, model)
        dataset = load_dataset(config.data.name, limit=config.data.limit, seed=config.data.seed,
                               **config.data.options)
        check_filter_model(dataset, model)
        units = len(batches_of(config, dataset)) * len(config.methods)
        if world.size > units:
            raise ConfigError(f"the world size {world.size} is larger than the {units} work units "
                              "(image batches x methods): start at most that many processes "
                              "(torchrun --nproc-per-node), or lower batch_size")
        parts = {name: get_metric(name).parts(settings, model)
                 for name, settings in config.metrics.items()}
        failure = None
        if world.leader:
            failure = _check_provenance(output_dir, resume, provenance(model, dataset, device),
                                        force)
        shared = agree(world, failure)
        if shared is not None:
            raise ConfigError(shared)
    except BaseException:
        ownership.close()
        if lock is not None:
            lock.release()
        raise
    return Prepared(config, model, dataset, output_dir, parts, lock, world, device, ownership)


def _check_provenance(output_dir: Path, resume: bool, current: dict,
                      force: bool = False) -> str | None:
    """Record what produces the run (``harness.provenance``); on ``resume`` refuse other code,
    weights or images, and (unless ``force``) another thread count or device type. Returns the
    refusal (shared with every rank), or None."""
    state = RunState.load(output_dir)
    stored = state.provenance
    if resume and stored:
        difference = mismatch(stored, current, numerics=False)
        if difference is not None:
            return (f"--resume: {difference}; the records stored in {output_dir} were made by "
                    "the first, and records of two versions cannot be told apart: resume with "
                    "the same code, weights and images, or choose another output_dir")
        difference = None if force else mismatch(stored, current)
        if difference is not None:
            return (f"--resume: {difference}; the stored records were computed under the first, "
                    "and float results differ in their last digits between the two (see the "
                    "README: up to ~1e-4 in deletion curves): resume under the same settings "
                    "(torch.set_num_threads, OMP_NUM_THREADS, device), or pass --force to mix "
                    "them knowingly")
    state.provenance = current
    state.save(output_dir)
    return None


def batches_of(config: ExperimentConfig, dataset: Dataset) -> list[list]:
    """The image batches, fixed by the dataset order and ``batch_size`` (not by the world)."""
    samples = list(dataset)
    return [samples[i:i + config.batch_size] for i in range(0, len(samples), config.batch_size)]


def work_units(config: ExperimentConfig, dataset: Dataset) -> list[tuple[int, int]]:
    """Every (batch index, method index), in the canonical order: rank ``r`` of ``W`` computes
    positions ``r, r + W, ...``."""
    return [(b, m) for b in range(len(batches_of(config, dataset)))
            for m in range(len(config.methods))]


def canonical_keys(config: ExperimentConfig, dataset: Dataset,
                   parts: dict[str, list[tuple]]) -> list[tuple]:
    """Every record key of a complete run in the canonical order (batch, method, metric, image,
    part): the order of ``records.parquet``, whatever ranks computed them."""
    keys = []
    for batch in batches_of(config, dataset):
        ids = [sample.id for sample in batch]
        for method in config.methods:
            for metric, settings in config.metrics.items():
                if applies(settings, method.name):
                    keys += [(method.name, metric, image_id, measure, block)
                             for image_id in ids for measure, block in parts[metric]]
    return keys


def expected_keys(config: ExperimentConfig, method: str, ids: list[str],
                  parts: dict[str, list[tuple]]) -> set[tuple]:
    """The record keys a complete unit (``ids`` x ``method``) has: every metric that applies to
    the method, every image, every ``(measure, block)`` part of the metric."""
    keys = set()
    for metric, settings in config.metrics.items():
        if applies(settings, method):
            keys |= {(method, metric, image_id, measure, block) for image_id in ids
                     for measure, block in parts[metric]}
    return keys


def run(config: ExperimentConfig, *, resume: bool = False, progress: bool = True,
        prepared: Prepared | None = None, world: World = ONE_PROCESS, force: bool = False,
        on_unit: Callable[[list[dict]], None] | None = None) -> Iterator[dict]:
    """Yield the records computed by this call (those already stored are skipped). Under several
    ranks each rank yields its own share; when every rank is done the leader merges the store
    (``harness.store.compact``)."""
    owned = prepared is None
    prepared = prepared or prepare_run(config, resume=resume, force=force, world=world)
    try:
        yield from _run_units(config, prepared, progress, on_unit)
        barrier(prepared.world)
        if prepared.world.leader:
            order = canonical_keys(config, prepared.dataset, prepared.parts)
            missing = set(order) - record_keys(prepared.output_dir)
            if missing:
                raise RunFolderError(
                    f"{len(missing)} of {len(order)} records are missing after every rank "
                    f"finished (first: {sorted(missing, key=str)[0]}): the ranks' shards must be "
                    f"written to one output_dir on a filesystem every machine shares; rerun with "
                    "--resume to compute them")
            compact(prepared.output_dir, order)
            state = RunState.load(prepared.output_dir)
            state.records_complete = True
            state.save(prepared.output_dir)
        barrier(prepared.world)
    finally:
        if owned:
            prepared.release()


def unit_records(config: ExperimentConfig, unit: Unit, display_name: str) -> list[dict]:
    """Every applicable metric's records for one unit (an image batch x one method), as the
    runner stores them."""
    records: list[dict] = []
    for name, settings in config.metrics.items():
        if not applies(settings, display_name):
            continue
        for record in get_metric(name).fn(unit, settings):
            index = unit.ids.index(record["image_id"])
            records.append({"image_id": record["image_id"], "method": display_name,
                            "metric": name, "target": int(unit.target[index]), **record,
                            "target_source": config.target})
    return records


TIMINGS = "timings"


class Timings:
    """What each work unit cost: ``timings/<rank>.jsonl`` lines ``{method, batch, seconds}``,
    appended per unit (the records stay deterministic; the time each method took is read from
    here, summed over its units, the latest line of a unit counting)."""

    def __init__(self, output_dir: Path, rank: int | None):
        name = "main.jsonl" if rank is None else f"rank-{rank:03d}.jsonl"
        self.path = Path(output_dir) / TIMINGS / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note_created(self.path)

    def append(self, method: str, batch: int, seconds: float) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"method": method, "batch": batch,
                                     "seconds": round(seconds, 6)}) + "\n")

    @staticmethod
    def per_method(output_dir: Path) -> dict[str, float]:
        """Seconds per method display name, over every rank's units."""
        units: dict[tuple, float] = {}
        folder = Path(output_dir) / TIMINGS
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                    entry = json.loads(line)
                    units[(entry["method"], entry["batch"])] = float(entry["seconds"])
        totals: dict[str, float] = {}
        for (method, _), seconds in units.items():
            totals[method] = totals.get(method, 0.0) + seconds
        return totals


def pixel_fingerprints(ids: list[str], x: torch.Tensor) -> dict[str, str]:
    """Per image of a batch ``[N, C, H, W]`` (the decoded, preprocessed input the methods see),
    the first 16 hex digits of the SHA-256 of its float32 bytes, by image id."""
    values = x.detach().to("cpu", torch.float32).contiguous().numpy()
    return {image_id: hashlib.sha256(values[index].tobytes()).hexdigest()[:16]
            for index, image_id in enumerate(ids)}


def stored_fingerprints(output_dir: Path) -> dict[str, str]:
    """``{image id: pixels_sha256}`` of the records already stored (records made before the
    fingerprints existed have none and are not checked)."""
    frame = load_frame(output_dir, curves=False)
    if "pixels_sha256" not in frame:
        return {}
    rows = frame[["image_id", "pixels_sha256"]].dropna().drop_duplicates("image_id")
    return dict(zip(rows["image_id"], rows["pixels_sha256"], strict=True))


def check_fingerprints(prints: dict[str, str], stored: dict[str, str],
                       output_dir: Path) -> None:
    """Refuse to add records for an image whose pixels differ from those its stored records were
    computed on (same id, other content: one run would mix two versions of the image)."""
    for image_id, fingerprint in prints.items():
        old = stored.get(image_id)
        if old is not None and old != fingerprint:
            raise RunFolderError(
                f"--resume: image {image_id!r} is not the image the stored records of "
                f"{output_dir} were computed on (pixel fingerprint {old} then, "
                f"{fingerprint} now): the dataset changed under the same ids; restore it, "
                "or start a new run in another output_dir")


def _run_units(config: ExperimentConfig, prepared: Prepared, progress: bool,
               on_unit: Callable[[list[dict]], None] | None = None) -> Iterator[dict]:
    world = prepared.world
    writer = ShardWriter(shard_path(prepared.output_dir,
                                     world.rank if world.distributed else None))
    timings = Timings(prepared.output_dir, world.rank if world.distributed else None)
    done = record_keys(prepared.output_dir)
    batches = batches_of(config, prepared.dataset)
    figure_ids = {s.id for s in list(prepared.dataset)[:config.figure_images]}
    mine = world.mine(work_units(config, prepared.dataset))
    pending: dict[int, list[int]] = {}
    for b, m in mine:
        ids = [sample.id for sample in batches[b]]
        if not expected_keys(config, config.methods[m].name, ids, prepared.parts) <= done:
            pending.setdefault(b, []).append(m)
    bar = tqdm(total=len(mine), initial=len(mine) - sum(map(len, pending.values())),
               desc=f"{config.name}" + (f" [rank {world.rank}]" if world.distributed else ""),
               unit="unit", disable=not progress)
    needs_masks = any("masks" in get_metric(name).needs for name in config.metrics)
    info = model_info(prepared.model)
    stored = stored_fingerprints(prepared.output_dir) if done else {}
    for b, x, masks in load_batches(batches, sorted(pending), info, device=prepared.device,
                                    workers=config.data.workers, masks=needs_masks):
        batch = batches[b]
        ids = [sample.id for sample in batch]
        prints = pixel_fingerprints(ids, x)
        check_fingerprints(prints, stored, prepared.output_dir)
        labels = tuple(s.label for s in batch)
        target = resolve_targets(prepared.model, x, list(labels), ids, mode=config.target)
        for m in pending[b]:
            method = config.methods[m]
            bar.set_postfix_str(method.name)
            began = time.perf_counter()
            try:
                unit = Unit(prepared.model, x, target, tuple(ids), method.registry_name,
                            dict(method.params), labels=labels, masks=masks, seed=config.seed,
                            batch_size=config.method_batch_size or config.batch_size)
                records = [{**record, "pixels_sha256": prints[record["image_id"]]}
                           for record in unit_records(config, unit, method.name)]
                if "maps" in unit.__dict__:  # computed for a metric: keep the figure's share
                    keep_figure_maps(prepared.output_dir, method.name, ids, unit.maps,
                                     figure_ids, rank=world.rank if world.distributed else None)
            except BaseException as error:
                with contextlib.suppress(AttributeError, TypeError):
                    error.harness_method = method.name  # which method's run carries the error
                raise
            fresh = [r for r in records if record_key(r) not in done]
            timings.append(method.name, b, time.perf_counter() - began)
            writer.append(fresh)
            done |= {record_key(r) for r in fresh}
            bar.update(1)
            if on_unit is not None:
                on_unit(fresh)
            yield from fresh
    bar.close()


def keep_figure_maps(output_dir: Path, method: str, ids: list[str], maps: torch.Tensor,
                     figure_ids: set[str], *, rank: int | None = None) -> None:
    """Add the maps ``[N, H, W]`` of the batch's figure images to ``maps/<method>.npz`` (rank
    ``r`` of a distributed run: ``maps/<method>.rank-<r>.npz``, so that no two processes write one
    file), written atomically; an unreadable file from an earlier crash is replaced, and the
    figure recomputes what it lost."""
    keep = [i for i, image_id in enumerate(ids) if image_id in figure_ids]
    if not keep:
        return
    stem = file_name(method)
    name = f"{stem}.npz" if rank is None else f"{stem}.rank-{rank:03d}.npz"
    path = output_dir / MAPS / name
    kept = {ids[i]: maps[i].detach().cpu().float().numpy() for i in keep}
    old = _read_kept(path)
    if old is not None:
        kept = {**dict(zip(old[1] or [], old[0], strict=True)), **kept}
    save_maps(path, np.stack(list(kept.values())), list(kept))


def _read_kept(path: Path) -> tuple[np.ndarray, list[str] | None] | None:
    if not path.exists():
        return None
    try:
        return load_maps(path)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"ignoring the unreadable kept maps {path} ({error}); they are recomputed",
                      stacklevel=3)
        return None


def figure_maps(output_dir: str | Path, method: str, ids: list[str]) -> torch.Tensor | None:
    """The kept maps ``[len(ids), H, W]`` of ``method`` for ``ids`` (from every rank's file), or
    None if any is missing."""
    folder = Path(output_dir) / MAPS
    found: dict[str, np.ndarray] = {}
    stem = file_name(method)
    for path in [folder / f"{stem}.npz", *sorted(folder.glob(f"{glob.escape(stem)}.rank-*.npz"))]:
        kept = _read_kept(path)
        if kept is not None:
            found.update(dict(zip(kept[1] or [], kept[0], strict=True)))
    if not all(image_id in found for image_id in ids):
        return None
    return torch.from_numpy(np.stack([found[image_id] for image_id in ids]))


def load_records(output_dir: str | Path) -> list[dict]:
    """All records of the run in ``output_dir``, whatever its store (``harness.store``)."""
    return load_store_records(output_dir)
