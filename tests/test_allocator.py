"""The CPU allocator's settings (harness.allocator): set through glibc's mallopt where there is
one, left alone on request, called by the runs on the CPU."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from harness.config import from_dict
from harness.runner import run as compute

from .conftest import tiny_run

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
PROBE = ("import json, harness; first = harness.tune_cpu_allocator(); "
         "print(json.dumps([first, harness.tune_cpu_allocator()]))")


def _probe(value: str | None, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_CPU_ALLOCATOR"
           and not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    if value is not None:
        env["HARNESS_CPU_ALLOCATOR"] = value
    env.update(extra)
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.parametrize("value", [None, "tuned", " Tuned "])
def test_glibc_takes_the_thresholds_once_per_process(value):
    done = _probe(value)
    assert done.returncode == 0, done.stderr
    first, again = json.loads(done.stdout.strip().splitlines()[-1])
    # glibc 2.36 takes 1 GiB; an older one that refuses it takes its maximum, 32 MiB
    assert first["mmap_threshold"] in (1 << 30, 32 << 20)
    assert first["trim_threshold"] == (1 << 31) - 1
    assert again == first


@pytest.mark.slow
def test_default_leaves_the_c_library_alone():
    done = _probe("default")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [None, None]


@pytest.mark.slow
@pytest.mark.parametrize("setting", [{"MALLOC_TRIM_THRESHOLD_": "131072"},
                                     {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_the_users_own_malloc_settings_are_left_alone(setting):
    done = _probe("tuned", **setting)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [None, None]


@pytest.mark.slow
def test_an_unknown_choice_names_the_variable_and_the_choices():
    done = _probe("jemalloc")
    assert done.returncode != 0
    assert "HARNESS_CPU_ALLOCATOR='jemalloc'" in done.stderr
    assert "valid: tuned, default" in done.stderr


def test_a_cpu_run_tunes_the_allocator_before_its_model_loads(tmp_path, monkeypatch):
    import harness.runner as runner

    calls = []
    original = runner.load_model
    monkeypatch.setattr(runner, "tune_cpu_allocator", lambda: calls.append("tune"))
    monkeypatch.setattr(runner, "load_model",
                        lambda *a, **k: calls.append("model") or original(*a, **k))
    list(compute(from_dict(tiny_run(tmp_path)), progress=False))
    assert calls == ["tune", "model"]
