"""Plug-ins of every kind without editing the package: modules beside a config (``plugins:``),
``--plugin`` on the command line, and installed entry points for models, datasets, methods and
metrics."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import harness
from harness.cli import main
from harness.datasets import DATASETS, MASKED_DATASETS
from harness.methods import METHODS
from harness.metrics.registry import METRICS
from harness.models import MODELS

KINDS = """
import numpy as np
import torch
from dataclasses import dataclass
from torch import nn

import harness


def tiny_model(*, weights="default", checkpoint=None, seed=0, progress=True):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return harness.attach_info(model, name="tiny", weights=f"random(seed={seed})",
                               input_size=32, num_classes=3, cam_layer="0")


def stripes(*, n: int = 3):
    def image(i):
        return lambda: np.repeat((np.indices((32, 32))[1] % (i + 2) == 0)[..., None], 3,
                                 axis=2).astype(np.uint8) * 255
    return harness.Dataset("stripes", tuple(harness.Sample(f"s{i}", i % 3, image(i))
                                            for i in range(n)))


def column_weight(model, x, target, *, power: float = 1.0):
    \"\"\"Column index to the power: a map that ignores the model.\"\"\"
    cols = torch.arange(x.shape[3], dtype=x.dtype, device=x.device) ** power
    return cols.expand(x.shape[0], x.shape[2], -1).clone()


@dataclass(frozen=True)
class MassSettings:
    fraction: float = 0.1
    methods: list | None = None

    def check(self):
        if not 0 < self.fraction <= 1:
            raise harness.ConfigError(f"fraction: must be in (0, 1], got {self.fraction}")


@harness.register_metric("{metric}", settings=MassSettings, direction="up",
                         citation="a test plug-in")
def top_mass(unit, settings):
    \"\"\"Share of the map's mass in its top pixels.\"\"\"
    flat = unit.maps.flatten(1).double()
    k = max(1, int(flat.shape[1] * settings.fraction))
    share = flat.topk(k, dim=1).values.sum(1) / flat.sum(1)
    return [{"image_id": i, "value": float(v)} for i, v in zip(unit.ids, share.tolist())]
"""


@pytest.fixture
def clean_registries():
    """Names registered inside a test are forgotten after it (the registries are global)."""
    tables = (METRICS, METHODS, DATASETS, MODELS)
    before = [set(table) for table in tables]
    masked = dict(MASKED_DATASETS)
    yield
    for table, names in zip(tables, before, strict=True):
        for name in set(table) - names:
            table.remove(name)
        table._dynamic.clear()
    MASKED_DATASETS.clear()
    MASKED_DATASETS.update(masked)


def _folder_plugins(folder: Path, metric: str) -> None:
    (folder / f"{metric}_mod.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass

        import harness


        @dataclass(frozen=True)
        class TopShareSettings:
            fraction: float = 0.1
            methods: list | None = None

            def check(self):
                if not 0 < self.fraction <= 1:
                    raise harness.ConfigError(f"fraction: must be in (0, 1], got {self.fraction}")


        @harness.register_metric("METRIC", settings=TopShareSettings, direction="up",
                                 citation="a user's metric")
        def top_share(unit, settings):
            \"\"\"Share of the map's mass in its top pixels; higher is more concentrated.\"\"\"
            flat = unit.maps.flatten(1).double()
            k = max(1, int(flat.shape[1] * settings.fraction))
            share = flat.topk(k, dim=1).values.sum(1) / flat.sum(1)
            return [{"image_id": i, "value": float(v)} for i, v in zip(unit.ids, share.tolist())]
    """).replace("METRIC", metric))
    (folder / "mymethod.py").write_text(textwrap.dedent("""
        import torch

        import harness


        @harness.register_method("rows", citation="a user's method")
        def rows(model, x, target, *, power: float = 1.0):
            \"\"\"Row index to the power (a control that ignores the model).\"\"\"
            index = torch.arange(x.shape[2], dtype=x.dtype, device=x.device) ** power
            return index.view(1, -1, 1).expand(x.shape[0], -1, x.shape[3]).clone()
    """))


def _config(folder: Path, metric: str, **extra) -> dict:
    return {"name": "plugins", "plugins": [f"{metric}_mod", "mymethod.py"],
            "data": {"name": "samples", "limit": 2}, "batch_size": 2,
            "methods": ["sobel", {"name": "rows", "params": {"power": 2.0}}],
            "metrics": {metric: {"fraction": 0.2}, "deletion": {"step": 12544}},
            "figure_images": 1, "output_dir": str(folder / "out"), **extra}


@pytest.mark.slow
def test_a_users_metric_and_method_beside_the_config_run_end_to_end(tmp_path, clean_registries):
    """``plugins:`` imports modules from the config's folder (the CLI run from elsewhere) and the
    working folder; table, figures, MLflow and the listing know the user's metric."""
    folder = tmp_path / "project"
    folder.mkdir()
    _folder_plugins(folder, "top_share")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = folder / "mine.yaml"
    config.write_text(yaml.safe_dump(_config(folder, "top_share", tracking={
        "uri": uri, "experiment": "plugins"})))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(config), "--no-progress"],
                          capture_output=True, text=True, cwd=elsewhere, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (folder / "out" / "tables" / "table.md").read_text()
    assert "top_share ↑" in table and "| rows |" in table
    assert (folder / "out" / "methods" / "rows" / "maps.png").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "plugins"]
    children = client.search_runs([experiment.experiment_id],
                                  filter_string="tags.`harness.role` = 'method'")
    assert {run.data.tags["harness.method"]: "top_share.mean" in run.data.metrics
            for run in children} == {"sobel": True, "rows": True}
    # the table of the folder is made again without importing the plug-in (readers run no code
    # the folder names): the stored directions stand in for the registry entry
    again = subprocess.run([sys.executable, "-m", "harness", "table", str(folder / "out")],
                           capture_output=True, text=True, cwd=elsewhere, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "top_share ↑" in again.stdout
    listed = subprocess.run([sys.executable, "-m", "harness", "list", "metrics", "--plugin",
                             str(folder / "top_share_mod.py")], capture_output=True, text=True,
                            cwd=elsewhere, timeout=300)
    assert listed.returncode == 0 and "top_share" in listed.stdout
    assert "Share of the map's mass" in listed.stdout


@pytest.mark.slow
def test_the_same_through_the_python_api(tmp_path, monkeypatch, clean_registries):
    monkeypatch.chdir(tmp_path)  # the working folder is searched too
    _folder_plugins(tmp_path, "top_share_py")
    result = harness.run(_config(tmp_path, "top_share_py", tracking={"enabled": False}),
                         progress=False, log=lambda *a: None)
    assert set(result.table["metric"]) == {"top_share_py", "deletion"}
    rows = result.table[(result.table["method"] == "rows")
                        & (result.table["metric"] == "top_share_py")]
    assert rows["n"].item() == 2 and 0 < rows["mean"].item() <= 1
    assert set(result.records["metric"]) == {"top_share_py", "deletion"}
    with pytest.raises(harness.ConfigError, match=r"metrics.top_share_py.fraction: must be in"):
        harness.load_config(_config(tmp_path, "top_share_py", metrics={
            "top_share_py": {"fraction": 2.0}}))


def test_a_plugin_that_is_not_found_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"plugins": ["nowhere_to_be_found"], "methods": ["sobel"],
                                      "metrics": {"sparseness": {}}}))
    assert main(["run", str(config)]) == 2
    error = capsys.readouterr().err
    assert "plug-in 'nowhere_to_be_found': no module 'nowhere_to_be_found'" in error
    assert str(tmp_path) in error and "plugins: [path/to/nowhere_to_be_found.py]" in error
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('boom')\n")
    config.write_text(yaml.safe_dump({"plugins": ["broken_mod"], "methods": ["sobel"],
                                      "metrics": {"sparseness": {}}}))
    assert main(["run", str(config)]) == 2
    assert "plug-in 'broken_mod' failed while importing: RuntimeError: boom" in \
        capsys.readouterr().err


def _install(root: Path, module: str, text: str, entries: dict[str, str]) -> None:
    (root / f"{module}.py").write_text(text)
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n{value}\n" for group, value in entries.items()))


def test_an_installed_distribution_plugs_in_every_kind(tmp_path, monkeypatch,
                                                       clean_registries):
    """A distribution's entry points (groups harness.models, harness.datasets, harness.methods,
    harness.metrics) make a model, a dataset, a method and a metric usable by name."""
    module = "harness_demo_kinds"
    _install(tmp_path, module, KINDS.replace("{metric}", "top_mass"), {
        "harness.models": f"tiny_stripes = {module}:tiny_model",
        "harness.datasets": f"stripes = {module}:stripes",
        "harness.methods": f"column_weight = {module}:column_weight",
        "harness.metrics": f"top_mass = {module}:top_mass"})
    monkeypatch.syspath_prepend(str(tmp_path))
    for listed, name in ((harness.list_models(), "tiny_stripes"),
                         (harness.list_datasets(), "stripes"),
                         (harness.list_methods(), "column_weight"),
                         (harness.list_metrics(), "top_mass")):
        assert name in listed
    result = harness.run({
        "name": "kinds", "model": {"name": "tiny_stripes", "weights": "random"},
        "data": {"name": "stripes", "options": {"n": 3}}, "batch_size": 2, "target": "label",
        "methods": ["vanilla", {"name": "columns", "method": "column_weight",
                                "params": {"power": 2.0}}],
        "metrics": {"top_mass": {}, "deletion": {"step": 64}}, "figure_images": 1,
        "output_dir": str(tmp_path / "run"), "tracking": {"enabled": False}},
        progress=False, log=lambda *a: None)
    table = result.table.set_index(["method", "metric"])
    assert table.loc[("columns", "top_mass"), "n"] == 3
    assert table.loc[("vanilla", "deletion"), "n"] == 3
    assert "entry point column_weight" in harness.get_method("column_weight").citation
    with pytest.raises(harness.ConfigError, match=r"methods\[0\].params.powr: unknown key. Did "
                                                  r"you mean 'power'\?"):
        harness.load_config({"methods": [{"name": "c", "method": "column_weight",
                                          "params": {"powr": 2}}],
                             "metrics": {"top_mass": {}}})
