"""Reliability, round two: nothing written or deleted outside what the run owns, no silently
wrong records, every bad input named before compute. Each case failed on the code before it."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import harness
from harness.cli import main
from harness.config import apply_overrides, from_dict, load_config
from harness.datasets.boxes import read_voc_boxes
from harness.errors import ConfigError, DataError, MethodError, RunFolderError
from harness.files import MANIFEST
from harness.mapsfile import load_maps
from harness.runner import load_records
from harness.runner import run as compute
from harness.store import record_key
from harness.tracking import masked

from .conftest import tiny_run


def _records(folder: Path) -> list[dict]:
    return sorted(load_records(folder), key=lambda r: repr(record_key(r)))


# ----------------------------------------------------------------------------- file names


@pytest.mark.parametrize("name, why", [
    ("../../x", "path separator"), ("/tmp/abs", "path separator"), ("a/b", "path separator"),
    ("x" * 300, "300 characters long"), (".m.tmp", "starts with '.'"), ("..", "starts with"),
    ("con", "reserved device name"), ("tab\there", "control character"),
])
def test_display_names_that_are_not_file_names_are_config_errors(tmp_path, name, why):
    raw = tiny_run(tmp_path, methods=[{"name": name, "method": "sobel"}])
    with pytest.raises(ConfigError, match=rf"methods\[0\].name: the name .* {why}"):
        from_dict(raw)
    assert not (tmp_path / "run").exists(), "refused before anything is written"


@pytest.mark.slow
def test_adapter_names_become_file_names_without_colons(tmp_path):
    pytest.importorskip("captum")
    result = harness.run(tiny_run(tmp_path, methods=["captum:Saliency", "sobel"]),
                         progress=False, log=lambda *a: None)
    folder = result.output_dir / "methods"
    assert (folder / "captum_Saliency" / "per_image.csv").exists()
    assert not any(":" in path.name for path in result.output_dir.rglob("*"))
    with pytest.raises(ConfigError, match="give the same file name"):
        from_dict(tiny_run(tmp_path, methods=["captum:Saliency",
                                              {"name": "captum_Saliency", "method": "sobel"}]))


# ----------------------------------------------------------------------------- ownership


def _users_folder(folder: Path) -> dict[Path, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "maps").mkdir()
    files = {folder / "maps" / "mine.npz": b"the user's maps", folder / ".x.tmp1": b"a draft",
             folder / "notes.txt": b"notes", folder / "maps" / ".y.tmp.npz": b"another"}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def test_a_folder_that_is_not_a_run_folder_is_refused_and_left_untouched(tmp_path):
    user = tmp_path / "project"
    files = _users_folder(user)
    with pytest.raises(RunFolderError, match=r"is not empty and is not a run folder .*--overwrite"):
        harness.run(tiny_run(tmp_path, output_dir=str(user)), progress=False,
                    log=lambda *a: None)
    assert all(path.read_bytes() == data for path, data in files.items())
    assert sorted(p.name for p in user.iterdir()) == sorted([".lock", ".x.tmp1", "maps",
                                                              "notes.txt"])


@pytest.mark.slow
def test_overwrite_writes_beside_the_users_files_and_deletes_only_its_own(tmp_path):
    user = tmp_path / "project"
    files = _users_folder(user)
    raw = tiny_run(tmp_path, output_dir=str(user))
    harness.run(raw, overwrite=True, progress=False, log=lambda *a: None)
    assert all(path.read_bytes() == data for path, data in files.items())
    first = _records(user)
    assert first and (user / MANIFEST).exists()
    # a rerun into the used folder: refused, then with --overwrite the earlier run's files go
    with pytest.raises(RunFolderError, match="already holds records of a run; pass --resume"):
        harness.run(raw, progress=False, log=lambda *a: None)
    (user / "maps" / "vanilla.npz").write_bytes(b"stale")  # ours (listed): replaced
    harness.run(raw, overwrite=True, progress=False, log=lambda *a: None)
    assert all(path.read_bytes() == data for path, data in files.items())
    assert [dict(r, pixels_sha256=None) for r in _records(user)] == \
        [dict(r, pixels_sha256=None) for r in first]


@pytest.mark.slow
def test_resume_deletes_only_the_temporary_files_the_run_listed(tmp_path):
    raw = tiny_run(tmp_path)
    harness.run(raw, progress=False, log=lambda *a: None)
    run = tmp_path / "run"
    theirs = run / ".notes.tmp.txt"  # looks like a temporary file, but nothing listed it
    theirs.write_text("keep me")
    ours = run / ".results.csv.deadbeef.tmp.csv"  # what a killed atomic write leaves
    ours.write_text("half")
    with open(run / MANIFEST, "a") as handle:
        handle.write(f"{ours.name}\n")
    harness.run(raw, resume=True, progress=False, log=lambda *a: None)
    assert theirs.read_text() == "keep me" and not ours.exists()


def test_a_lock_path_that_is_a_folder_is_named(tmp_path):
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    with pytest.raises(RunFolderError, match=r"cannot open the lock file .*\.lock"):
        harness.run(tiny_run(tmp_path), progress=False, log=lambda *a: None)


# ----------------------------------------------------------------------------- the guard

MISBEHAVING = '''
import torch
import torch.nn as nn


def weights(model, x, target):
    with torch.no_grad():
        next(model.parameters()).mul_(0.0)
    return x.abs().amax(1)


def buffers(model, x, target):
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.add_(1.0)
    return x.abs().amax(1)


def swapped(model, x, target):
    param = next(model.parameters())
    param.data = param.data.clone() * 2
    return x.abs().amax(1)


def inputs(model, x, target):
    x.mul_(0.5)
    return x.abs().amax(1)


def global_hook(model, x, target):
    nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    return x.abs().amax(1)


def training(model, x, target):
    model.train()
    return x.abs().amax(1)


def leaky(model, x, target):
    model.register_forward_hook(lambda m, i, o: None)
    return x.abs().amax(1)


def numpy_maps(model, x, target):
    return x.abs().amax(1).numpy()


def listed(model, x, target):
    return x.abs().amax(1).tolist()


def shaped(model, x, target):
    return x.abs()


def meta(model, x, target):
    return torch.empty(x.shape[0], x.shape[2], x.shape[3], device="meta")


def integers(model, x, target):
    return (x.abs().amax(1) > 0).long()
'''


@pytest.fixture
def misbehaving(tmp_path, monkeypatch):
    (tmp_path / "misbehaving_methods.py").write_text(MISBEHAVING)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "misbehaving_methods"
    sys.modules.pop("misbehaving_methods", None)
    harness.methods.METHODS._dynamic.clear()


@pytest.mark.parametrize("function, what", [
    ("weights", r"changed the model's parameter features.0.weight"),
    ("buffers", r"changed the model's buffer features.1.running_mean"),
    ("swapped", r"changed the model's parameter features.0.weight"),
    ("inputs", r"modified its input x in place"),
    ("global_hook", r"left a hook on \(global module hooks\)"),
    ("leaky", r"left a hook on \(the model\)"),
])
def test_the_guard_names_the_method_and_stops_before_its_records(tmp_path, misbehaving,
                                                                   function, what):
    name = f"{misbehaving}:{function}"
    raw = tiny_run(tmp_path, methods=["sobel", {"name": "bad", "method": name}, "vanilla"],
                   batch_size=3)
    hooks = dict(torch.nn.modules.module._global_forward_hooks)
    try:
        with pytest.raises(MethodError, match=rf"method '{name}' {what}"):
            list(compute(from_dict(raw), progress=False))
    finally:
        torch.nn.modules.module._global_forward_hooks.clear()
        torch.nn.modules.module._global_forward_hooks.update(hooks)
    stored = load_records(tmp_path / "run")
    assert {r["method"] for r in stored} == {"sobel"}, "nothing of the bad method, nor after it"


@pytest.mark.parametrize("function, what", [
    ("weights", r"changed the model's parameter features.0.weight"),
    ("buffers", r"changed the model's buffer features.1.running_mean"),
    ("inputs", r"modified its input x in place"),
    ("leaky", r"left a hook on \(the model\)"),
    ("training", r"switched the model's \(the model\) to training mode"),
])
@pytest.mark.parametrize("metric", ["sample_statistics", "smoothed_maps"])
def test_one_guard_around_a_metrics_chunks_still_names_the_method(tiny_cnn, misbehaving,
                                                                  function, what, metric):
    # the robustness metrics and Smooth MPRT call the method once per chunk inside one guard
    # (the model walked once, at the end; each chunk's input checked at once)
    from harness.metrics.neighbourhood import Neighbourhood, sample_statistics
    from harness.sanity.smooth_mprt import smoothed_maps

    name = f"{misbehaving}:{function}"
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MethodError, match=rf"method '{name}' {what}"):
        if metric == "sample_statistics":
            sample_statistics(tiny_cnn, name, x, [0, 1, 2],
                              neighbourhood=Neighbourhood(n_samples=3, batch_size=2))
        else:
            smoothed_maps(name, tiny_cnn, x, torch.tensor([0, 1, 2]),
                          [torch.randn(2, 3, 16, 16)] * 3, noise_magnitude=0.1, batch_size=2)
    assert not tiny_cnn._forward_pre_hooks, "the layout hook is removed"
    assert tiny_cnn._forward_hooks == {} or function == "leaky"


@pytest.mark.parametrize("function, what", [
    ("numpy_maps", "returned ndarray maps"), ("listed", "returned list maps"),
    ("shaped", r"returned maps of shape \(2, 3, 16, 16\), expected \(2, 16, 16\)"),
    ("meta", "returned maps on meta"), ("integers", "returned maps of dtype torch.int64"),
])
def test_plugin_outputs_are_checked(tiny_cnn, misbehaving, function, what):
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(MethodError, match=what):
        harness.saliency(f"{misbehaving}:{function}", tiny_cnn, x, [0, 1])


@pytest.mark.parametrize("name", ["builtins:print", "subprocess:call", "os.path:join",
                                  "collections:OrderedDict"])
def test_a_standard_library_callable_is_no_method(tmp_path, name):
    with pytest.raises(ConfigError, match="standard-library function|not a Python function"):
        from_dict(tiny_run(tmp_path, methods=[{"name": "m", "method": name}]))


# ----------------------------------------------------------------------------- before compute


@pytest.mark.parametrize("method, params, message", [
    ("rise", {"n_masks": -1}, r"n_masks: must be an integer >= 1, got -1"),
    ("rise", {"n_masks": 1e9}, r"n_masks: expected int, got 1000000000.0"),
    ("rise", {"n_masks": 10**9}, r"n_masks: 1000000000 grids of 7x7 cells need 365.1 GiB"),
    ("rise", {"p_keep": 0}, r"p_keep: must be a finite number > 0 and <= 1, got 0"),
    ("smoothgrad", {"n": -1}, r"n: must be an integer >= 1, got -1"),
    ("smoothgrad", {"base_params": {"rule": "up"}, "base": "integrated_gradients"},
     r"base_params.rule: 'up' is not one of: right, left"),
    ("integrated_gradients", {"n_steps": 0}, r"n_steps: must be an integer >= 1, got 0"),
    ("random", {"seed": 2**64}, r"seed: must be an integer in \[0, 9223372036854775807\]"),
    ("captum:IntegratedGradients", {"n_steps": -1}, r"attribute.n_steps: must be an integer >= 1"),
])
def test_method_parameters_are_checked_before_compute(tmp_path, method, params, message):
    if method.startswith("captum"):
        pytest.importorskip("captum")
    raw = tiny_run(tmp_path, methods=["sobel", {"name": "m", "method": method, "params": params}])
    with pytest.raises(ConfigError, match=rf"methods\[1\].params.{message}"):
        from_dict(raw)


def test_a_layer_that_does_not_exist_is_refused_before_any_record(tmp_path):
    raw = tiny_run(tmp_path, methods=["sobel", {"name": "cam", "method": "gradcam",
                                                "params": {"layer": "features.9"}}])
    with pytest.raises(ConfigError, match=r"methods\[1\].params.layer: model has no module "
                                          r"'features.9'. Did you mean 'features.4'\?"):
        harness.run(raw, progress=False, log=lambda *a: None)
    assert not (tmp_path / "run" / "records.jsonl").exists()


def test_configs_that_used_to_crash_are_named(tmp_path, capsys):
    dated = tmp_path / "dated.yaml"
    dated.write_text("name: 2024-01-01\nmethods: [sobel]\nmetrics: {sparseness: {}}\n")
    config = load_config(dated)
    assert config.name == "2024-01-01" and config.hash()  # JSON-serialisable
    with pytest.raises(ConfigError, match=r"name: expected str, got datetime.date"):
        from_dict({"name": __import__("datetime").date(2024, 1, 1), "methods": ["sobel"],
                   "metrics": {"sparseness": {}}})
    text = tmp_path / "text.yaml"
    text.write_text("just a string\n")
    assert main(["run", str(text), "--set", "data.limit=1"]) == 2
    assert "expected a mapping of keys at the top level, got str" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="expected a mapping at the top level to apply --set"):
        apply_overrides("just a string", ["data.limit=1"])
    with pytest.raises(ConfigError, match=r"seed: must be in \[0, 2\*\*63\)"):
        from_dict({"methods": ["sobel"], "metrics": {"sparseness": {}}, "seed": 2**64})


def test_data_files_that_used_to_crash_are_named(tmp_path):
    xml = tmp_path / "box.xml"
    xml.write_text("<annotation><size><width>4</width><height>4</height></size><object><name>n"
                   "</name><bndbox><xmin>inf</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
                   "</bndbox></object></annotation>")
    with pytest.raises(DataError, match=r"cannot read VOC boxes from .*box.xml"):
        read_voc_boxes(xml)
    pickled = tmp_path / "maps.pt"
    pickled.write_bytes(pickle.dumps({"maps": object()}))
    with pytest.raises(DataError, match=r"maps file .*maps.pt.* cannot be read as maps"):
        load_maps(pickled)
    objects = tmp_path / "maps.npy"
    np.save(objects, np.array([None, 1.0], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"maps file .*maps.npy.* cannot be read as maps"):
        load_maps(objects)


def test_score_out_in_a_folder_with_a_dot_keeps_the_curves_beside(tmp_path, capsys):
    folder = tmp_path / "v1.2"
    folder.mkdir()
    maps = np.random.default_rng(0).random((2, 224, 224)).astype(np.float32)
    np.savez(folder / "maps.npz", maps=maps, ids=np.array(["chelsea", "coffee"]))
    assert main(["score", "--maps", str(folder / "maps.npz"), "--metrics", "deletion",
                 "--step", "25088", "--data-opt", "names=[chelsea, coffee]",
                 "--out", str(folder / "scores")]) == 0
    assert (folder / "scores").exists() and (folder / "scores_curves.npz").exists()


@pytest.mark.slow
def test_passwords_in_tracking_uris_are_masked(tmp_path, capsys):
    assert masked("https://ann:s3cr3t@mlflow.example.org/") == "https://ann:***@mlflow.example.org/"
    assert masked("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    raw = tiny_run(tmp_path, tracking={"uri": "http://ann:s3cr3t@127.0.0.1:9/"})
    lines: list[str] = []
    with pytest.raises(harness.TrackingError) as caught:
        harness.run(raw, progress=False, log=lines.append)
    assert "s3cr3t" not in str(caught.value) and "ann:***@" in str(caught.value)
    assert lines and not any("s3cr3t" in line for line in lines)


# ----------------------------------------------------------------------------- resume


def test_resume_refuses_changed_pixels_under_the_same_ids(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
            images / f"{name}.png")
    raw = tiny_run(tmp_path, data={"name": "imagefolder", "options": {"root": str(images)}},
                   methods=["vanilla", "sobel"], batch_size=3)
    config = from_dict(raw)
    for index, _ in enumerate(compute(config, progress=False)):
        if index == 2:
            break  # the vanilla unit is stored; sobel's is not
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / "b.png")
    with pytest.raises(RunFolderError, match=r"image 'b.png' is not the image the stored records"):
        list(compute(config, resume=True, progress=False))


def test_resume_under_another_thread_count_needs_force(tmp_path):
    raw = tiny_run(tmp_path)
    config = from_dict(raw)
    threads = torch.get_num_threads()
    for index, _ in enumerate(compute(config, progress=False)):
        if index == 2:
            break
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        with pytest.raises(ConfigError, match=r"torch's CPU thread count differ.*--force"):
            list(compute(config, resume=True, progress=False))
        list(compute(config, resume=True, force=True, progress=False))
    finally:
        torch.set_num_threads(threads)
    assert len(load_records(tmp_path / "run")) == 6


# ----------------------------------------------------------------------------- readers


@pytest.mark.slow
def test_reading_a_run_folder_never_imports_its_plugins(tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "plugin_with_effect.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("imported")
    """))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_run(tmp_path, plugins=["plugin_with_effect.py"])))
    assert main(["run", str(config), "--no-progress"]) == 0
    marker.unlink()
    done = subprocess.run([sys.executable, "-m", "harness", "table", "."], cwd=tmp_path / "run",
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "reading the folder ran code the folder names"
    assert (tmp_path / "run" / "tables" / "table.md").exists()


@pytest.mark.slow
def test_table_of_a_folder_without_its_resolved_config_is_named(tmp_path, capsys):
    harness.run(tiny_run(tmp_path), progress=False, log=lambda *a: None)
    (tmp_path / "run" / "config.resolved.yaml").unlink()
    assert main(["table", str(tmp_path / "run")]) == 2
    assert "has no config.resolved.yaml" in capsys.readouterr().err
