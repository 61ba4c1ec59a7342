"""MLflow as users live in it: runs visible while they compute, honest metrics, curves as step
metrics, a lost server that costs no record, idempotent re-logging, the ecosystem's conventions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.api import run as run_experiment
from harness.config import from_dict
from harness.runner import load_records
from harness.tracking import TrackingUnavailableError, check_tracking, resolve_tracking

from .test_experiment import free_port, tiny_raw

SLOW_METHODS = ["vanilla", {"name": "smoothgrad", "params": {"n": 12}}, "sobel"]


def start_server(folder: Path, port: int) -> subprocess.Popen:
    log = (folder / f"server-{port}.log").open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port)], cwd=folder, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)  # its workers in its process group
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    pytest.fail("mlflow server did not start")


def stop(process: subprocess.Popen, port: int) -> None:
    """Kill the server and its worker processes, and wait until its port is free."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        except OSError:
            return
        time.sleep(0.2)
    pytest.fail(f"the server on port {port} did not stop")


def write_config(folder: Path, raw: dict) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def runs_of(client: MlflowClient, experiment: str) -> tuple[list, list]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return [], []
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if r.data.tags.get("harness.role") == "experiment"]
    children = [r for r in runs if r.data.tags.get("harness.role") == "method"]
    return parents, children


def assert_honest(client: MlflowClient, child) -> None:
    """Every logged ``<column>.<stat>`` has ``<column>.n`` >= 1 behind it."""
    metrics = child.data.metrics
    for key in metrics:
        if key.startswith(("curve.", "time.")):
            continue
        column = key.rsplit(".", 1)[0]
        assert metrics.get(f"{column}.n", 0) >= 1, (child.info.run_name, key)


@pytest.mark.slow
def test_live_run_then_lost_server_then_harness_log(tmp_path):
    port = free_port()
    server = start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    raw = tiny_raw(tmp_path, batch_size=1, methods=SLOW_METHODS,
                   metrics={"deletion": {"step": 12544}, "insertion": {"step": 12544}},
                   tracking={"uri": uri, "experiment": "live", "update_seconds": 0})
    config = write_config(tmp_path, raw)
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(config),
                                "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(uri)
    seen_running = False
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        parents, children = runs_of(client, "live")
        partial = [c for c in children if c.data.metrics.get("live.deletion.n", 0) >= 1]
        if parents and parents[0].info.status == "RUNNING" and partial:
            seen_running = True
            break
        time.sleep(0.2)
    assert seen_running, "the run is visible as RUNNING with partial metrics while it computes"
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["mlflow_run_id"] == parents[0].info.run_id, "the parent id is stored at once"
    stop(server, port)  # the tracking server goes away mid-run
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]
    assert "harness log" in output and "records are safe" in output
    assert len(load_records(tmp_path / "run")) == 3 * 3 * 2, "no record lost"
    assert (tmp_path / "run" / "tables" / "table.md").exists()
    server = start_server(tmp_path, port)  # back, with the same store
    try:
        for _ in range(2):  # logging twice duplicates nothing
            logged = subprocess.run([sys.executable, "-m", "harness.cli", "log",
                                     str(tmp_path / "run")], cwd=tmp_path, capture_output=True,
                                    text=True, timeout=600)
            assert logged.returncode == 0, logged.stderr[-3000:]
        parents, children = runs_of(client, "live")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted(c.data.tags["harness.method"] for c in children) == ["smoothgrad", "sobel",
                                                                           "vanilla"]
        lived = []
        for child in children:
            assert child.info.status == "FINISHED"
            assert child.data.metrics["deletion.n"] == 3 and "deletion.ci_low" in child.data.metrics
            assert_honest(client, child)
            curve = client.get_metric_history(child.info.run_id, "curve.deletion")
            assert sorted(p.step for p in curve) == [0, 1, 2, 3, 4], "one point per step"
            xs = client.get_metric_history(child.info.run_id, "curve.deletion.x")
            assert [p.value for p in sorted(xs, key=lambda p: p.step)] == [0, 0.25, 0.5, 0.75, 1]
            final = [p for p in client.get_metric_history(child.info.run_id, "deletion.ci_low")]
            assert len(final) == 1, "re-logging did not duplicate the final value"
            assert [p.step for p in final] == [0], "final values at step 0: one bar per method"
            live = client.get_metric_history(child.info.run_id, "live.deletion.mean")
            assert all(p.step >= 1 for p in live), "running means under their own key"
            lived.append(bool(live))
            assert child.data.metrics["time.seconds"] > 0
            artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
            assert {"per_image.csv", "maps.png"} <= artifacts, "the same names in every child"
        assert any(lived), "the live means logged before the server went are kept"
        tags = parents[0].data.tags
        assert tags["mlflow.source.name"].startswith("harness run ")
        assert tags.get("mlflow.user") and "harness.dataset_fingerprint" in tags
        assert "deletion=down" in tags["harness.metric_directions"]
        assert "↓" in tags["mlflow.note.content"]
        assert "## Results" in tags["mlflow.note.content"], "the parent ends with the table"
        assert "paired Wilcoxon signed-rank test against the reference method `vanilla`" in \
            tags["mlflow.note.content"]
        [dataset] = parents[0].inputs.dataset_inputs
        assert dataset.dataset.digest == tags["harness.dataset_fingerprint"][:32]
        assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "evaluation"
        assert json.loads(dataset.dataset.profile)["ids"] == ["chelsea", "coffee", "rocket"]
        assert "Reliability (tables/reliability.md" in tags["mlflow.note.content"]
        assert "model.name" in parents[0].data.params
        assert not any(k.startswith("metrics.") for c in children for k in c.data.params)
    finally:
        stop(server, port)


KILL_IN_FINAL_LOGGING = textwrap.dedent("""
    import os, signal, sys
    import harness.tracking
    original = harness.tracking.LiveRun._final

    def final(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    harness.tracking.LiveRun._final = final
    from harness.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_kill_during_final_logging_then_resume_leaves_one_parent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = tiny_raw(tmp_path, methods=["vanilla", "sobel"], metrics={"deletion": {"step": 12544}},
                   tracking={"uri": uri, "experiment": "killed"})
    config = write_config(tmp_path, raw)
    (tmp_path / "killer.py").write_text(KILL_IN_FINAL_LOGGING)
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "run", str(config),
                             "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL
    client = MlflowClient(uri)
    parents, _ = runs_of(client, "killed")
    assert len(parents) == 1 and parents[0].info.status == "RUNNING"
    resumed = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(config),
                              "--no-progress", "--resume"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    parents, children = runs_of(client, "killed")
    assert len(parents) == 1 and len(children) == 2, "the same runs, reopened"
    assert {r.info.status for r in parents + children} == {"FINISHED"}, "no RUNNING leftover"


@pytest.mark.slow
def test_failed_run_is_marked_failed_with_its_error(tmp_path, monkeypatch):
    import harness.runner

    def broken(*args, **kwargs):
        raise RuntimeError("the method broke")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = from_dict(tiny_raw(tmp_path, methods=["vanilla"],
                                metrics={"deletion": {"step": 12544}},
                                tracking={"uri": uri, "experiment": "failing"}))
    monkeypatch.setattr(harness.runner, "unit_records", broken)
    with pytest.raises(RuntimeError, match="the method broke"):
        run_experiment(config, progress=False, log=lambda *a: None)
    parents, children = runs_of(MlflowClient(uri), "failing")
    assert [r.info.status for r in parents + children] == ["FAILED", "FAILED"]
    assert parents[0].data.tags["harness.error"] == \
        "RuntimeError: the method broke (method 'vanilla')"


@pytest.mark.slow
def test_environment_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking(None, None) == (f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}",
                                            "harness", "default"), "absolute: printed as such"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert resolve_tracking(None, None) == (f"sqlite:///{tmp_path / 'env.db'}", "from-env",
                                            "MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME")
    assert resolve_tracking("http://x", "mine") == ("http://x", "mine", "config")
    monkeypatch.chdir(tmp_path)
    config = from_dict(tiny_raw(tmp_path, methods=["sobel"], metrics={"deletion": {"step": 12544}},
                                reference=None, tracking={"enabled": True}))
    lines = []
    result = run_experiment(config, progress=False, log=lines.append)
    assert f"MLflow: sqlite:///{tmp_path / 'env.db'} (from MLFLOW_TRACKING_URI, " \
           f"MLFLOW_EXPERIMENT_NAME), experiment 'from-env'" in lines
    parents, _ = runs_of(MlflowClient(f"sqlite:///{tmp_path / 'env.db'}"), "from-env")
    assert [p.info.run_id for p in parents] == [result.run_id]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_every_scheme_is_checked_before_compute():
    with pytest.raises(TrackingUnavailableError, match="the driver 'psycopg.*' is not installed"):
        check_tracking("postgresql://user@127.0.0.1:1/db")
    began = time.time()
    with pytest.raises(TrackingUnavailableError, match="cannot use the MLflow tracking store at "
                                                       "http://127.0.0.1:1"):
        check_tracking("http://127.0.0.1:1")
    assert time.time() - began < 30, "a lost server costs a bounded wait"


@pytest.mark.slow
def test_concurrent_first_runs_do_not_race_on_a_new_store(tmp_path):
    for attempt in range(2):
        uri = f"sqlite:///{tmp_path / f'new-{attempt}.db'}"
        code = f"from harness.tracking import check_tracking; check_tracking({uri!r})"
        processes = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE,
                                      text=True, env={**os.environ}) for _ in range(3)]
        for process in processes:
            _, error = process.communicate(timeout=300)
            assert process.returncode == 0, error[-2000:]


@pytest.mark.slow
def test_failures_after_the_records_still_end_the_runs(tmp_path, monkeypatch):
    import harness.api

    def broken(*args, **kwargs):
        raise OSError("disk full")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = from_dict(tiny_raw(tmp_path, methods=["sobel"], reference=None,
                                metrics={"deletion": {"step": 12544}},
                                tracking={"uri": uri, "experiment": "late"}))
    monkeypatch.setattr(harness.api, "write_report", broken)
    with pytest.raises(OSError, match="disk full"):
        run_experiment(config, progress=False, log=lambda *a: None)
    parents, children = runs_of(MlflowClient(uri), "late")
    assert {r.info.status for r in parents + children} == {"FAILED"}


@pytest.mark.slow
def test_a_fresh_run_never_reopens_an_earlier_runs_mlflow_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = tiny_raw(tmp_path, methods=["sobel"], reference=None,
                   data={"name": "samples", "options": {"names": ["coffee"]}},
                   metrics={"deletion": {"step": 12544}},
                   tracking={"uri": uri, "experiment": "fresh"})
    first = run_experiment(from_dict(raw), progress=False, log=lambda *a: None)
    import shutil

    for name in ("records.parquet", "tables"):  # a folder whose records are gone
        path = tmp_path / "run" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    raw["metrics"]["deletion"]["step"] = 25088
    second = run_experiment(from_dict(raw), progress=False, log=lambda *a: None)
    assert second.run_id != first.run_id
    run = MlflowClient(uri).get_run(second.run_id)
    assert run.data.params["metrics.deletion.step"] == "25088"


def test_live_means_are_per_image_for_multi_part_metrics():
    from harness.tracking import RunningMeans

    running = RunningMeans()
    unit = [{"method": "vanilla", "metric": "model_randomization", "image_id": image,
             "measure": "ssim", "block": block, "step": step, "value": value}
            for image in ("a", "b") for step, block, value in ((1, "fc", 0.9), (2, "head", 0.5))]
    running.add(unit)
    assert running.snapshot() == {"vanilla": {"rand_ssim": (0.5, 2)}}, "the last step, n images"


def _wait_for_records(folder: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    """Until the run in ``folder`` has stored at least one work unit."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        shard = folder / "records.jsonl"
        if shard.exists() and shard.stat().st_size > 0:
            return
        time.sleep(0.1)
    pytest.fail("the run stored no record in time")


@pytest.mark.slow
def test_sigterm_ends_every_run_killed_and_keeps_the_records(tmp_path):
    port = free_port()
    server = start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    try:
        raw = tiny_raw(tmp_path, batch_size=1, methods=SLOW_METHODS,
                       metrics={"deletion": {"step": 12544}},
                       tracking={"uri": uri, "experiment": "term", "update_seconds": 0})
        config = write_config(tmp_path, raw)
        process = subprocess.Popen([sys.executable, "-m", "harness", "run", str(config),
                                    "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        _wait_for_records(tmp_path / "run", process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 143, output[-3000:]
        assert "terminated by SIGTERM" in output
        parents, children = runs_of(MlflowClient(uri), "term")
        assert len(parents) == 1 and len(children) == 3
        for run in parents + children:
            assert run.info.status == "KILLED"
            assert run.data.tags["harness.error"] == "terminated by SIGTERM"
            assert run.data.tags["harness.pid"].isdigit()
            assert f"pid {run.data.tags['harness.pid']}" in run.data.tags["harness.heartbeat"]
        stored = load_records(tmp_path / "run")
        assert stored, "the records stored before the signal are kept"
        from harness.files import RunLock

        RunLock(tmp_path / "run").acquire().release()  # the lock went with the run
        resumed = subprocess.run([sys.executable, "-m", "harness", "run", str(config),
                                  "--no-progress", "--resume"], cwd=tmp_path, capture_output=True,
                                 text=True, timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        parents, children = runs_of(MlflowClient(uri), "term")
        assert len(parents) == 1 and {r.info.status for r in parents + children} == {"FINISHED"}
        assert all("harness.error" not in r.data.tags for r in parents + children)
    finally:
        stop(server, port)


@pytest.mark.slow
def test_sigkill_then_harness_log_closes_the_runs_without_computing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = tiny_raw(tmp_path, batch_size=1, methods=SLOW_METHODS,
                   metrics={"deletion": {"step": 12544}},
                   tracking={"uri": uri, "experiment": "dead", "update_seconds": 0})
    config = write_config(tmp_path, raw)
    process = subprocess.Popen([sys.executable, "-m", "harness", "run", str(config),
                                "--no-progress"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _wait_for_records(tmp_path / "run", process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    client = MlflowClient(uri)
    parents, children = runs_of(client, "dead")
    assert {r.info.status for r in parents + children} == {"RUNNING"}, "a dead run looks live"
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    records = len(load_records(tmp_path / "run"))
    closed = subprocess.run([sys.executable, "-m", "harness", "log", str(tmp_path / "run")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert closed.returncode == 0, closed.stderr[-3000:]
    assert "ended its" in closed.stdout and "KILLED" in closed.stdout
    parents, children = runs_of(client, "dead")
    assert {r.info.status for r in parents + children} == {"KILLED"}
    assert "process ended without closing its runs" in parents[0].data.tags["harness.error"]
    assert len(load_records(tmp_path / "run")) == records, "nothing was computed"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    resumed = subprocess.run([sys.executable, "-m", "harness", "run", str(config),
                              "--no-progress", "--resume"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    parents, children = runs_of(client, "dead")
    assert len(parents) == 1 and len(children) == 3, "the same runs, reopened"
    assert {r.info.status for r in parents + children} == {"FINISHED"}


@pytest.mark.slow
def test_a_failing_method_fails_only_its_own_run(tmp_path, monkeypatch):
    import harness.runner

    original = harness.runner.unit_records

    def broken(config, unit, display_name):
        if display_name == "sobel":
            raise RuntimeError("sobel broke")
        return original(config, unit, display_name)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = from_dict(tiny_raw(tmp_path, methods=["vanilla", "sobel", "random"],
                                batch_size=3, reference=None,
                                metrics={"deletion": {"step": 12544}},
                                tracking={"uri": uri, "experiment": "one-fails"}))
    monkeypatch.setattr(harness.runner, "unit_records", broken)
    with pytest.raises(RuntimeError, match="sobel broke"):
        run_experiment(config, progress=False, log=lambda *a: None)
    parents, children = runs_of(MlflowClient(uri), "one-fails")
    by_method = {c.data.tags["harness.method"]: c for c in children}
    assert by_method["sobel"].info.status == "FAILED"
    assert by_method["sobel"].data.tags["harness.error"] == "RuntimeError: sobel broke"
    for healthy in ("vanilla", "random"):
        assert by_method[healthy].info.status == "KILLED"
        assert "stopped because method 'sobel' failed" in by_method[healthy].data.tags[
            "harness.error"]
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["harness.error"] == "RuntimeError: sobel broke (method 'sobel')"


@pytest.mark.slow
def test_importing_the_tracking_module_leaves_the_environment_alone():
    code = ("import os; before = dict(os.environ); import harness.tracking, harness; "
            "assert dict(os.environ) == before, set(os.environ) ^ set(before)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("MLFLOW_HTTP")}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
