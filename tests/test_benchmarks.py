"""The GPU check runs on the CPU in its quick mode, so it cannot rot where no GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
