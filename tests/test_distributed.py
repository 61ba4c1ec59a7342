"""One experiment across processes with torchrun (gloo on CPUs): the records, MLflow runs and
tables of a one-process run, whatever the world size, through kills and resumes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.runner import load_records
from harness.store import record_keys

from .test_experiment import free_port, tiny_raw

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def one_thread() -> dict:
    """CPU kernels sum in an order that depends on the thread count (the last bits move), and
    torchrun gives every rank one thread: the one-process reference gets one too."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def write(folder: Path, **changes) -> Path:
    raw = tiny_raw(folder, batch_size=1, **changes)
    path = folder / f"{Path(raw['output_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def comparable(folder: Path) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in load_records(folder))


def run(command: list[str], cwd: Path, *, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env=one_thread())
    assert done.returncode == expect, (done.stdout + done.stderr)[-4000:]
    return done


def child_metrics(uri: str, experiment: str) -> dict:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if r.data.tags.get("harness.role") == "experiment"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    return {r.data.tags["harness.method"]: {  # the final values, not progress nor timing
        key: value for key, value in r.data.metrics.items()
        if not key.startswith(("live.", "time."))} for r in runs
        if r.data.tags.get("harness.role") == "method"}


@pytest.mark.slow
def test_two_ranks_give_the_records_runs_and_tables_of_one_process(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    single = write(tmp_path, output_dir=str(tmp_path / "single"),
                   tracking={"uri": uri, "experiment": "single"})
    double = write(tmp_path, output_dir=str(tmp_path / "double"),
                   tracking={"uri": uri, "experiment": "double"})
    run([sys.executable, "-m", "harness", "run", str(single), "--no-progress"], tmp_path)
    out = run(TORCHRUN + ["--nproc-per-node", "2", "-m", "harness", "run", str(double),
                          "--no-progress"], tmp_path)
    assert "rank 1:" in out.stdout and "(2 ranks)" in out.stdout
    assert comparable(tmp_path / "single") == comparable(tmp_path / "double")
    assert not (tmp_path / "double" / "shards").exists(), "merged into records.parquet"
    assert child_metrics(uri, "single") == child_metrics(uri, "double")

    def table(folder: str) -> str:
        text = (tmp_path / folder / "tables" / "table.md").read_text()
        return re.sub(r"(MLflow run [0-9a-f]{32}|/\S+/(single|double))", "RUN", text)

    assert table("single") == table("double")


KILL_RANK_ONE = textwrap.dedent("""
    import os, signal, sys
    import harness.store
    original = harness.store.ShardWriter.append
    calls = [0]

    def append(self, records):
        calls[0] += 1
        if os.environ.get("RANK") == "1" and calls[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, records)

    harness.store.ShardWriter.append = append
    from harness.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    config = write(folder, output_dir=str(folder / "run"))
    run([sys.executable, "-m", "harness", "run", str(config), "--no-progress"], folder)
    return comparable(folder / "run")


@pytest.mark.slow
@pytest.mark.parametrize("resume_world", [2, 1])
def test_a_killed_rank_resumes_to_the_uninterrupted_records(tmp_path, uninterrupted,
                                                            resume_world):
    config = write(tmp_path, output_dir=str(tmp_path / "run"))
    (tmp_path / "killer.py").write_text(KILL_RANK_ONE)
    killed = subprocess.run(TORCHRUN + ["--nproc-per-node", "2", str(tmp_path / "killer.py"),
                                        "run", str(config), "--no-progress"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900, env=one_thread())
    assert killed.returncode != 0 and "Signal 9" in killed.stderr + killed.stdout
    partial = len(record_keys(tmp_path / "run"))
    assert 0 < partial < 54, "the kill landed mid-run"
    command = ([sys.executable, "-m", "harness"] if resume_world == 1 else
               TORCHRUN + ["--nproc-per-node", str(resume_world), "-m", "harness"])
    run(command + ["run", str(config), "--no-progress", "--resume"], tmp_path)
    assert len(load_records(tmp_path / "run")) == 54, "no duplicate, none lost"
    assert comparable(tmp_path / "run") == uninterrupted


@pytest.mark.slow
def test_bad_worlds_are_named(tmp_path):
    config = write(tmp_path, output_dir=str(tmp_path / "run"), methods=["sobel"], reference=None,
                   data={"name": "samples", "options": {"names": ["coffee"]}})
    done = run(TORCHRUN + ["--nproc-per-node", "2", "-m", "harness", "run", str(config),
                           "--no-progress"], tmp_path, expect=1)
    assert "the world size 2 is larger than the 1 work units" in done.stderr
    assert not record_keys(tmp_path / "run")
    env = {**one_thread(), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "HARNESS_DIST_TIMEOUT": "5"}
    lonely = subprocess.run([sys.executable, "-m", "harness", "run", str(config),
                             "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=env)
    assert lonely.returncode == 2
    assert "rank 1 of 2 could not join the rendezvous at 127.0.0.1:" in lonely.stderr
    assert "--rdzv-endpoint" in lonely.stderr



SLOW_RANK_ONE = textwrap.dedent("""
    import os, sys, time
    import harness.store
    original = harness.store.ShardWriter.append

    def append(self, records):
        if os.environ.get("RANK") == "1":
            time.sleep(float(os.environ["SLOW_SECONDS"]))  # a rank with more work left
        return original(self, records)

    harness.store.ShardWriter.append = append
    from harness.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_rank_that_finishes_early_waits_for_the_others(tmp_path):
    # HARNESS_DIST_TIMEOUT bounds the rendezvous, not the wait at the end of the computation:
    # at paper scale (and on a resume, where one rank may hold all the missing units) ranks
    # finish hours apart, and the waiting ones must not time out and take the run down
    config = write(tmp_path, output_dir=str(tmp_path / "run"), methods=["sobel", "vanilla"],
                   reference=None, metrics={"deletion": {"step": 12544}},
                   data={"name": "samples", "options": {"names": ["coffee"]}})
    (tmp_path / "slow.py").write_text(SLOW_RANK_ONE)
    env = {**one_thread(), "HARNESS_DIST_TIMEOUT": "20", "SLOW_SECONDS": "30"}
    done = subprocess.run(TORCHRUN + ["--nproc-per-node", "2", str(tmp_path / "slow.py"), "run",
                                      str(config), "--no-progress"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert len(load_records(tmp_path / "run")) == 2
    assert not (tmp_path / "run" / "shards").exists(), "merged into records.parquet"
