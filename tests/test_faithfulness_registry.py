"""The faithfulness metrics as registry entries: their directions, needs and reference defaults,
records equal to the pure functions on the maps they say they read, bad settings named by
config validation, and every entry run end to end through the runner and `harness table`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

import harness
from harness import metrics
from harness.cli import main
from harness.config import ConfigError, from_dict
from harness.figures import plot_mean_curves
from harness.metrics import Unit, get_metric
from harness.metrics.registry import metric_curves
from harness.runner import run
from harness.sanity import random_logit
from harness.settings import check as check_settings

from .test_experiment import tiny_raw

ENTRIES = {
    "infidelity": ("down", {"maps"}, {
        "perturbation": "gaussian", "n_perturbations": None, "noise": 0.2,
        "square_sizes": list(range(1, 11)), "baseline": "black", "score": "logit",
        "scaling": True, "map": "signed", "batch_size": None, "methods": None}),
    "faithfulness_correlation": ("up", {"maps"}, {
        "subset_size": 224, "n_subsets": 100, "baseline": "black", "score": "logit",
        "map": "signed", "batch_size": None, "methods": None}),
    "average_drop": ("down", {"maps"}, {"score": "prob", "batch_size": None, "methods": None}),
    "increase_in_confidence": ("up", {"maps"}, {"score": "prob", "batch_size": None,
                                                "methods": None}),
    "irof": ("up", {"maps"}, {"n_segments": 100, "compactness": 10.0, "sigma": 0.0,
                              "baseline": "mean", "score": "prob", "batch_size": None,
                              "methods": None}),
    "random_logit": ("down", {"maps", "method"}, {"measure": "ssim", "methods": None}),
}

# tiny settings: a few forward passes per image
TINY = {
    "infidelity": {"n_perturbations": 4, "batch_size": 8},
    "faithfulness_correlation": {"n_subsets": 4, "subset_size": 500, "batch_size": 8},
    "average_drop": {},
    "increase_in_confidence": {},
    "irof": {"n_segments": 4, "batch_size": 8},
    "random_logit": {},
}


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_entries_have_the_reference_defaults(name):
    direction, needs, defaults = ENTRIES[name]
    entry = get_metric(name)
    assert entry.direction == direction and set(entry.needs) == needs
    assert entry.defaults() == defaults
    assert entry.citation and entry.summary
    check_settings(entry.settings())
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.settings().methods = ["vanilla"]


def _unit(model, method: str, n_images: int = 2, seed: int = 3) -> Unit:
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(n_images, 3, 16, 16, generator=generator)
    target = torch.tensor([1, 4, 2][:n_images])
    return Unit(model, x, target, tuple(f"img{i}" for i in range(n_images)), method, {},
                seed=seed, batch_size=2)


def _records(unit: Unit, name: str, **settings) -> list[dict]:
    entry = get_metric(name)
    return entry.fn(unit, entry.settings(**settings))


def test_infidelity_and_correlation_read_the_signed_map_where_there_is_one(tiny_cnn):
    for method, kind in (("vanilla", "signed"), ("sobel", "absolute")):
        unit = _unit(tiny_cnn, method)
        expected_map = (harness.saliency(method, tiny_cnn, unit.x, unit.target, signed=True)
                        if kind == "signed" else harness.saliency(method, tiny_cnn, unit.x,
                                                                   unit.target))
        ids = list(unit.ids)
        records = _records(unit, "infidelity", n_perturbations=5)
        direct = metrics.infidelity(tiny_cnn, unit.x, expected_map, unit.target,
                                    n_perturbations=5, seed=3, ids=ids)
        assert [r["map"] for r in records] == [kind, kind]
        assert [r["n_perturbations"] for r in records] == [5, 5]
        np.testing.assert_allclose([r["value"] for r in records], direct.values.numpy(),
                                   rtol=1e-6)
        np.testing.assert_allclose([r["beta"] for r in records], direct.beta.numpy(), rtol=1e-6)
        records = _records(unit, "faithfulness_correlation", n_subsets=5, subset_size=20)
        direct = metrics.faithfulness_correlation(tiny_cnn, unit.x, expected_map, unit.target,
                                                  n_subsets=5, subset_size=20, seed=3, ids=ids)
        assert [r["map"] for r in records] == [kind, kind]
        np.testing.assert_allclose([r["value"] for r in records], direct.values.numpy(),
                                   rtol=1e-6)
    # map: absolute scores the method's own map, which differs from its signed map here
    unit = _unit(tiny_cnn, "vanilla")
    absolute = _records(unit, "infidelity", n_perturbations=5, map="absolute")
    signed = _records(unit, "infidelity", n_perturbations=5)
    assert {r["map"] for r in absolute} == {"absolute"}
    assert [r["value"] for r in absolute] != pytest.approx([r["value"] for r in signed])


def test_confidence_irof_and_random_logit_records_equal_the_functions(tiny_cnn):
    unit = _unit(tiny_cnn, "vanilla")
    maps = harness.saliency("vanilla", tiny_cnn, unit.x, unit.target)
    ids = list(unit.ids)
    change = metrics.average_drop(tiny_cnn, unit.x, maps, unit.target)
    for name, values in (("average_drop", change.drop), ("increase_in_confidence",
                                                         change.increase)):
        records = _records(unit, name)
        np.testing.assert_allclose([r["value"] for r in records], values.numpy(), rtol=1e-6)
        np.testing.assert_allclose([r["clean_score"] for r in records], change.clean.numpy(),
                                   rtol=1e-6)
        np.testing.assert_allclose([r["masked_score"] for r in records],
                                   change.explained.numpy(), rtol=1e-6)
    records = _records(unit, "irof", n_segments=6)
    direct = metrics.irof(tiny_cnn, unit.x, maps, unit.target, n_segments=6)
    for index, record in enumerate(records):
        k = int(direct.n_segments[index])
        assert record["segments"] == k and len(record["curve"]) == len(record["curve_x"]) == k + 1
        assert record["curve_x"][0] == 0 and record["curve_x"][-1] == 1
        np.testing.assert_allclose(record["curve"], direct.curves[index, :k + 1].numpy())
        assert record["value"] == pytest.approx(float(direct.values[index]), rel=1e-9)
        assert record["unnormalised"] == pytest.approx(float(direct.unnormalised[index]))
    records = _records(unit, "random_logit")
    direct = random_logit(tiny_cnn, "vanilla", unit.x, unit.target, seed=3, ids=ids,
                          batch_size=2)
    assert [r["other_target"] for r in records] == direct.other_target.tolist()
    np.testing.assert_allclose([r["value"] for r in records], direct.values.numpy(), rtol=1e-6)
    assert {r["similarity"] for r in records} == {"ssim"}
    # a signed measure for a method without a signed variant: None, with the reason
    records = _records(_unit(tiny_cnn, "sobel"), "random_logit", measure="spearman_signed")
    assert [(r["value"], r["status"]) for r in records] == [
        (None, "method has no signed variant")] * 2


def test_undefined_correlation_is_none_with_its_reason(tiny_cnn):
    unit = _unit(tiny_cnn, "center")  # the same map for every image, but not constant
    records = _records(unit, "faithfulness_correlation", n_subsets=4, subset_size=10)
    assert all(r["status"] == "ok" and -1 <= r["value"] <= 1 for r in records)
    constant = Unit(tiny_cnn, unit.x, unit.target, unit.ids, "vanilla")
    constant.__dict__["signed_maps"] = torch.ones(2, 16, 16)  # a constant signed map
    records = _records(constant, "faithfulness_correlation", n_subsets=4, subset_size=10)
    assert [r["value"] for r in records] == [None, None]
    assert records[0]["status"] == "undefined: the attribution sums are equal for every subset"


def test_irof_curves_are_interpolated_onto_one_grid():
    frame = pd.DataFrame({"image_id": ["a", "b"],
                          "curve": [[1.0, 0.5, 0.0], [1.0, 0.8, 0.6, 0.2]],
                          "curve_x": [[0.0, 0.5, 1.0], [0.0, 1 / 3, 2 / 3, 1.0]]})
    x, values = get_metric("irof").curves(frame)["irof"]
    assert x.shape == (101,) and values.shape == (2, 101)
    assert values[0, 25] == pytest.approx(0.75) and values[1, 50] == pytest.approx(0.7)
    np.testing.assert_allclose(values[:, [0, -1]], [[1.0, 0.0], [1.0, 0.2]])


BAD_SETTINGS = [
    ("infidelity", "perturbation", "noise", r"'noise' is not one of: gaussian, square"),
    ("infidelity", "n_perturbations", 0, r"must be an integer >= 1"),
    ("infidelity", "noise", -0.1, r"must be a finite number > 0"),
    ("infidelity", "square_sizes", [2, 2], r"must be distinct integer sides >= 1"),
    ("infidelity", "baseline", "mean colour", r"'mean colour' is not one of: black, zero, mean"),
    ("infidelity", "map", "raw", r"'raw' is not one of: signed, absolute"),
    ("infidelity", "batch_size", 0, r"must be an integer >= 1 \(or omitted"),
    ("faithfulness_correlation", "n_subsets", 2, r"must be an integer >= 3"),
    ("faithfulness_correlation", "baseline", "blur",
     r"'blur' is not one of: black, zero, mean, min"),
    ("faithfulness_correlation", "score", "softmax", r"'softmax' is not one of: prob, logit"),
    ("average_drop", "score", "confidence", r"'confidence' is not one of: prob, logit"),
    ("increase_in_confidence", "batch_size", -1, r"must be an integer >= 1"),
    ("irof", "n_segments", 0, r"must be an integer >= 1"),
    ("irof", "compactness", 0, r"must be a finite number > 0"),
    ("irof", "sigma", -1.0, r"must be a finite number >= 0"),
    ("irof", "baseline", "black!", r"'black!' is not one of: mean, zero, black"),
    ("random_logit", "measure", "mse", r"'mse' is not one of: spearman_abs"),
]


@pytest.mark.parametrize(("name", "field", "value", "message"), BAD_SETTINGS)
def test_bad_settings_are_named_by_config_validation(tmp_path, name, field, value, message):
    raw = tiny_raw(tmp_path, metrics={name: {field: value}})
    with pytest.raises(ConfigError, match=rf"metrics\.{name}\.{field}: {message}"):
        from_dict(raw)


def test_wrong_types_and_unknown_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"metrics\.infidelity\.n_perturbations: expected"):
        from_dict(tiny_raw(tmp_path, metrics={"infidelity": {"n_perturbations": "many"}}))
    with pytest.raises(ConfigError, match=r"metrics\.irof\.segments: unknown key"):
        from_dict(tiny_raw(tmp_path, metrics={"irof": {"segments": 10}}))


@pytest.mark.slow
def test_every_faithfulness_metric_runs_end_to_end(tmp_path, capsys):
    raw = tiny_raw(tmp_path, methods=["vanilla", "sobel"], metrics=TINY,
                   data={"name": "samples", "options": {"names": ["chelsea", "coffee"]}})
    records = list(run(from_dict(raw), progress=False))
    assert len(records) == 2 * 2 * len(TINY)
    by = {(r["method"], r["metric"], r["image_id"]): r for r in records}
    for record in records:
        assert record["value"] is None or math.isfinite(record["value"]), record
        assert record["value"] is not None or record["status"].startswith("undefined"), record
    for image in ("chelsea", "coffee"):
        assert by[("vanilla", "infidelity", image)]["map"] == "signed"
        assert by[("sobel", "infidelity", image)]["map"] == "absolute"
        assert by[("sobel", "random_logit", image)]["value"] == pytest.approx(1.0)  # no class
        irof = by[("vanilla", "irof", image)]
        assert len(irof["curve"]) == irof["segments"] + 1 == len(irof["curve_x"])
        assert 0 <= by[("vanilla", "average_drop", image)]["value"] <= 1
    curves = metric_curves(records)
    assert set(curves) == {"irof"} and curves["irof"]["vanilla"][1].shape == (2, 101)
    assert plot_mean_curves(records, tmp_path / "curves.png") is not None
    assert main(["table", str(tmp_path / "run")]) == 0
    table = capsys.readouterr().out
    assert ("| method | infidelity ↓ | faithfulness_correlation ↑ | average_drop ↓ | "
            "increase_in_confidence ↑ | irof ↑ | random_logit ↓ |") in table
    assert "infidelity (perturbation=gaussian, n_perturbations=4" in table  # the caption
    assert "map=signed" in table
