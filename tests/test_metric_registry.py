"""The metric registry: every entry is described, a new metric is one module, numbers did not
change when the metrics moved onto it, and a unit's maps are computed once for all its metrics."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from harness.api import table as table_for
from harness.cli import main
from harness.config import ConfigError, from_dict, load_config
from harness.metrics import METRICS, Unit, get_metric
from harness.metrics.registry import NEEDS
from harness.runner import run
from harness.settings import check as check_settings
from harness.store import record_key

from .test_experiment import tiny_raw

SNAPSHOT = Path(__file__).parent / "snapshots"


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_registered_metric_is_described(name):
    entry = get_metric(name)
    assert entry.name == name and entry.direction in ("up", "down")
    assert entry.citation and entry.summary and entry.needs <= NEEDS
    assert dataclasses.is_dataclass(entry.settings)
    settings = entry.settings()  # every field has the paper's default
    assert dataclasses.fields(settings)[0].name
    check_settings(settings)  # the defaults pass their own checks
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.__setattr__(dataclasses.fields(settings)[0].name, None)


def test_metrics_with_columns_of_both_directions_say_so_before_the_run(capsys):
    # ROAD's road_morf is lower-is-better, road_lerf and road_combined higher: the run's
    # description and tag (written when the run starts) and `harness list metrics` name each
    from harness.tracking import describe_metrics

    entry = get_metric("road")
    assert dict(entry.column_directions) == {"road_morf": "down", "road_lerf": "up",
                                             "road_combined": "up"}
    config = from_dict(tiny_raw(Path("unused"), metrics={"road": {}, "deletion": {"step": 224}}))
    description, directions = describe_metrics(config)
    assert "`road` (road_morf ↓, road_lerf ↑, road_combined ↑)" in description
    assert "`deletion` ↓" in description
    assert dict(pair.split("=") for pair in directions.split(",")) == {
        "road_morf": "down", "road_lerf": "up", "road_combined": "up", "deletion": "down"}
    assert main(["list", "metrics"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.strip().startswith("road "))
    assert "road_morf ↓, road_lerf ↑, road_combined ↑" in line  # each column's arrow


TOY = '''
from dataclasses import dataclass

from harness.metrics.registry import register_metric


@dataclass(frozen=True)
class TopShareSettings:
    top: float = 0.1

    def check(self):
        if not 0 < self.top <= 1:
            raise ValueError(f"top: must be in (0, 1], got {self.top}")


@register_metric("top_share", settings=TopShareSettings, direction="up",
                 citation="a test metric")
def top_share(unit, settings):
    """Share of the map's mass in its top fraction of pixels."""
    flat = unit.maps.flatten(1).abs()
    k = max(1, int(settings.top * flat.shape[1]))
    share = flat.topk(k, dim=1).values.sum(1) / flat.sum(1)
    return [{"image_id": i, "value": float(v)} for i, v in zip(unit.ids, share.tolist())]
'''


@pytest.fixture
def toy_metric(tmp_path, monkeypatch):
    (tmp_path / "toy_metric.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_metric  # noqa: F401  (registers at import)

    yield "top_share"
    METRICS.remove("top_share")
    sys.modules.pop("toy_metric")


@pytest.mark.slow
def test_a_new_metric_is_one_module(tmp_path, toy_metric, capsys):
    raw = tiny_raw(tmp_path, methods=["vanilla", "sobel"],
                   metrics={"top_share": {"top": 0.05}, "deletion": {"step": 12544}})
    config = from_dict(raw)
    records = list(run(config, progress=False))
    shares = [r for r in records if r["metric"] == "top_share"]
    assert len(shares) == 6 and all(0 < r["value"] <= 1 for r in shares)
    summary, paths = table_for(str(tmp_path / "run"))
    assert "| method | top_share ↑ | deletion ↓ |" in paths[1].read_text()
    assert "top_share (top=0.05)" in paths[1].read_text()  # the caption states its settings
    with pytest.raises(ConfigError, match=r"metrics.top_share.top: must be in \(0, 1\], got 2"):
        from_dict({**raw, "metrics": {"top_share": {"top": 2}}})
    with pytest.raises(ConfigError, match=r"metrics.top_share.k: unknown key. Valid keys here: "
                                          r"top"):
        from_dict({**raw, "metrics": {"top_share": {"k": 2}}})
    assert main(["list", "metrics"]) == 0
    assert "top_share" in capsys.readouterr().out


def test_metric_names_are_checked_against_the_registry():
    with pytest.raises(ConfigError, match=r"metrics: unknown metric 'road_morff'. Valid metrics: "
                                          r"abpc, .*deletion, .*road, "):
        from_dict({"name": "t", "methods": ["vanilla"], "metrics": {"road_morff": {}}})


@pytest.mark.slow
def test_maps_are_computed_once_per_unit_for_all_metrics(tmp_path, monkeypatch):
    import harness.metrics.registry as registry

    calls = []
    original = registry.Unit.maps.func

    def counted(self):
        calls.append(self.method)
        return original(self)

    monkeypatch.setattr(registry.Unit, "maps", registry.cached_property(counted))
    registry.Unit.maps.__set_name__(registry.Unit, "maps")
    raw = tiny_raw(tmp_path, methods=["vanilla", "sobel"], batch_size=3,
                   metrics={m: {"step": 12544} for m in ("deletion", "insertion", "abpc")})
    list(run(from_dict(raw), progress=False))
    assert calls == ["vanilla", "sobel"], "one maps computation per (batch, method)"


@pytest.mark.slow
def test_moving_onto_the_registry_changed_no_number(tmp_path):
    """The snapshot was written by the runner before the registry (harness 0.1, commit 1ca1388)
    on this config; the similarity measures compared are the ones whose definition did not
    change (Spearman and Pearson of the method's own maps). SmoothGrad's numbers changed on
    purpose when its noise came to be seeded by the image rather than its batch position: its
    records are checked for presence only."""
    raw = yaml.safe_load((SNAPSHOT / "registry_config.yaml").read_text())
    raw["output_dir"] = str(tmp_path / "run")
    raw["metrics"]["model_randomization"]["map_normalisation"] = "method"
    config = from_dict(raw)
    fresh = {record_key(r): r for r in run(config, progress=False)}
    before = [json.loads(line) for line in
              (SNAPSHOT / "registry_records.jsonl").read_text().splitlines()]
    assert len(before) == len(fresh) == 2 * 4 * 5 + 2 * 4 * 3 * 2
    assert {record_key(r) for r in before} == set(fresh)
    for old in before:
        if old["method"] == "smoothgrad":
            continue
        new = fresh[record_key(old)]
        for field in ("value", "auc_morf", "auc_lerf", "curve", "target", "step", "status"):
            if field in old:
                assert new[field] == pytest.approx(old[field], abs=1e-6, nan_ok=True), \
                    (record_key(old), field)


def test_unit_labels_fall_back_to_the_target():
    unit = Unit(model=None, x=torch.zeros(3, 1, 2, 2), target=torch.tensor([4, 5, 6]),
                ids=("a", "b", "c"), method="sobel", labels=(1, None, 3))
    assert unit.label_tensor.tolist() == [1, 5, 3]


def test_shipped_configs_use_registered_metrics():
    for path in sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")):
        config = load_config(path)
        assert set(config.metrics) <= set(METRICS), path.name
