"""The robustness, localisation and complexity metrics through the registry and the runner: every
entry end to end on a tiny config and equal to its pure function, masks reaching the
localisation metrics, one shared pass for the robustness metrics, errors before any compute."""

from __future__ import annotations

import warnings

import pytest
import torch

import harness
from harness import metrics
from harness.api import table as table_for
from harness.config import ConfigError, from_dict
from harness.datasets import Dataset, load_masks, subset
from harness.images import preprocess
from harness.methods import saliency_batched
from harness.metrics import get_metric
from harness.metrics import robustness as robustness_module
from harness.runner import check_filter_model, load_records, prepare_run, run
from harness.targets import resolve_targets

from .test_experiment import tiny_raw

SUITE2 = {
    "pointing_game": {"tolerance": 15},
    "relevance_mass_accuracy": {},
    "relevance_rank_accuracy": {},
    "attribution_localisation": {},
    "top_k_intersection": {"k": 500},
    "sparseness": {},
    "complexity": {},
    "effective_complexity": {},
    "max_sensitivity": {"n_samples": 2},
    "avg_sensitivity": {"n_samples": 2},
    "local_lipschitz_estimate": {"n_samples": 2},
    "relative_input_stability": {"n_samples": 2},
}
PASTED = {"name": "pasted_objects", "options": {"size": 3, "model": None}}


def masked_raw(folder, **changes) -> dict:
    raw = tiny_raw(folder, data=PASTED, methods=["vanilla", "sobel"], metrics=SUITE2)
    raw.update(changes)
    return raw


def test_the_suite2_metrics_are_registered_with_their_needs():
    for name in SUITE2:
        entry = get_metric(name)
        expected = ({"method"} if "sensitivity" in name or name in (
            "local_lipschitz_estimate", "relative_input_stability") else
            {"maps", "masks"} if name in ("pointing_game", "relevance_mass_accuracy",
                                          "relevance_rank_accuracy", "attribution_localisation",
                                          "top_k_intersection") else {"maps"})
        assert entry.needs == expected, name
    assert get_metric("max_sensitivity").defaults()["radius_units"] == "pixel"


def prepared_inputs(config):
    prepared = prepare_run(config, resume=True)
    prepared.release()  # only the model and data are read
    samples = list(prepared.dataset)
    ids = [s.id for s in samples]
    info = prepared.model.harness_info
    x = preprocess([s.load() for s in samples], info)
    target = resolve_targets(prepared.model, x, [s.label for s in samples], ids,
                             mode=config.target)
    return prepared.model, samples, ids, x, target, load_masks(samples, info)


@pytest.mark.slow
def test_every_suite2_metric_runs_end_to_end_and_equals_its_function(tmp_path):
    config = from_dict(masked_raw(tmp_path))
    records = list(run(config, progress=False))
    assert len(records) == 3 * 2 * len(SUITE2)  # images x methods x metrics
    assert load_records(config.output_dir) == records
    model, samples, ids, x, target, masks = prepared_inputs(config)
    by_key = {(r["method"], r["metric"], r["image_id"]): r for r in records}
    for method in ("vanilla", "sobel"):
        maps = saliency_batched(method, model, x, target, batch_size=config.batch_size)
        expected = {
            "pointing_game": metrics.pointing_game(maps, masks).values,
            "relevance_mass_accuracy": metrics.relevance_mass_accuracy(maps, masks).values,
            "relevance_rank_accuracy": metrics.relevance_rank_accuracy(maps, masks).values,
            "attribution_localisation": metrics.attribution_localisation(maps, masks).values,
            "top_k_intersection": metrics.top_k_intersection(maps, masks, k=500).values,
            "sparseness": metrics.sparseness(maps).values,
            "complexity": metrics.complexity(maps).values,
            "effective_complexity": metrics.effective_complexity(maps).values,
        }
        for name, function in (("max_sensitivity", metrics.max_sensitivity),
                               ("avg_sensitivity", metrics.avg_sensitivity),
                               ("local_lipschitz_estimate", metrics.local_lipschitz_estimate),
                               ("relative_input_stability", metrics.relative_input_stability)):
            expected[name] = function(model, method, x, target, n_samples=2, seed=config.seed,
                                      ids=ids).values
        for name, values in expected.items():
            for i, image_id in enumerate(ids):
                record = by_key[(method, name, image_id)]
                value = float(values[i])
                if record["value"] is None:
                    assert not torch.isfinite(values[i]) and record["status"].startswith(
                        "undefined"), (method, name, image_id)
                else:  # RIS divides by the map elementwise: float noise of the batch grows
                    rel = 1e-3 if name == "relative_input_stability" else 1e-6
                    assert record["value"] == pytest.approx(value, rel=rel, abs=1e-9), \
                        (method, name, image_id)
    # the pointing game's records carry the class: TorchRay's class-averaged summary from them
    hits = [r for r in records if r["metric"] == "pointing_game" and r["method"] == "vanilla"]
    assert [r["class"] for r in hits] == [s.label for s in samples]
    assert all(len(r["point"]) == 2 for r in hits)
    summary = metrics.pointing_game_summary([r["value"] for r in hits],
                                            [r["class"] for r in hits])
    assert summary.overall == pytest.approx(sum(r["value"] for r in hits) / 3)
    stability = [r for r in records if r["metric"] == "relative_input_stability"]
    assert all(0 <= r["kept"] <= 2 for r in stability)
    _, paths = table_for(str(tmp_path / "run"))
    table = paths[1].read_text()
    for name in SUITE2:
        arrow = "↑" if get_metric(name).direction == "up" else "↓"
        assert f"{name} {arrow}" in table, name


@pytest.mark.slow
def test_robustness_metrics_share_one_pass_per_unit(tmp_path, monkeypatch):
    calls = {"statistics": 0, "predictions": 0}
    statistics, predictions = (robustness_module.sample_statistics,
                               robustness_module.kept_predictions)

    def counted_statistics(*args, **kwargs):
        calls["statistics"] += 1
        return statistics(*args, **kwargs)

    def counted_predictions(*args, **kwargs):
        calls["predictions"] += 1
        return predictions(*args, **kwargs)

    monkeypatch.setattr(robustness_module, "sample_statistics", counted_statistics)
    monkeypatch.setattr(robustness_module, "kept_predictions", counted_predictions)
    robust = {name: settings for name, settings in SUITE2.items()
              if get_metric(name).needs == {"method"}}
    list(run(from_dict(masked_raw(tmp_path, metrics=robust)), progress=False))
    units = 2 * 2  # 2 batches (2 + 1 images) x 2 methods
    assert calls == {"statistics": units, "predictions": units}


def test_a_masks_metric_on_data_without_masks_is_refused_before_compute(tmp_path):
    raw = masked_raw(tmp_path, metrics={"pointing_game": {}})
    for data in ({"name": "samples", "options": {"names": ["chelsea"]}},
                 {"name": "imagefolder", "options": {"root": str(tmp_path)}}):
        with pytest.raises(ConfigError, match=r"metrics.pointing_game: needs ground-truth masks"
                                              r".*datasets with masks: imagefolder, "
                                              r"pasted_objects"):
            from_dict({**raw, "data": data})
    boxed = {"name": "imagefolder", "options": {"root": str(tmp_path), "boxes": str(tmp_path)}}
    assert "pointing_game" in from_dict({**raw, "data": boxed}).metrics
    complexity_only = {**raw, "data": {"name": "samples"}, "metrics": {"sparseness": {}}}
    assert "sparseness" in from_dict(complexity_only).metrics  # maps only: any dataset


@pytest.mark.parametrize("metric, settings, message", [
    ("max_sensitivity", {"radius_units": "pixels"},
     r"metrics.max_sensitivity.radius_units: 'pixels' is not one of: pixel, input"),
    ("avg_sensitivity", {"n_samples": 0}, r"metrics.avg_sensitivity.n_samples: must be"),
    ("local_lipschitz_estimate", {"radius": 0},
     r"local_lipschitz_estimate.radius: must be a finite number > 0"),
    ("relative_input_stability", {"p": 0},
     r"relative_input_stability.p: must be a finite number > 0"),
    ("max_sensitivity", {"norm": "l3"}, r"max_sensitivity.norm: 'l3' is not one of: fro"),
    ("pointing_game", {"tolerance": -1}, r"pointing_game.tolerance: must be an integer >= 0"),
    ("top_k_intersection", {"k": 0}, r"top_k_intersection.k: must be an integer >= 1"),
    ("effective_complexity", {"eps": -1},
     r"effective_complexity.eps: must be a finite number >= 0"),
])
def test_bad_settings_are_named(tmp_path, metric, settings, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(masked_raw(tmp_path, metrics={metric: settings}))


def test_top_k_beyond_the_input_is_refused_before_compute(tmp_path):
    config = from_dict(masked_raw(tmp_path, metrics={"top_k_intersection": {"k": 60000}}))
    with pytest.raises(ConfigError, match=r"metrics.top_k_intersection.k: 60000 is more than the "
                                          r"50176 pixels"):
        list(run(config, progress=False))
    assert not (tmp_path / "run" / "records.jsonl").exists()


def test_the_filter_model_is_recorded_and_a_different_model_warned(linear_model):
    data = Dataset("pasted_objects", (), filter_model="efficientnet_lite0 (weights-x)")
    assert subset(data, limit=None, seed=None).filter_model == data.filter_model
    with pytest.warns(UserWarning, match="kept the images that efficientnet_lite0 .weights-x. "
                                         "recognised, but the model evaluated is"):
        check_filter_model(data, linear_model)
    info = linear_model.harness_info
    same = Dataset("pasted_objects", (), filter_model=f"{info.name} ({info.weights})")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_filter_model(same, linear_model)
        check_filter_model(Dataset("samples", ()), linear_model)
    unfiltered = harness.load_dataset("pasted_objects", size=2, model=None, canvas=64, limit=1)
    assert unfiltered.filter_model is None and len(unfiltered) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pasted_objects_filter_a_cuda_model_on_the_cpu(lite0):
    cpu = harness.load_dataset("pasted_objects", size=2, model=lite0)
    on_gpu = harness.load_model("efficientnet_lite0", device="cuda")
    gpu = harness.load_dataset("pasted_objects", size=2, model=on_gpu)
    assert gpu.ids == cpu.ids and gpu.filter_model == cpu.filter_model
    assert next(on_gpu.parameters()).device.type == "cuda"  # the caller's model stays put
