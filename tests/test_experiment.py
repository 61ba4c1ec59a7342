"""The experiment runner end to end: records, resume after SIGKILL, MLflow (server and sqlite)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import harness
from harness.api import run as run_experiment
from harness.api import table as table_for
from harness.config import ConfigError, from_dict
from harness.images import preprocess
from harness.methods import saliency_batched
from harness.runner import figure_maps, load_records, prepare_run, run
from harness.store import record_key
from harness.targets import resolve_targets
from harness.tracking import TrackingUnavailableError

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["vanilla", "smoothgrad", "sobel"]


def tiny_raw(folder: Path, **changes) -> dict:
    raw = {
        "name": "tiny", "seed": 0,
        "model": {"name": "squeezenet1_1", "weights": "random"},
        "data": {"name": "samples", "options": {"names": ["chelsea", "coffee", "rocket"]}},
        "batch_size": 2, "reference": "vanilla",
        "methods": ["vanilla", {"name": "smoothgrad", "params": {"n": 4}}, "sobel"],
        "metrics": {"deletion": {"step": 12544}, "insertion": {"step": 12544},
                    "model_randomization": {"blocks": ["conv10", "fire9"],
                                            "measures": ["spearman_abs", "ssim"]}},
        "figure_images": 2, "output_dir": str(folder / "run"),
        "tracking": {"enabled": False},
    }
    raw.update(changes)
    return raw


def comparable(records: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records)


@pytest.mark.slow
def test_records_are_complete_and_deterministic(tmp_path):
    config = from_dict(tiny_raw(tmp_path))
    fresh = list(run(config, progress=False))
    # 3 images x 3 methods x (deletion, insertion) + 3 x 3 x 2 blocks x 2 measures
    assert len(fresh) == 18 + 36
    assert len({record_key(r) for r in fresh}) == len(fresh)
    assert comparable(load_records(config.output_dir)) == comparable(fresh)
    deletion = [r for r in fresh if r["metric"] == "deletion"]
    assert all(len(r["curve"]) == 5 and r["target_source"] == "predicted" for r in deletion)
    # the maps of the first figure_images images are kept for the figure, exactly as computed
    prepared = prepare_run(config, resume=True)
    prepared.release()  # the folder's lock: this test only reads the model and data
    figure = list(prepared.dataset)[:2]
    ids = [sample.id for sample in figure]
    x = preprocess([sample.load() for sample in figure], prepared.model.harness_info)
    target = resolve_targets(prepared.model, x, [s.label for s in figure], ids, mode="predicted")
    assert torch.equal(figure_maps(config.output_dir, "vanilla", ids),
                       saliency_batched("vanilla", prepared.model, x, target))
    assert figure_maps(config.output_dir, "vanilla", ids + ["rocket"]) is None
    again = from_dict(tiny_raw(tmp_path / "again"))
    assert comparable(list(run(again, progress=False))) == comparable(fresh)
    assert list(run(config, resume=True, progress=False)) == [], "nothing left to compute"
    with pytest.raises(harness.RunFolderError, match="already holds records.*--resume"):
        list(run(config, progress=False))
    changed = from_dict(tiny_raw(tmp_path, seed=1))
    with pytest.raises(ConfigError, match="config differs"):
        list(run(changed, resume=True, progress=False))


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    raw = tiny_raw(tmp_path, batch_size=1,
                   methods=["vanilla", {"name": "smoothgrad", "params": {"n": 12}}, "sobel"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    records_file = tmp_path / "run" / "records.jsonl"
    command = [sys.executable, "-m", "harness.cli", "run", str(path), "--no-progress"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if records_file.exists() and records_file.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = records_file.read_text().count("\n")
    assert 3 <= partial < 54, f"the kill must land mid-run ({partial} records)"
    resumed = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not records_file.exists(), "the write-ahead shard was merged into records.parquet"
    lines = load_records(tmp_path / "run")
    assert len(lines) == len({record_key(r) for r in lines}) == 54, "no duplicates, none lost"
    reference = from_dict(tiny_raw(tmp_path / "reference", batch_size=1, methods=raw["methods"]))
    assert comparable(lines) == comparable(list(run(reference, progress=False)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    from .test_tracking import start_server, stop

    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = start_server(folder, port)
    yield f"http://127.0.0.1:{port}"
    stop(process, port)


def check_logged_run(uri: str, run_id: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(run_id)
    tags = parent.data.tags
    for tag in ("harness.git_commit", "harness.config_hash", "harness.dataset_fingerprint",
                "harness.weights_sha256", "harness.version", "torch.version", "harness.device"):
        assert tags.get(tag), tag
    assert tags["harness.weights"] == "random(seed=0)" and tags["harness.role"] == "experiment"
    assert parent.data.params["model.name"] == "squeezenet1_1"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(c.data.tags["harness.method"] for c in children) == sorted(METHODS)
    for child in children:
        metrics = child.data.metrics
        for key in ("deletion.mean", "deletion.ci_low", "deletion.ci_high", "insertion.mean",
                    "rand_ssim.mean"):
            assert key in metrics, (child.data.tags["harness.method"], key)
        assert metrics["deletion.n"] == 3
        assert child.data.params["method.registry_name"] == child.data.tags["harness.method"]
        assert child.data.tags["harness.config_hash"] == tags["harness.config_hash"]
    smooth = next(c for c in children if c.data.tags["harness.method"] == "smoothgrad")
    assert smooth.data.params["method.n"] == "4" and "deletion.p_holm" in smooth.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"records.parquet", "results.csv", "config.resolved.yaml", "tables",
            "figures"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "tables")} >= {
        "tables/table.tex", "tables/table.md", "tables/table.csv"}
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert {"figures/saliency_grid.png", "figures/curves.png",
            "figures/randomization.png"} <= figures
    # the paper table straight from the MLflow run id
    summary, paths = table_for(run_id, tracking_uri=uri, out=tmp_path / "from-mlflow")
    text = paths[1].read_text()
    assert f"MLflow run {run_id}" in text and "squeezenet1_1 (random(seed=0))" in text
    assert set(summary["method"]) == set(METHODS)


@pytest.mark.slow
def test_mlflow_tracking_server(tmp_path, mlflow_server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = from_dict(tiny_raw(tmp_path, tracking={"uri": mlflow_server,
                                                    "experiment": "server-test"}))
    result = run_experiment(config, progress=False, log=lambda *a: None)
    check_logged_run(mlflow_server, result.run_id, tmp_path)


@pytest.mark.slow
def test_mlflow_embedded_sqlite_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = from_dict(tiny_raw(tmp_path, tracking={"experiment": "sqlite-test"}))
    assert config.tracking.uri is None  # resolved at run time: environment, else the default
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = run_experiment(config, progress=False, log=lambda *a: None)
    assert (tmp_path / "mlflow.db").exists()
    check_logged_run("sqlite:///mlflow.db", result.run_id, tmp_path)


@pytest.mark.slow
def test_unreachable_tracking_server_fails_fast_with_uri(tmp_path, monkeypatch):
    import harness.runner

    def forbidden(*args, **kwargs):
        raise AssertionError("no compute before the tracking check")

    monkeypatch.setattr(harness.runner, "load_model", forbidden)
    uri = f"http://127.0.0.1:{free_port()}"
    config = from_dict(tiny_raw(tmp_path, tracking={"uri": uri}))
    began = time.time()
    with pytest.raises(TrackingUnavailableError, match=f"cannot use the MLflow tracking store "
                                                       f"at {uri}"):
        run_experiment(config, progress=False)
    assert time.time() - began < 15


@pytest.mark.slow
def test_cli_run_and_table_from_output_folder(tmp_path, capsys):
    from harness.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(tmp_path)))
    assert main(["run", str(path), "--no-progress", "--set", "data.options.names=[coffee]"]) == 0
    out = capsys.readouterr().out
    assert "method" in out and "deletion ↓" in out and "insertion ↑" in out and "results:" in out
    assert "n = 1 image: the intervals and tests mean little" in out  # the small-n warning
    assert main(["table", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "tables" / "table.tex").read_text().startswith(r"\begin{table}")
    assert "95% BCa bootstrap CI" in (tmp_path / "run" / "tables" / "table.md").read_text()
    assert main(["table", str(tmp_path / "run"), "--ci", "percentile", "--out",
                 str(tmp_path / "pct")]) == 0
    assert "95% percentile bootstrap CI" in (tmp_path / "pct" / "table.md").read_text()


@pytest.mark.slow
def test_tables_name_the_similarity_settings_also_for_runs_before_measure_versions(tmp_path):
    config = from_dict(tiny_raw(tmp_path, methods=["vanilla", "sobel"],
                                metrics={"model_randomization": {
                                    "blocks": ["conv10"], "measures": ["spearman_abs", "hog"]}}))
    records = list(run(config, progress=False))
    assert {(r["map_normalisation"], r["measure_version"]) for r in records} == {("reference", 2)}
    _, paths = table_for(str(tmp_path / "run"))
    text = paths[1].read_text()
    assert "map_normalisation=reference" in text
    assert "Model randomization: similarity on maps normalised as the reference notebook" in text
    assert "3x3-cell blocks" in text
    # the same folder as harness 0.1 wrote it: no measure_version, no map_normalisation key
    folder = tmp_path / "run"
    lines = load_records(folder)
    for record in lines:
        record.pop("measure_version")
        record.pop("map_normalisation")
    (folder / "records.parquet").unlink()  # the layout of 0.1: records.jsonl, curves inline
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    resolved = yaml.safe_load((folder / "config.resolved.yaml").read_text())
    resolved["metrics"]["model_randomization"].pop("map_normalisation")
    (folder / "config.resolved.yaml").write_text(yaml.safe_dump(resolved))
    _, paths = table_for(str(folder), out=tmp_path / "legacy")
    text = paths[1].read_text()
    assert "map_normalisation=method" in text and "harness 0.1" in text
    assert "hog: Spearman of HOG descriptors with 1x1-cell blocks" in text


@pytest.mark.slow
def test_mlflow_names_the_direction_of_every_logged_column(tmp_path):
    # the logged metrics are the table's columns (rand_<measure>, road_morf, ...), whose
    # directions can differ from their metric's (ROAD: road_morf lower, road_lerf higher)
    from mlflow.tracking import MlflowClient

    from harness.api import run as run_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = from_dict(tiny_raw(tmp_path, methods=["vanilla", "sobel"], reference=None,
                                data={"name": "samples", "options": {"names": ["coffee"]}},
                                metrics={"deletion": {"step": 12544},
                                         "model_randomization": {"blocks": ["conv10"],
                                                                 "measures": ["ssim"]}},
                                tracking={"enabled": True, "uri": uri, "experiment": "dirs"}))
    result = run_experiment(config, progress=False, log=lambda *args: None)
    summary = result.table
    expected = dict(zip(summary["metric"], summary["direction"], strict=True))
    client = MlflowClient(uri)
    for found in client.search_runs([client.get_experiment_by_name("dirs").experiment_id]):
        tagged = dict(pair.split("=") for pair in
                      found.data.tags["harness.metric_directions"].split(","))
        assert tagged == expected
        logged = {key.rsplit(".", 1)[0] for key in found.data.metrics
                  if not key.startswith(("curve.", "live.", "time."))}
        assert logged <= set(tagged)
        note = found.data.tags["mlflow.note.content"]
        assert "`rand_ssim` ↓" in note and "`deletion` ↓" in note
