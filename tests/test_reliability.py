"""Reliability and security: nothing executes from data files, killed runs resume to the same
records, readers never write, one run per folder, and every bad input is named before compute."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
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
from harness.config import ConfigError, apply_overrides, from_dict
from harness.datasets.builtin import cs231n_npz, imagefolder
from harness.files import FolderLocked, RunLock
from harness.images import read_image
from harness.mapsfile import load_maps, save_maps
from harness.report import escape
from harness.runner import load_records, run
from harness.store import RecordsCorrupt, RecordStore, record_key

from .test_experiment import comparable, tiny_raw

MINIMAL = {"name": "t", "methods": ["vanilla"], "metrics": {"deletion": {"step": 100}},
           "tracking": {"enabled": False}}


def write_config(folder: Path, raw: dict) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if any model is loaded: the error must come before any compute."""
    import harness.runner

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was named")

    monkeypatch.setattr(harness.runner, "load_model", forbidden)
    monkeypatch.setattr(harness.cli, "load_model", forbidden)


# ----------------------------------------------------------------------------- data files are data


class Payload:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_npz_files_execute_nothing(tmp_path):
    marker = tmp_path / "executed"
    images, labels = np.zeros((2, 8, 8, 3), np.uint8), np.array([1, 2])
    # a pickle given as the dataset path
    (tmp_path / "data.npz").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="is not an .npz archive"):
        cs231n_npz(path=tmp_path / "data.npz")
    # a genuine npz whose label_map is a malicious object array
    payload = np.empty((), dtype=object)
    payload[()] = Payload(marker)
    np.savez(tmp_path / "evil.npz", X=images, y=labels, label_map=payload)
    with pytest.raises(ValueError, match="refusing its label_map: refusing to load posix.system"):
        cs231n_npz(path=tmp_path / "evil.npz")
    # object arrays anywhere else are refused by numpy's allow_pickle=False
    np.savez(tmp_path / "objects.npz", X=np.array([Payload(marker)], dtype=object), y=labels)
    with pytest.raises(ValueError, match="Object arrays cannot be loaded"):
        cs231n_npz(path=tmp_path / "objects.npz")
    assert not marker.exists(), "nothing in a data file may execute"
    # the genuine cs231n format (a pickled dict index -> name) still loads, as do plain arrays
    np.savez(tmp_path / "good.npz", X=images, y=labels, label_map={0: "a", 1: "b", 2: "c"})
    assert cs231n_npz(path=tmp_path / "good.npz").class_names == ("a", "b", "c")
    np.savez(tmp_path / "plain.npz", X=images, y=labels, label_names=np.array(["a", "b", "c"]))
    assert cs231n_npz(path=tmp_path / "plain.npz").class_names == ("a", "b", "c")
    code = main(["saliency", "--data", "cs231n_npz", "--data-opt",
                 f"path={tmp_path / 'data.npz'}", "--weights", "random", "--out",
                 str(tmp_path / "x.png")])
    assert code == 2 and not marker.exists()


# ----------------------------------------------------------------------------- crash safety

KILLER = textwrap.dedent("""
    import os, signal, sys
    point, count = sys.argv[1], int(sys.argv[2])
    calls = [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "maps":  # die half-way through writing a kept-maps file
        import numpy as np
        original = np.savez_compressed

        def savez(file, *args, **kwargs):
            calls[0] += 1
            if calls[0] == count:
                with open(file, "wb") as handle:
                    handle.write(b"PK\\x03\\x04 half an archive")
                    handle.flush()
                    os.fsync(handle.fileno())
                die()
            return original(file, *args, **kwargs)

        np.savez_compressed = savez
    elif point == "records":  # die half-way through appending a record line
        import json
        import harness.store
        original = harness.store.RecordStore.append

        def append(self, records):
            calls[0] += 1
            if calls[0] == count:
                with self.path.open("a") as handle:
                    handle.write(json.dumps(records[0])[:40])
                    handle.flush()
                    os.fsync(handle.fileno())
                die()
            return original(self, records)

        harness.store.RecordStore.append = append
    elif point == "tables":  # die while writing the tables, after every record is stored
        import harness.report
        original = harness.report.atomic_write

        def write(path, data):
            die()

        harness.report.atomic_write = write
    from harness.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    config = from_dict(tiny_raw(folder, batch_size=1))
    return comparable(list(run(config, progress=False)))


@pytest.mark.slow
@pytest.mark.parametrize("point, count", [("maps", 2), ("records", 3), ("tables", 1)])
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_records(tmp_path, uninterrupted,
                                                                      point, count):
    config = write_config(tmp_path, tiny_raw(tmp_path, batch_size=1))
    (tmp_path / "killer.py").write_text(KILLER)
    command = [sys.executable, str(tmp_path / "killer.py"), point, str(count), "run",
               str(config), "--no-progress"]
    killed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = tmp_path / "run"
    if point == "maps":
        assert any(p.name.startswith(".") and ".tmp" in p.name for p in (folder / "maps").iterdir())
        assert not (folder / "maps" / "smoothgrad.npz").exists() or \
            load_maps(folder / "maps" / "smoothgrad.npz")
    if point == "records":
        assert not (folder / "records.jsonl").read_bytes().endswith(b"\n")
        with pytest.warns(UserWarning, match="ignoring a partly written last line"):
            load_records(folder)  # a reader reads what is whole and leaves the file alone
    resumed = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(config),
                              "--no-progress", "--resume"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = load_records(folder)
    assert comparable(lines) == uninterrupted, "no record lost, none duplicated, none changed"
    assert len(lines) == len({record_key(r) for r in lines})
    assert (folder / "tables" / "table.md").exists()
    assert not list(folder.rglob(".*.tmp*")), "no temporary file left behind"


@pytest.mark.slow
def test_an_unreadable_kept_maps_file_is_recomputed_not_fatal(tmp_path):
    raw = tiny_raw(tmp_path, methods=["vanilla"], metrics={"deletion": {"step": 12544}},
                   figure_images=3)  # rocket, alone in the last batch, is a figure image too
    config = from_dict(raw)
    list(run(config, progress=False))
    kept = tmp_path / "run" / "maps" / "vanilla.npz"
    kept.write_bytes(b"")  # what an in-place write killed at the wrong moment used to leave
    (tmp_path / "run" / "records.parquet").unlink()  # every unit is recomputed on resume
    with pytest.warns(UserWarning, match="ignoring the unreadable kept maps"):
        list(run(config, resume=True, progress=False))
    maps, ids = load_maps(kept)
    assert sorted(ids) == ["chelsea", "coffee", "rocket"]


def test_readers_never_write(tmp_path):
    path = tmp_path / "records.jsonl"
    records = [{"method": "m", "metric": "deletion", "image_id": str(i), "value": i / 10}
               for i in range(5)]
    data = "".join(json.dumps(r) + "\n" for r in records).rstrip("\n").encode()
    path.write_bytes(data)  # a valid last record without its final newline
    assert len(RecordStore(path).load()) == 5
    assert path.read_bytes() == data, "reading modified the file"
    # a corrupt line in the middle: named with file and line, nothing changed
    lines = data.split(b"\n")
    lines[2] = b'{"method": "m", "metric'
    path.write_bytes(b"\n".join(lines) + b"\n")
    before = path.read_bytes()
    with pytest.raises(RecordsCorrupt, match=rf"{path} line 3 is not a JSON record.*--resume"):
        RecordStore(path).load()
    assert path.read_bytes() == before
    # the resuming writer repairs it and says so; the dropped line is kept beside the file
    notes = RecordStore(path).repair()
    assert notes == [f"{path} line 3: corrupt line removed; its records are recomputed"]
    assert len(RecordStore(path).load()) == 4
    assert list(tmp_path.glob("records.jsonl.dropped-*"))[0].read_bytes().startswith(b'{"method')


def test_table_of_a_folder_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["table", str(tmp_path / "empty")]) == 2
    assert "not a harness run folder (it has no records" in capsys.readouterr().err
    assert main(["table", "0123456789abcdef0123456789abcdef"]) == 2
    assert f"no MLflow store at sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in \
        capsys.readouterr().err
    assert main(["table", "no/such/folder"]) == 2
    assert not (tmp_path / "mlflow.db").exists(), "a reader created a tracking store"


@pytest.mark.slow
def test_one_run_per_folder(tmp_path, capsys):
    config = from_dict(tiny_raw(tmp_path))
    with RunLock(tmp_path / "run"):
        with pytest.raises(FolderLocked, match=rf"is in use by PID {os.getpid()} on host "
                                               rf"{socket.gethostname()}"):
            list(run(config, progress=False))
        path = write_config(tmp_path, tiny_raw(tmp_path))
        assert main(["run", str(path), "--no-progress"]) == 2
        assert "is in use by PID" in capsys.readouterr().err
    assert not (tmp_path / "run" / "records.jsonl").exists()
    # the lock goes with its holder: a process killed while holding it leaves none behind
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from harness.files import RunLock
        lock = RunLock({str(tmp_path / "run2")!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(FolderLocked, match=f"PID {holder.pid}"):
        RunLock(tmp_path / "run2").acquire()
    holder.kill()
    holder.wait()
    RunLock(tmp_path / "run2").acquire().release()


# ----------------------------------------------------------------------------- named errors


@pytest.mark.parametrize("change, message", [
    ({"data": {"name": "samples", "options": {"nmes": ["chelsea"]}}},
     r"data.options.nmes: not an option of dataset 'samples'. Did you mean 'names'\? Valid: "
     r"names, labels"),
    ({"data": {"name": "imagefolder"}}, r"data.options.root: required by dataset 'imagefolder'"),
    ({"metrics": {"deletion": {"substrate": {"name": "blur", "sigmma": 2}}}},
     r"metrics.deletion.substrate.sigmma: not an option of substrate 'blur'. Did you mean "
     r"'sigma'\? Valid: sigma"),
    ({"device": "gpu"}, r"device: 'gpu' is not a device; valid: cpu, cuda, cuda:N, mps"),
    ({"figure_images": -1}, r"figure_images: must be >= 0, got -1"),
    ({"metrics": {"deletion": {"batch_size": 0}}},
     r"metrics.deletion.batch_size: must be an integer >= 1"),
    ({"data": {"limit": 0}}, r"data.limit: must be >= 1"),
    ({"methods": [{"name": "smoothgrad", "params": {"n": "20"}}]},
     r"methods\[0\].params.n: expected int, got '20'"),
    ({"methods": [{"name": "smoothgrad", "params": {"base_params": {"reduce": 3}}}]},
     r"methods\[0\].params.base_params.reduce: expected str, got 3"),
])
def test_bad_config_values_are_named(change, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({**MINIMAL, **change})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_is_named():
    with pytest.raises(ConfigError, match="device: 'cuda' but CUDA is not available"):
        from_dict({**MINIMAL, "device": "cuda"})


def test_overrides_through_scalars_and_bad_yaml_are_named():
    raw = {**MINIMAL, "methods": ["vanilla"]}
    assert apply_overrides(raw, ["methods.0.params.x=1"])["methods"][0] == {
        "name": "vanilla", "params": {"x": 1}}, "a method given by name alone gets a mapping"
    with pytest.raises(ConfigError, match=r"--set data.limit.x: data.limit is 2, not a mapping"):
        apply_overrides({**raw, "data": {"limit": 2}}, ["data.limit.x=1"])
    with pytest.raises(ConfigError, match=r"--set name: the value '\[unclosed' is not valid YAML"):
        apply_overrides(raw, ["name=[unclosed"])


def test_output_dir_that_cannot_be_used_is_named_before_compute(tmp_path, no_model, capsys):
    (tmp_path / "file").write_text("x")
    path = write_config(tmp_path, {**MINIMAL, "output_dir": str(tmp_path / "file")})
    assert main(["run", str(path)]) == 2
    assert "output_dir: " in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "readonly"
        locked.mkdir(mode=0o500)
        path = write_config(tmp_path, {**MINIMAL, "output_dir": str(locked / "run")})
        assert main(["run", str(path)]) == 2


def test_step_beyond_the_input_is_named_before_compute(tmp_path):
    raw = tiny_raw(tmp_path, metrics={"deletion": {"step": 224 * 224 + 1}})
    with pytest.raises(ConfigError, match=r"metrics.deletion.step: 50177 is more than the 50176 "
                                          r"pixels of squeezenet1_1's 224x224 input"):
        list(run(from_dict(raw), progress=False))
    assert not (tmp_path / "run" / "records.jsonl").exists()


def test_cli_saliency_and_score_check_like_configs(tmp_path, no_model, capsys):
    out = str(tmp_path / "x.png")
    assert main(["saliency", "--methods", "vanilla", "--param", "vanilla.sigma=3",
                 "--out", out]) == 2
    assert "--param vanilla.sigma: unknown key. Valid keys here: reduce" in \
        capsys.readouterr().err
    assert main(["saliency", "--methods", "smoothgrad", "--param", "smoothgrad.n=abc",
                 "--out", out]) == 2
    assert "--param smoothgrad.n: expected int, got 'abc'" in capsys.readouterr().err
    assert main(["saliency", "--data-opt", "nmes=[coffee]", "--out", out]) == 2
    assert "--data-opt.nmes: not an option of dataset 'samples'" in capsys.readouterr().err
    assert main(["saliency", "--device", "gpu", "--out", out]) == 2
    assert "--device: 'gpu' is not a device" in capsys.readouterr().err
    save_maps(tmp_path / "maps.npz", np.zeros((2, 4, 4)), ["coffee", "chelsea"])
    assert main(["score", "--maps", str(tmp_path / "maps.npz"), "--deletion-substrate",
                 "grey"]) == 2
    assert "metrics.deletion.substrate: 'grey' is not one of: blur" in capsys.readouterr().err


# ----------------------------------------------------------------------------- images and labels


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = read_image(tmp_path / "deep.png")
    assert pixels.dtype == np.uint8 and pixels.shape == (64, 64, 3)
    assert pixels.min() == 0 and pixels.max() == 255 and (pixels == 255).mean() < 0.01
    assert np.abs(pixels[..., 0].astype(int) - np.round(gradient / 257)).max() == 0


def test_small_images_and_nan_inputs(lite0):
    small = harness.load_dataset("samples", names=["coffee"])[0].load()[::5, ::5]
    with pytest.warns(UserWarning, match=r"image tiny is 120x80 pixels, much smaller than the "
                                         r"model's 224x224 input"):
        harness.preprocess([small], lite0.harness_info, ids=["tiny"])
    x = torch.zeros(2, 3, 32, 32)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="input image #1 contains NaN or inf"):
        harness.saliency("gradcam", lite0, x, [0, 1])
    with pytest.raises(ValueError, match="input image b contains NaN or inf"):
        harness.metrics.deletion(lite0, x, torch.rand(2, 32, 32), [0, 1], ids=["a", "b"])
    image = np.full((4, 4, 3), 0.5)
    image[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="image holds 1 NaN or inf"):
        harness.images.to_rgb(image)


def test_labels_file_header_rule_and_duplicates(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    labels = tmp_path / "labels.txt"
    labels.write_text("filename,label\na.png,3\nb.png,4\n")
    assert [s.label for s in imagefolder(root=tmp_path, labels_file=labels)] == [3, 4]
    labels.write_text("a.png three\nb.png 4\n")  # a bad label on line 1 is not a header
    with pytest.raises(ValueError, match=r"line 1: label 'three' is not an integer"):
        imagefolder(root=tmp_path, labels_file=labels)
    labels.write_text("a.png 3\na.png 4\n")
    with pytest.raises(ValueError, match=r"line 2: 'a.png' is labelled twice"):
        imagefolder(root=tmp_path, labels_file=labels)
    with pytest.raises(ValueError, match=r"duplicate image ids \['coffee'\]"):
        harness.load_dataset("samples", names=["coffee", "chelsea", "coffee"])
    np.savez(tmp_path / "dup.npz", maps=np.zeros((2, 4, 4)), ids=np.array(["a", "a"]))
    with pytest.raises(ValueError, match=r"duplicate ids \['a'\]"):
        load_maps(tmp_path / "dup.npz")


# ----------------------------------------------------------------------------- output text


def test_latex_escapes_every_special_character():
    text = r"run_1 50% & #2 $x$ {a} ~b ^c \d <e>"
    escaped = escape(text)
    assert escaped == (r"run\_1 50\% \& \#2 \$x\$ \{a\} \textasciitilde{}b \textasciicircum{}c "
                       r"\textbackslash{}d $<$e$>$")


def test_printed_hints_are_shell_quoted(tmp_path):
    from harness.cli import run_hints

    tools = tmp_path / "my tools"
    tools.mkdir()
    (tools / "harness").write_text("")
    (tools / "mlflow").write_text("")
    uri = f"sqlite:///{tmp_path}/it's here/mlflow.db"
    ui_title, ui, table_title, table = run_hints("abc123", uri, tools)
    assert "open the UI" in ui_title and "paper's table" in table_title
    assert ui.strip().startswith(f"'{tools}/mlflow' ui --backend-store-uri ")
    assert table.endswith(f"'{tools}/harness' table abc123 --tracking-uri "
                          f"'sqlite:///{tmp_path}/it'\"'\"'s here/mlflow.db'")


@pytest.mark.parametrize("change, message", [
    ({"metrics": {}}, r"metrics: name at least one metric"),
    ({"metrics": {"deletion": {"methods": []}}}, r"metrics.deletion.methods: an empty list"),
    ({"metrics": {"model_randomization": {"blocks": []}}},
     r"metrics.model_randomization.blocks: an empty list"),
    ({"metrics": {"model_randomization": {"measures": ["ssim", "ssim"]}}},
     r"metrics.model_randomization.measures: 'ssim' is named twice"),
    ({"seed": -1}, r"seed: must be in \[0, 2\*\*63\)"),
    ({"data": {"seed": -5, "limit": 1}}, r"data.seed: must be in \[0, 2\*\*63\)"),
])
def test_configs_that_would_fail_mid_run_are_named(change, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({**MINIMAL, **change})


def test_records_without_a_state_are_not_adopted(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "records.jsonl").write_text(json.dumps(
        {"method": "vanilla", "metric": "deletion", "image_id": "coffee", "value": 0.5}) + "\n")
    config = from_dict(tiny_raw(tmp_path))
    for resume in (False, True):
        with pytest.raises(harness.RunFolderError, match="holds records but no state.json"):
            list(run(config, resume=resume, progress=False))


def test_resume_refuses_other_code_weights_or_images(tmp_path):
    config = from_dict(tiny_raw(tmp_path, methods=["sobel"], reference=None,
                                metrics={"deletion": {"step": 12544}},
                                data={"name": "samples", "options": {"names": ["coffee"]}}))
    list(run(config, progress=False))
    state_path = tmp_path / "run" / "state.json"
    state = json.loads(state_path.read_text())
    assert set(state["provenance"]) == {"commit", "weights_sha256", "ids_sha256", "threads",
                                        "device_type"}
    state["provenance"]["weights_sha256"] = "0" * 64
    state_path.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="--resume: the model's weights differ"):
        list(run(config, resume=True, progress=False))


def test_files_are_as_readable_as_the_umask_says(tmp_path):
    from harness.files import atomic_write

    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "table.md", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "table.md").stat().st_mode & 0o777 == 0o644
