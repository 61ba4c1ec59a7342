"""Meta-evaluation of a config's metrics (MetaQuantus, Hedström et al., TMLR 2023; reference code
``annahedstroem/MetaQuantus`` ``meta_evaluation.py`` ``run_perturbation_analysis`` and
``perturbation_tests/``), computed with the harness's own batched metric functions: every pass
scores every (image batch, method) unit with the registry entries ``fn(unit, settings)`` of the
chosen metrics, as ``harness run`` does.

Passes (each over all images, methods and metrics): one unperturbed pass, then for each test
(space ``model`` / ``input``, kind ``resilience`` / ``adversary``), ``iterations`` x K perturbed
passes: 1 + 2 x spaces x iterations x K passes (MetaQuantus recomputes the unperturbed scores once
per test; here they are computed once and shared).

As MetaQuantus:
- targets and the "kept" images: the explained class is fixed by the clean model on the clean
  input; a perturbation keeps, for the resilience (NR) tests, the images whose top-1 prediction
  under the perturbation equals the clean prediction, for the adversary (AR) tests those whose
  prediction changed;
- model test: maps of the perturbed model (on the clean input), scored with the perturbed model;
- input test: maps of the clean model on the clean input, scored on the perturbed input (a metric
  that calls the method again, e.g. the robustness metrics, calls it on the perturbed input).

Differences (docs/reliability.md): the targets follow the config's ``target`` (MetaQuantus always
explains the clean top-1 prediction: identical with ``target: predicted``); the input clip floor
is the minimum over all clean inputs rather than over MetaQuantus' one batch; perturbations are
seeded per test, iteration, perturbation (and image), not drawn from global generators.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from harness.config import ExperimentConfig
from harness.loading import load_batches
from harness.meta.consistency import meta_consistency, perturbation_scores
from harness.meta.perturb import (
    input_noise,
    perturb_model,
    perturbation_key,
    perturbed_input,
)
from harness.meta.settings import MetaSettings
from harness.metrics.registry import Unit, get_metric, per_image_table
from harness.models import model_info
from harness.runner import batches_of, unit_records
from harness.targets import resolve_targets

KINDS = ("resilience", "adversary")


@dataclass
class Batch:
    """One image batch on the device with what every pass reads: ``target`` (the class
    explained) and ``predicted`` (the clean model's top-1 on the clean input), ``[N]`` each."""

    ids: tuple[str, ...]
    x: torch.Tensor
    labels: tuple
    masks: torch.Tensor | None
    target: torch.Tensor
    predicted: torch.Tensor


@dataclass(frozen=True)
class MetaResult:
    """``scores``: every per-image value (long format: test ``none`` for the unperturbed pass,
    ``model_resilience``, ...; iteration and k -1 there); ``kept`` (test, iteration, k, image_id,
    kept); ``summary``: one row per (column, space) with IAC/IEC/MC; ``consistency``: the
    per-(column, test) IAC ``[methods, iterations, K]`` and IEC ``[iterations, K]`` arrays."""

    scores: pd.DataFrame
    kept: pd.DataFrame
    summary: pd.DataFrame
    consistency: dict
    settings: MetaSettings
    passes: int
    methods: tuple[str, ...] = ()


def chosen_config(config: ExperimentConfig, settings: MetaSettings) -> ExperimentConfig:
    """``config`` restricted to the metrics and methods ``settings`` names (all when None)."""
    names = list(settings.metrics or config.metrics)
    methods = [m for m in config.methods if settings.methods is None or m.name in settings.methods]
    return dataclasses.replace(config, metrics={n: config.metrics[n] for n in names},
                               methods=tuple(methods))


def load_inputs(config: ExperimentConfig, model: torch.nn.Module, dataset) -> list[Batch]:
    """Every image batch of ``dataset`` on the model's device with its targets and clean
    predictions (the meta-evaluation, as MetaQuantus, holds its images in memory)."""
    groups = batches_of(config, dataset)
    needs_masks = any("masks" in get_metric(name).needs for name in config.metrics)
    device = next(model.parameters()).device
    out = []
    for index, x, masks in load_batches(groups, range(len(groups)), model_info(model),
                                        device=device, workers=config.data.workers,
                                        masks=needs_masks):
        ids = tuple(sample.id for sample in groups[index])
        labels = tuple(sample.label for sample in groups[index])
        target = resolve_targets(model, x, list(labels), list(ids), mode=config.target)
        out.append(Batch(ids, x, labels, masks, target, predictions(model, x)))
    return out


def predictions(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The top-1 class ``[N]`` (on the CPU)."""
    with torch.inference_mode():
        return model(x).argmax(dim=1).cpu()


def score_pass(config: ExperimentConfig, model: torch.nn.Module, batches: list[Batch], *,
               inputs: list[torch.Tensor] | None = None,
               maps: dict | None = None, keep_maps: dict | None = None) -> pd.DataFrame:
    """One pass: every (batch, method) unit scored with the config's metrics; ``inputs`` replace
    the batches' x (input test) and ``maps[(batch, method)]`` the maps computed from them (the
    clean maps); ``keep_maps`` collects each unit's maps. Returns the per-image table (method,
    metric column, image_id, value, direction)."""
    records: list[dict] = []
    for b, batch in enumerate(batches):
        x = batch.x if inputs is None else inputs[b]
        for method in config.methods:
            unit = Unit(model, x, batch.target, batch.ids, method.registry_name,
                        dict(method.params), labels=batch.labels, masks=batch.masks,
                        seed=config.seed,
                        batch_size=config.method_batch_size or config.batch_size)
            for name in ("maps", "signed_maps"):
                if maps is not None and (b, method.name, name) in maps:
                    unit.__dict__[name] = maps[(b, method.name, name)]
            records += unit_records(config, unit, method.name)
            if keep_maps is not None:
                for name in ("maps", "signed_maps"):
                    if name in unit.__dict__:
                        keep_maps[(b, method.name, name)] = unit.__dict__[name]
    return per_image_table(records)


def passes(settings: MetaSettings) -> int:
    """The number of passes: 1 + 2 x spaces x iterations x K."""
    return 1 + 2 * len(settings.tests) * settings.iterations * settings.n_perturbations


def meta_evaluate(config: ExperimentConfig, settings: MetaSettings, model: torch.nn.Module,
                  dataset, *, progress: Callable[[str], None] | None = None) -> MetaResult:
    """Run every pass and the MetaQuantus statistics for each metric column of ``config``
    (restricted to ``settings.metrics``) on ``model`` and ``dataset``."""
    config = chosen_config(config, settings)
    return evaluate_batches(config, settings, model, load_inputs(config, model, dataset),
                            progress=progress)


def evaluate_batches(config: ExperimentConfig, settings: MetaSettings, model: torch.nn.Module,
                     batches: list[Batch], *, progress: Callable[[str], None] | None = None
                     ) -> MetaResult:
    """``meta_evaluate`` on batches already on the device (``load_inputs``)."""
    floor = float(min(batch.x.min() for batch in batches))
    clean_maps: dict = {}
    step = _counter(passes(settings), progress)
    clean = score_pass(config, model, batches, keep_maps=clean_maps)
    step("unperturbed")
    frames = [clean.assign(test="none", iteration=-1, k=-1)]
    kept_rows = []
    for space in settings.tests:
        for kind in KINDS:
            test = f"{space}_{kind}"
            level = settings.noise(space, kind)
            for i in range(settings.iterations):
                for k in range(settings.n_perturbations):
                    key = perturbation_key(f"{space}/{kind}", i, k)
                    if space == "model":
                        perturbed = perturb_model(model, level, seed=config.seed, key=key)
                        table = score_pass(config, perturbed, batches)
                        now = [predictions(perturbed, batch.x) for batch in batches]
                        del perturbed
                    else:
                        inputs = [perturbed_input(batch.x, input_noise(batch.x.shape, level,
                                                                       batch.ids,
                                                                       seed=config.seed, key=key),
                                                  floor) for batch in batches]
                        table = score_pass(config, model, batches, inputs=inputs,
                                           maps=clean_maps)
                        now = [predictions(model, x) for x in inputs]
                    frames.append(table.assign(test=test, iteration=i, k=k))
                    for batch, predicted in zip(batches, now, strict=True):
                        same = (predicted == batch.predicted).tolist()
                        kept_rows += [{"test": test, "iteration": i, "k": k, "image_id": image_id,
                                       "kept": bool(s if kind == "resilience" else not s)}
                                      for image_id, s in zip(batch.ids, same, strict=True)]
                    step(f"{test} {i + 1}/{settings.iterations} "
                         f"{k + 1}/{settings.n_perturbations}")
    scores = pd.concat(frames, ignore_index=True)
    kept = pd.DataFrame(kept_rows)
    summary, arrays = statistics(scores, kept, settings)
    return MetaResult(scores, kept, summary, arrays, settings, passes(settings),
                      tuple(m.name for m in config.methods))


def _counter(total: int, progress: Callable[[str], None] | None) -> Callable[[str], None]:
    done = [0]

    def step(label: str) -> None:
        done[0] += 1
        if progress is not None:
            progress(f"[{done[0]}/{total}] {label}")

    return step


def arrays_of(scores: pd.DataFrame, kept: pd.DataFrame, column: str, test: str,
              settings: MetaSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(``q_star`` ``[methods, images]``, ``q_hat`` ``[iterations, K, methods, images]``,
    ``kept`` ``[iterations, K, images]``, the methods) of one column and test."""
    rows = scores[scores["metric"] == column]
    clean = rows[rows["test"] == "none"]
    methods = list(dict.fromkeys(clean["method"]))
    images = list(dict.fromkeys(clean["image_id"]))
    q_star = (clean.pivot_table(index="method", columns="image_id", values="value",
                                dropna=False, aggfunc="first")
              .reindex(index=methods, columns=images).to_numpy(dtype=float))
    shape = (settings.iterations, settings.n_perturbations)
    q_hat = np.full((*shape, len(methods), len(images)), np.nan)
    mask = np.zeros((*shape, len(images)), dtype=bool)
    perturbed = rows[rows["test"] == test]
    m = pd.Index(methods).get_indexer(perturbed["method"])
    n = pd.Index(images).get_indexer(perturbed["image_id"])
    q_hat[perturbed["iteration"].to_numpy(), perturbed["k"].to_numpy(), m, n] = \
        perturbed["value"].to_numpy(dtype=float, na_value=np.nan)
    mine = kept[kept["test"] == test]
    n = pd.Index(images).get_indexer(mine["image_id"])
    keep = n >= 0
    mask[mine["iteration"].to_numpy()[keep], mine["k"].to_numpy()[keep], n[keep]] = \
        mine["kept"].to_numpy(dtype=bool)[keep]
    return q_star, q_hat, mask, methods


def statistics(scores: pd.DataFrame, kept: pd.DataFrame, settings: MetaSettings
               ) -> tuple[pd.DataFrame, dict]:
    """Per (metric column, space): IAC_NR, IAC_AR, IEC_NR, IEC_AR (mean and std over iterations),
    MC (``MC_mean``) and its std, the mean number of kept images per test; and the raw arrays."""
    clean = scores[scores["test"] == "none"]
    directions = dict(zip(clean["metric"], clean["direction"], strict=False))
    rows, arrays = [], {}
    for column in dict.fromkeys(clean["metric"]):
        for space in settings.tests:
            tests = {}
            for kind in KINDS:
                q_star, q_hat, mask, _ = arrays_of(scores, kept, column, f"{space}_{kind}",
                                                   settings)
                tests[kind] = perturbation_scores(q_star, q_hat, mask,
                                                  adversarial=kind == "adversary",
                                                  direction=directions[column])
                arrays[(column, f"{space}_{kind}")] = tests[kind]
                tests[f"{kind}_kept"] = float(mask.sum(axis=-1).mean())
            result = meta_consistency(tests["resilience"], tests["adversary"])
            rows.append({"metric": column, "direction": directions[column], "space": space,
                         "MC": result["MC_mean"], "MC_std": result["MC_std"],
                         **{f"{name}{suffix}": result[f"{name}{suffix}"]
                            for name in ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR")
                            for suffix in ("_mean", "_std")},
                         "kept_NR": tests["resilience_kept"], "kept_AR": tests["adversary_kept"],
                         "n_methods": int(q_star.shape[0]), "n_images": int(q_star.shape[1])})
    return pd.DataFrame(rows), arrays
