"""The GPU check runs on the CPU in its quick mode, so it cannot rot where no GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_mode_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                           str(tmp_path), "--quick", "--device", "cpu"], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for key in ("a_model_images_per_s", "b_fp32_scored_per_s", "b_bf16_scored_per_s",
                "b_over_a_fp32", "auc_agreement_max_abs", "runner_images_per_s",
                "estimate_50000_images_hours", "b_over_c"):
        assert key in report, key
    assert report["runner_records"] == 2 * 4
    assert report["auc_agreement_max_abs"]["deletion_bf16_vs_fp32"] < 0.05
    assert "quick mode" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_metrics_limit_quick_mode_measures_passes_memory_and_peers(tmp_path):
    out = tmp_path / "limit.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "metrics_limit.py"),
                           "--quick", "--metrics",
                           "max_sensitivity,deletion,sparseness,model_randomization",
                           "--json", str(out)], capture_output=True, text=True, timeout=1800,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["metric"]: row for row in report["metrics"]}
    assert report["not_calling_the_model"] == ["sparseness"]
    sensitivity = rows["max_sensitivity"]
    # 2 images x (3 samples + the clean map), each a forward and a backward
    assert sensitivity["backward_images"] == 2 * 4 and sensitivity["forward_images"] == 0
    assert rows["deletion"]["backward_images"] == 0 and rows["deletion"]["forward_images"] > 0
    for row in (sensitivity, rows["deletion"]):
        assert row["metric_s"] > 0 and row["limit_s"] > 0 and row["rss_added_gb"] is not None
    peers = {peer["name"]: peer for peer in sensitivity["peers"]}
    for name in ("Quantus MaxSensitivity", "Captum sensitivity_max"):
        assert peers[name]["agreement"]["exact"]  # handed the harness's deltas: same values
        assert peers[name]["agreement"]["max_rel_diff"] < 1e-4, name
    assert "| max_sensitivity (n_samples=3) | 0 / 8 |" in done.stdout
    # the randomized copies' passes count: the original's maps (2 images, forward + backward),
    # then per block (fc, head) each copy's top-1 classes (2 forwards) and its maps (2 + 2)
    randomization = rows["model_randomization"]
    assert randomization["backward_images"] == 2 * 3
    assert randomization["forward_images"] == 2 * 2
    assert report["allocator"] == "tuned"
    assert set(sensitivity["limit_settings"]) == {"forward_backward"}


@pytest.mark.slow
def test_allocator_benchmark_measures_both_settings_in_fresh_processes(tmp_path):
    out = tmp_path / "allocator.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "allocator.py"),
                           "--processes", "1", "--sizes", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["sizes"] == [2]
    assert report["runs"]["default"][0]["applied"] is None
    for setting in ("default", "tuned"):
        assert report["runs"][setting][0]["rates"]["2"] > 0
    assert "| tuned |" in done.stdout and "| default |" in done.stdout
