"""The experiment runner: config -> model + data -> maps per method -> metrics -> records.

``run(config)`` yields per-image records as they are computed and appends them to
``<output_dir>/records.jsonl`` (one JSON object per line, flushed and fsynced per work unit), so a
killed run loses nothing already done. ``run(config, resume=True)`` reloads the file, drops a
partly written last line, and computes only the records that are missing: the same records as an
uninterrupted run, without duplicates (every random choice is seeded by the config and an image's
position in its batch, and batches are fixed by the dataset order and ``batch_size``).

A work unit is (image batch, method): the batch is preprocessed and its targets resolved once,
each method's maps are computed once and scored by every configured metric. The maps of the first
``figure_images`` images are kept in ``<output_dir>/maps/<method>.npz`` (ids and ``[n, H, W]``
maps, the format ``harness score`` reads) for the saliency figure. The runner knows nothing of
MLflow (``harness.tracking`` logs the finished run).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from harness.config import CURVE_METRICS, ConfigError, ExperimentConfig
from harness.data import Dataset, load_dataset, load_maps, preprocess, resolve_targets, save_maps
from harness.methods import saliency_batched
from harness.models import load_model, model_info

RECORDS = "records.jsonl"
STATE = "state.json"
RESOLVED = "config.resolved.yaml"
MAPS = "maps"
DEFAULT_SUBSTRATES = {"deletion": "zero", "morf": "zero", "lerf": "zero", "abpc": "zero",
                      "insertion": "rise_blur"}


def record_key(record: dict) -> tuple:
    """Identity of a record: (method, metric, image, measure, block)."""
    return (record["method"], record["metric"], record["image_id"], record.get("measure"),
            record.get("block"))


class RecordStore:
    """Append-only JSONL store of records; tolerant of a torn last line."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> list[dict]:
        if not self.path.exists():
            return []
        text = self.path.read_bytes()
        lines = text.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if tail:  # a partly written last line from a killed run: cut it off
            with self.path.open("r+b") as handle:
                handle.truncate(len(text) - len(tail))
        records, seen = [], set()
        for line in complete:
            if not line.strip():
                continue
            record = json.loads(line)
            key = record_key(record)
            if key not in seen:
                seen.add(key)
                records.append(record)
        return records

    def append(self, records: list[dict]) -> None:
        with self.path.open("a") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


@dataclass(frozen=True)
class Prepared:
    """What ``prepare_run`` resolved: the validated config, model, dataset and output folder."""

    config: ExperimentConfig
    model: torch.nn.Module
    dataset: Dataset
    output_dir: Path
    blocks: tuple[str, ...]


def prepare_run(config: ExperimentConfig, *, resume: bool = False) -> Prepared:
    """Create/check the output folder (refuse to mix runs) and load the model and data."""
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state_path = output_dir / STATE
    records_path = output_dir / RECORDS
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if records_path.exists() and records_path.stat().st_size and not resume:
            raise ConfigError(f"{output_dir} already holds records of a run; pass --resume to "
                              "continue it, or choose another output_dir (nothing was changed)")
        if resume and state.get("config_hash") != config.hash():
            raise ConfigError(f"--resume: the config differs from the one that started the run in "
                              f"{output_dir} (hash {state.get('config_hash', '?')[:12]} vs "
                              f"{config.hash()[:12]}); resume needs the same settings")
    else:
        state = {}
    if not resume and (output_dir / MAPS).exists():  # left by a run that stored no records
        shutil.rmtree(output_dir / MAPS)
    state["config_hash"] = config.hash()
    state_path.write_text(json.dumps(state, indent=2))
    (output_dir / RESOLVED).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    model = load_model(config.model.name, weights=config.model.weights,
                       checkpoint=config.model.checkpoint, seed=config.seed,
                       device=config.device)
    dataset = load_dataset(config.data.name, limit=config.data.limit, seed=config.data.seed,
                           **config.data.options)
    blocks: tuple[str, ...] = ()
    if "model_randomization" in config.metrics:
        from harness.sanity import resolve_blocks

        chosen = config.metrics["model_randomization"].blocks
        blocks = tuple(b.label for b in resolve_blocks(model, chosen))
    return Prepared(config, model, dataset, output_dir, blocks)


def randomizes(config: ExperimentConfig, method: str) -> bool:
    settings = config.metrics.get("model_randomization")
    return settings is not None and (settings.methods is None or method in settings.methods)


def expected_keys(config: ExperimentConfig, method: str, ids: list[str],
                  blocks: tuple[str, ...]) -> set[tuple]:
    keys = set()
    for metric, settings in config.metrics.items():
        if metric == "model_randomization" and not randomizes(config, method):
            continue
        for image_id in ids:
            if metric == "model_randomization":
                keys |= {(method, metric, image_id, measure, block)
                         for measure in settings.measures for block in blocks}
            else:
                keys.add((method, metric, image_id, None, None))
    return keys


def _curve_records(prepared: Prepared, method: str, metric: str, x, maps, target,
                   ids: list[str]) -> list[dict]:
    from harness import metrics as causal

    settings = prepared.config.metrics[metric]
    options = {"step": settings.step, "score": settings.score,
               "substrate": settings.substrate or DEFAULT_SUBSTRATES[metric],
               "batch_size": settings.batch_size, "ids": ids}
    if metric == "abpc":
        result = causal.abpc(prepared.model, x, maps, target, **options)
        return [{"image_id": i, "method": method, "metric": metric, "value": float(v),
                 "target": int(t), "auc_morf": float(m), "auc_lerf": float(lo)}
                for i, v, t, m, lo in zip(ids, result.abpc.tolist(), target.tolist(),
                                          result.morf.auc.tolist(), result.lerf.auc.tolist(),
                                          strict=True)]
    result = getattr(causal, metric)(prepared.model, x, maps, target, **options)
    return [{"image_id": i, "method": method, "metric": metric, "value": float(v),
             "target": int(t), "curve": curve}
            for i, v, t, curve in zip(ids, result.auc.tolist(), target.tolist(),
                                      result.curves.tolist(), strict=True)]


def _randomization_records(prepared: Prepared, method_config, x, target,
                           ids: list[str]) -> list[dict]:
    from harness.sanity import model_randomization

    settings = prepared.config.metrics["model_randomization"]
    result = model_randomization(
        prepared.model, method_config.registry_name, x, target, mode=settings.mode,
        blocks=list(prepared.blocks), target_mode=settings.target_mode, seed=settings.seed,
        method_params=method_config.params, measures=settings.measures, ids=ids,
        batch_size=prepared.config.batch_size)
    return [{"image_id": r["image_id"], "method": method_config.name,
             "metric": "model_randomization", "value": r["value"], "target": r["target"],
             "measure": r["measure"], "block": r["block"], "step": r["step"],
             "status": r["status"], "mode": settings.mode, "target_mode": settings.target_mode}
            for r in result.records]


def run(config: ExperimentConfig, *, resume: bool = False, progress: bool = True,
        prepared: Prepared | None = None) -> Iterator[dict]:
    """Yield the records computed by this call (those already on disk are skipped)."""
    from tqdm.auto import tqdm

    prepared = prepared or prepare_run(config, resume=resume)
    store = RecordStore(prepared.output_dir / RECORDS)
    done = {record_key(r) for r in store.load()}
    info = model_info(prepared.model)
    samples = list(prepared.dataset)
    batches = [samples[i:i + config.batch_size]
               for i in range(0, len(samples), config.batch_size)]
    bar = tqdm(total=len(batches) * len(config.methods), desc=config.name, unit="unit",
               disable=not progress)
    for batch in batches:
        ids = [sample.id for sample in batch]
        pending = [m for m in config.methods
                   if not expected_keys(config, m.name, ids, prepared.blocks) <= done]
        if not pending:
            bar.update(len(config.methods))
            continue
        x = preprocess([sample.load() for sample in batch], info, device=config.device)
        target = resolve_targets(prepared.model, x, [s.label for s in batch], ids,
                                 mode=config.target)
        for method in config.methods:
            if method not in pending:
                bar.update(1)
                continue
            bar.set_postfix_str(method.name)
            records: list[dict] = []
            curve_metrics = [m for m in config.metrics if m in CURVE_METRICS]
            if curve_metrics:
                maps = saliency_batched(method.registry_name, prepared.model, x, target,
                                        batch_size=config.batch_size, **method.params)
                keep_figure_maps(prepared.output_dir, method.name, ids, maps,
                                 {s.id for s in samples[:config.figure_images]})
                for metric in curve_metrics:
                    records += _curve_records(prepared, method.name, metric, x, maps, target,
                                              ids)
            if randomizes(config, method.name):
                records += _randomization_records(prepared, method, x, target, ids)
            for record in records:
                record["target_source"] = config.target
            fresh = [r for r in records if record_key(r) not in done]
            store.append(fresh)
            done |= {record_key(r) for r in fresh}
            bar.update(1)
            yield from fresh
    bar.close()


def keep_figure_maps(output_dir: Path, method: str, ids: list[str], maps: torch.Tensor,
                     figure_ids: set[str]) -> None:
    """Add the maps ``[N, H, W]`` of the batch's figure images to ``maps/<method>.npz``."""
    keep = [i for i, image_id in enumerate(ids) if image_id in figure_ids]
    if not keep:
        return
    path = output_dir / MAPS / f"{method}.npz"
    kept = {ids[i]: maps[i].detach().cpu().float().numpy() for i in keep}
    if path.exists():
        old_maps, old_ids = load_maps(path)
        kept = {**dict(zip(old_ids or [], old_maps, strict=True)), **kept}
    save_maps(path, np.stack(list(kept.values())), list(kept))


def figure_maps(output_dir: str | Path, method: str, ids: list[str]) -> torch.Tensor | None:
    """The kept maps ``[len(ids), H, W]`` of ``method`` for ``ids``, or None if any is missing."""
    path = Path(output_dir) / MAPS / f"{method}.npz"
    if not path.exists():
        return None
    maps, stored = load_maps(path)
    index = {image_id: i for i, image_id in enumerate(stored or [])}
    if not all(image_id in index for image_id in ids):
        return None
    return torch.from_numpy(np.stack([maps[index[image_id]] for image_id in ids]))


def load_records(output_dir: str | Path) -> list[dict]:
    """All records of the run in ``output_dir``."""
    path = Path(output_dir) / RECORDS
    if not path.exists():
        raise ValueError(f"{output_dir} holds no {RECORDS}: not a harness run folder")
    return RecordStore(path).load()
