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
reads) for the saliency figure. The runner knows nothing of MLflow (``harness.pipeline`` feeds
``harness.tracking``).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from harness.config import ConfigError, ExperimentConfig
from harness.data import (
    Dataset,
    load_dataset,
    load_maps,
    resolve_targets,
    save_maps,
)
from harness.distributed import SINGLE, World, agree, barrier, resolve_device
from harness.io import RecordStore, RunLock, atomic_write, record_key
from harness.metrics.registry import Unit, applies, get_metric
from harness.models import load_model, model_info
from harness.provenance import mismatch, provenance
from harness.store import (
    PARQUET,
    SHARDS,
    ShardWriter,
    compact,
    record_keys,
    shard_paths,
)
from harness.store import SINGLE as SINGLE_SHARD
from harness.store import load_records as load_store_records

__all__ = ["RecordStore", "record_key", "prepare_run", "run", "load_records", "figure_maps"]

RECORDS = SINGLE_SHARD  # a single process's write-ahead shard (harness.store)
STATE = "state.json"
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
    world: World = SINGLE
    device: str = "cpu"

    def release(self) -> None:
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
    return ((output_dir / RECORDS).exists() and (output_dir / RECORDS).stat().st_size > 0) or \
        (output_dir / PARQUET).exists() or (shards.is_dir() and any(shards.iterdir()))


def _claim_folder(config: ExperimentConfig, output_dir: Path, resume: bool) -> RunLock:
    """The leader's part of ``prepare_run``: lock, refuse to mix runs, repair on resume, write the
    state and the resolved config."""
    lock = RunLock(output_dir).acquire()
    try:
        state_path = output_dir / STATE
        if _has_records(output_dir) and not state_path.exists():
            raise ConfigError(f"{output_dir} holds records but no {STATE}: this harness did not "
                              "start a run there (e.g. a folder downloaded from MLflow); choose "
                              "another output_dir")
        if _has_records(output_dir) and not resume:
            raise ConfigError(f"{output_dir} already holds records of a run; pass --resume to "
                              "continue it, or choose another output_dir (nothing was changed)")
        state = json.loads(state_path.read_text()) if resume and state_path.exists() else {}
        if resume and state and state.get("config_hash") != config.hash():
            raise ConfigError(f"--resume: the config differs from the one that started the run "
                              f"in {output_dir} (hash {state.get('config_hash', '?')[:12]} vs "
                              f"{config.hash()[:12]}); resume needs the same settings")
        for orphan in output_dir.rglob(".*.tmp*"):  # left by a write a kill interrupted
            orphan.unlink(missing_ok=True)
        if resume:
            shards = [output_dir / RECORDS, *sorted((output_dir / SHARDS).glob("rank-*.jsonl"))]
            for shard in shards:
                for note in RecordStore(shard).repair():
                    warnings.warn(note, stacklevel=3)
        elif (output_dir / MAPS).exists():  # left by a run that stored no records
            shutil.rmtree(output_dir / MAPS)
        state["config_hash"] = config.hash()
        for stale in ("records_complete", "complete"):  # true again when this run ends
            state.pop(stale, None)
        atomic_write(state_path, json.dumps(state, indent=2))
        atomic_write(output_dir / RESOLVED, yaml.safe_dump(config.to_dict(), sort_keys=False))
    except BaseException:
        lock.release()
        raise
    return lock


def prepare_run(config: ExperimentConfig, *, resume: bool = False,
                world: World = SINGLE) -> Prepared:
    """Lock and check the output folder (refuse to mix runs; on ``resume`` repair torn or corrupt
    record lines, saying so), then load the model and data. Under several ranks the leader
    (rank 0) does the folder's part and the others wait for it; a failure of any rank's checks
    stops every rank with the same message. The lock is held by the returned ``Prepared`` until
    its ``release()``."""
    output_dir = check_output_dir(config.output_dir)
    lock, failure = None, None
    if world.leader:
        try:
            lock = _claim_folder(config, output_dir, resume)
        except (ConfigError, OSError, ValueError, RuntimeError) as error:
            failure = error
    shared = agree(world, None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if shared is not None:
        raise ConfigError(f"rank 0 stopped the run: {shared}")
    try:
        device = resolve_device(config.device, world)
        model = load_model(config.model.name, weights=config.model.weights,
                           checkpoint=config.model.checkpoint, seed=config.seed, device=device)
        check_steps(config, model)
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
            failure = _check_provenance(output_dir, resume, provenance(model, dataset))
        shared = agree(world, failure)
        if shared is not None:
            raise ConfigError(shared)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Prepared(config, model, dataset, output_dir, parts, lock, world, device)


def _check_provenance(output_dir: Path, resume: bool, current: dict) -> str | None:
    """Record what produces the run (``harness.provenance``); on ``resume`` refuse other code,
    weights or images. Returns the refusal (shared with every rank), or None."""
    state_path = output_dir / STATE
    state = json.loads(state_path.read_text())
    stored = state.get("provenance")
    if resume and stored:
        difference = mismatch(stored, current)
        if difference is not None:
            return (f"--resume: {difference}; the records stored in {output_dir} were made by "
                    "the first, and records of two versions cannot be told apart: resume with "
                    "the same code, weights and images, or choose another output_dir")
    state["provenance"] = current
    atomic_write(state_path, json.dumps(state, indent=2))
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
        prepared: Prepared | None = None, world: World = SINGLE,
        on_unit: Callable[[list[dict]], None] | None = None) -> Iterator[dict]:
    """Yield the records computed by this call (those already stored are skipped). Under several
    ranks each rank yields its own share; when every rank is done the leader merges the store
    (``harness.store.compact``)."""
    owned = prepared is None
    prepared = prepared or prepare_run(config, resume=resume, world=world)
    try:
        yield from _run_units(config, prepared, progress, on_unit)
        barrier(prepared.world)
        if prepared.world.leader:
            order = canonical_keys(config, prepared.dataset, prepared.parts)
            missing = set(order) - record_keys(prepared.output_dir)
            if missing:
                raise RuntimeError(
                    f"{len(missing)} of {len(order)} records are missing after every rank "
                    f"finished (first: {sorted(missing, key=str)[0]}): the ranks' shards must be "
                    f"written to one output_dir on a filesystem every machine shares; rerun with "
                    "--resume to compute them")
            compact(prepared.output_dir, order)
            state_path = prepared.output_dir / STATE
            state = json.loads(state_path.read_text())
            state["records_complete"] = True
            atomic_write(state_path, json.dumps(state, indent=2))
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


def _run_units(config: ExperimentConfig, prepared: Prepared, progress: bool,
               on_unit: Callable[[list[dict]], None] | None = None) -> Iterator[dict]:
    from tqdm.auto import tqdm

    from harness.loading import load_batches

    world = prepared.world
    writer = ShardWriter(shard_paths(prepared.output_dir,
                                     world.rank if world.distributed else None))
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
    for b, x, masks in load_batches(batches, sorted(pending), info, device=prepared.device,
                                    workers=config.data.workers, masks=needs_masks):
        batch = batches[b]
        ids = [sample.id for sample in batch]
        labels = tuple(s.label for s in batch)
        target = resolve_targets(prepared.model, x, list(labels), ids, mode=config.target)
        for m in pending[b]:
            method = config.methods[m]
            bar.set_postfix_str(method.name)
            unit = Unit(prepared.model, x, target, tuple(ids), method.registry_name,
                        dict(method.params), labels=labels, masks=masks, seed=config.seed,
                        batch_size=config.method_batch_size or config.batch_size)
            records = unit_records(config, unit, method.name)
            if "maps" in unit.__dict__:  # computed for a metric: keep the figure's share
                keep_figure_maps(prepared.output_dir, method.name, ids, unit.maps, figure_ids,
                                 rank=world.rank if world.distributed else None)
            fresh = [r for r in records if record_key(r) not in done]
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
    name = f"{method}.npz" if rank is None else f"{method}.rank-{rank:03d}.npz"
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
    for path in [folder / f"{method}.npz", *sorted(folder.glob(f"{method}.rank-*.npz"))]:
        kept = _read_kept(path)
        if kept is not None:
            found.update(dict(zip(kept[1] or [], kept[0], strict=True)))
    if not all(image_id in found for image_id in ids):
        return None
    return torch.from_numpy(np.stack([found[image_id] for image_id in ids]))


def load_records(output_dir: str | Path) -> list[dict]:
    """All records of the run in ``output_dir``, whatever its store (``harness.store``)."""
    return load_store_records(output_dir)
