"""ROAD as a registered metric: settings named in config errors before any compute, records per
(image, order) equal to the pure function's, labels from the dataset, batch independence, and
the table columns road_morf, road_lerf, road_combined through the runner and `harness table`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.config import ConfigError, from_dict
from harness.images import preprocess
from harness.methods import saliency_batched
from harness.metrics import METRICS, RoadSettings, Unit, get_metric, road, road_combined
from harness.metrics.registry import metric_curves, per_image_table
from harness.models import model_info
from harness.runner import prepare_run, run
from harness.targets import resolve_targets

from .test_experiment import tiny_raw


def test_defaults_are_the_reference_experiments():
    entry = get_metric("road")
    assert entry.settings is RoadSettings and entry.direction == "up"
    assert entry.needs == frozenset({"maps"})
    assert entry.defaults() == {
        "orders": ["morf", "lerf"], "percentages": (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9),
        "imputer": "linear", "noise": 0.01, "score": "accuracy", "batch_size": None,
        "methods": None, "patch": None}  # patch None: pixel order, the reference's
    assert entry.parts(RoadSettings(), None) == [("morf", None), ("lerf", None)]
    assert entry.parts(RoadSettings(orders=["lerf"]), None) == [("lerf", None)]


BASE = {"name": "t", "methods": ["sobel"]}


@pytest.mark.parametrize("settings, message", [
    ({"imputer": "cubic"}, r"metrics\.road\.imputer: 'cubic' is not one of: linear, mean, zero"),
    ({"orders": ["morf", "random"]}, r"metrics\.road\.orders: 'random' is not one of: morf, "
                                     r"lerf"),
    ({"orders": []}, r"metrics\.road\.orders: name at least one of: morf, lerf"),
    ({"orders": ["morf", "morf"]}, r"metrics\.road\.orders: an order is named twice"),
    ({"percentages": [0.1, 1.0]}, r"metrics\.road\.percentages: percentage 1\.0 is outside "
                                  r"\(0, 1\)"),
    ({"percentages": [10, 50]}, r"metrics\.road\.percentages: percentage 10 is outside \(0, 1\)"),
    ({"percentages": []}, r"metrics\.road\.percentages: percentages must be a non-empty"),
    ({"percentages": [0.2, 0.4]}, r"metrics\.road\.percentages: MoRF removes the fractions "
                                  r"\{0\.2, 0\.4\} and LeRF .*\{0\.6, 0\.8\}: none in common"),
    ({"score": "auc"}, r"metrics\.road\.score: 'auc' is not one of: accuracy, prob"),
    ({"noise": -1}, r"metrics\.road\.noise: must be a finite number >= 0"),
    ({"batch_size": 0}, r"metrics\.road\.batch_size: must be an integer >= 1"),
    ({"percentages": 0.5}, r"metrics\.road\.percentages: expected tuple"),
    ({"cubic": 1}, r"metrics\.road\.cubic: unknown key. Valid keys here: orders, "
                   r"percentages, imputer, noise, score, batch_size, methods"),
])
def test_bad_settings_are_config_errors_naming_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({**BASE, "metrics": {"road": settings}})


def test_one_order_needs_no_shared_fraction():
    config = from_dict({**BASE, "metrics": {"road": {"orders": ["morf"],
                                                     "percentages": [0.2, 0.4]}}})
    assert config.metrics["road"].percentages == [0.2, 0.4]


def tiny_unit(tiny_cnn, n_images: int = 3) -> Unit:
    generator = torch.Generator().manual_seed(21)
    x = torch.randn(n_images, 3, 16, 16, generator=generator)
    ids = tuple("abcde"[:n_images])
    labels = (1, None, 3, 0, 2)[:n_images]
    return Unit(tiny_cnn, x, torch.tensor([0, 2, 4, 1, 3][:n_images]), ids, "sobel",
                labels=labels, seed=5)


@pytest.mark.slow
def test_records_equal_the_function_with_dataset_labels_and_the_model_normalisation(tiny_cnn):
    unit = tiny_unit(tiny_cnn)
    settings = RoadSettings(percentages=(0.25, 0.5, 0.75, 0.9), score="prob")
    records = get_metric("road").fn(unit, settings)
    assert [(r["image_id"], r["measure"]) for r in records] == [
        (i, order) for order in ("morf", "lerf") for i in unit.ids]
    labels = torch.tensor([1, 2, 3])  # image b has no label: its target
    std = model_info(tiny_cnn).std
    results = {order: road(tiny_cnn, unit.x, unit.maps, unit.target, order=order,
                           percentages=(0.25, 0.5, 0.75, 0.9), score="prob", labels=labels,
                           seed=5, ids=list(unit.ids), pixel_std=std)
               for order in ("morf", "lerf")}
    combined = road_combined(results["morf"], results["lerf"])
    for record in records:
        result = results[record["measure"]]
        i = unit.ids.index(record["image_id"])
        assert record["value"] == pytest.approx(float(result.values[i]), abs=1e-12)
        assert record["probs"] == pytest.approx(result.probs[i].tolist(), abs=1e-12)
        assert record["correct"] == result.correct[i].tolist()
        assert record["removed_fraction"] == result.removed_fraction.tolist()
        assert record["combined"] == pytest.approx(float(combined[i]), abs=1e-12)
        assert record["score"] == "prob" and record["imputer"] == "linear"
        # the curve: the chosen score against the removed fraction, ascending
        pairs = sorted(zip(result.removed_fraction.tolist(), result.probs[i].tolist(),
                           strict=True))
        assert record["curve_x"] == [x for x, _ in pairs]
        assert record["curve"] == pytest.approx([y for _, y in pairs], abs=1e-12)
    # combined by hand: MoRF at p against LeRF at 1 - p (removed 0.25, 0.5, 0.75; MoRF's 0.9
    # and LeRF's removed 0.1 have no partner)
    morf = {r["image_id"]: r["probs"] for r in records if r["measure"] == "morf"}
    lerf = {r["image_id"]: r["probs"] for r in records if r["measure"] == "lerf"}
    for record in records:
        m, lo = morf[record["image_id"]], lerf[record["image_id"]]
        by_hand = ((lo[2] - m[0]) + (lo[1] - m[1]) + (lo[0] - m[2])) / 3 / 2
        assert record["combined"] == pytest.approx(by_hand, abs=1e-12)


def test_an_image_does_not_depend_on_its_batch(tiny_cnn):
    unit = tiny_unit(tiny_cnn)
    settings = RoadSettings(percentages=(0.3, 0.5, 0.7))
    together = {(r["image_id"], r["measure"]): r for r in get_metric("road").fn(unit, settings)}
    for i, image_id in enumerate(unit.ids):
        alone = Unit(tiny_cnn, unit.x[i:i + 1], unit.target[i:i + 1], (image_id,), "sobel",
                     labels=unit.labels[i:i + 1], seed=5)
        for record in get_metric("road").fn(alone, settings):
            other = together[(image_id, record["measure"])]
            assert record["probs"] == pytest.approx(other["probs"], abs=1e-6)
            assert record["correct"] == other["correct"]
            assert record["value"] == other["value"] and record["combined"] == other["combined"]


def test_columns_and_curves_of_the_records(tiny_cnn):
    unit = tiny_unit(tiny_cnn)
    records = [{**r, "method": "sobel", "metric": "road"}
               for r in get_metric("road").fn(unit, RoadSettings(percentages=(0.3, 0.7)))]
    table = per_image_table(records)
    assert list(dict.fromkeys(table["metric"])) == ["road_morf", "road_lerf", "road_combined"]
    assert dict(zip(table["metric"], table["direction"], strict=False)) == {
        "road_morf": "down", "road_lerf": "up", "road_combined": "up"}
    curves = metric_curves(records)
    assert set(curves) == {"road_morf", "road_lerf"}
    x, values = curves["road_lerf"]["sobel"]
    assert values.shape == (3, 2) and np.all(np.diff(x) > 0)
    only_morf = [{**r, "method": "sobel", "metric": "road"} for r in get_metric("road").fn(
        unit, RoadSettings(orders=["morf"], percentages=(0.3,)))]
    assert set(per_image_table(only_morf)["metric"]) == {"road_morf"}


@pytest.mark.slow
def test_road_end_to_end_through_the_runner_and_the_table(tmp_path, capsys):
    raw = tiny_raw(tmp_path, methods=["vanilla", "sobel"], batch_size=2,
                   data={"name": "samples", "options": {"names": ["chelsea", "coffee"]}},
                   metrics={"road": {"percentages": [0.3, 0.5, 0.7]}})
    config = from_dict(raw)
    records = list(run(config, progress=False))
    assert len(records) == 2 * 2 * 2  # images x methods x orders
    assert {(r["method"], r["image_id"], r["measure"]) for r in records} == {
        (m, i, o) for m in ("vanilla", "sobel") for i in ("chelsea", "coffee")
        for o in ("morf", "lerf")}
    # the runner's numbers are the function's on the same inputs (the samples have no labels:
    # correctness against the target, the clean prediction)
    prepared = prepare_run(config, resume=True)
    prepared.release()
    samples = list(prepared.dataset)
    ids = [s.id for s in samples]
    x = preprocess([s.load() for s in samples], prepared.model.harness_info)
    target = resolve_targets(prepared.model, x, [s.label for s in samples], ids,
                             mode=config.target)
    maps = saliency_batched("vanilla", prepared.model, x, target)
    info = model_info(prepared.model)
    for order in ("morf", "lerf"):
        expected = road(prepared.model, x, maps, target, order=order,
                        percentages=(0.3, 0.5, 0.7), labels=target, seed=config.seed, ids=ids,
                        pixel_mean=info.mean, pixel_std=info.std)
        for i, image_id in enumerate(ids):
            record = next(r for r in records if r["method"] == "vanilla" and
                          r["image_id"] == image_id and r["measure"] == order)
            assert record["correct"] == expected.correct[i].tolist()
            assert record["probs"] == pytest.approx(expected.probs[i].tolist(), abs=1e-5)
            assert record["value"] == float(expected.values[i])
            assert record["value"] == np.mean(record["correct"])  # the paper's accuracy
            assert record["target"] == int(target[i])
    assert main(["table", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "| method | road_morf ↓ | road_lerf ↑ | road_combined ↑ |" in printed
    assert ("road (orders=morf/lerf, percentages=0.3/0.5/0.7, imputer=linear, noise=0.01, "
            "score=accuracy)") in printed


def test_listed_with_its_citation(capsys):
    assert "road" in METRICS
    assert main(["list", "metrics"]) == 0
    out = capsys.readouterr().out
    assert "road" in out and "2202.00449" in out
    assert dataclasses.is_dataclass(RoadSettings)
