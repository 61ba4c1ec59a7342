"""What a terminal shows: the run's compact table, `harness list`, the small-n warning, and a
`make clean` that never deletes results."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.listing import MAX_WIDTH, compact_table, list_text, small_n_warning
from harness.methods import list_methods
from harness.metrics.registry import list_metrics

from .conftest import tiny_run

ROOT = Path(__file__).resolve().parents[1]
# the quickstart's table columns and methods (experiments/quickstart.yaml)
QUICKSTART_COLUMNS = {
    "deletion": "down", "insertion": "up", "road_morf": "down", "road_lerf": "up",
    "road_combined": "up", "sparseness": "up", "complexity": "down",
    "rand_spearman_abs": "down", "rand_spearman_signed": "down", "rand_ssim": "down",
    "rand_hog": "down"}
QUICKSTART_METHODS = ["vanilla", "blurred", "smoothgrad", "smoothgrad_sq", "vargrad", "gradcam",
                      "sobel", "random", "center"]


def quickstart_like_summary(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"method": method, "metric": metric, "direction": direction,
             "mean": float(rng.normal(0, 3)), "ci_low": -1.0, "ci_high": 1.0, "n": n,
             "undefined": 0, "p": np.nan, "p_holm": np.nan}
            for method in QUICKSTART_METHODS for metric, direction in QUICKSTART_COLUMNS.items()]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("width", [MAX_WIDTH, 60])
def test_the_compact_table_fits_the_width_and_marks_the_best(width):
    summary = quickstart_like_summary()
    text = compact_table(summary, width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    blocks = text.split("\n\n")
    assert len(blocks) > 1  # eleven columns do not fit one block at these widths
    seen = []
    for block in blocks:
        header, *rows = block.splitlines()
        assert [row.split()[0] for row in rows] == QUICKSTART_METHODS  # every method, in order
        seen += [word for word in header.split() if word in QUICKSTART_COLUMNS]
    assert seen == list(QUICKSTART_COLUMNS)  # every column once, in order
    # the mark: the highest mean of an up column, the lowest of a down one
    for metric, direction in QUICKSTART_COLUMNS.items():
        column = summary[summary["metric"] == metric].set_index("method")["mean"]
        best = column.idxmax() if direction == "up" else column.idxmin()
        block = next(b for b in blocks if f" {metric} " in b + " ")
        header, *rows = block.splitlines()
        position = header.split().index(metric) // 2  # header words: name, arrow, name, ...
        marked = [row.split()[0] for row in rows if row.split()[1 + position].endswith("*")]
        assert marked == [best], metric


def test_the_compact_table_with_a_metric_not_run_for_every_method():
    summary = quickstart_like_summary()
    summary = summary[~((summary["metric"] == "rand_ssim") & (summary["method"] == "center"))]
    text = compact_table(summary, width=MAX_WIDTH)
    centre = [line for line in text.splitlines() if line.startswith("center")]
    assert sum(line.count("—") for line in centre) == 1


def test_small_n_warns_and_ten_images_do_not():
    assert "n = 2 images" in small_n_warning(quickstart_like_summary(n=2))
    assert small_n_warning(quickstart_like_summary(n=10)) is None


@pytest.mark.slow
def test_a_run_prints_at_most_100_columns(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    raw = tiny_run(Path("."), output_dir="run", methods=["vanilla", "sobel", "center"],
                   metrics={"deletion": {"step": 32}, "insertion": {"step": 32},
                            "sparseness": {}, "complexity": {}, "abpc": {"step": 32}})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", "config.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100, out
    assert "n = 3 images: the intervals and tests mean little" in out
    assert "run/tables/table.md" in out
    # the full table with intervals is the file's, not the terminal's
    assert "[" in (tmp_path / "run" / "tables" / "table.md").read_text()


@pytest.mark.parametrize("width", [MAX_WIDTH, 72])
def test_harness_list_is_wrapped_and_complete(width):
    text = list_text(["models", "datasets", "methods", "metrics"], width=width)
    for line in text.splitlines():
        assert len(line) <= width or " " not in line.strip(), line  # only a single long word
    names = {line.strip().split()[0] for line in text.splitlines() if line.startswith("  ")
             and not line.startswith("   ")}
    assert set(list_metrics()) <= names and set(list_methods()) <= names
    assert "params: base=vanilla, base_params=None, sigma=2.0" in " ".join(text.split())
    # the direction once per metric (the arrow), not also in words after the summary
    deletion = text.split("\n  deletion  ")[1].split("\n  ")[0]
    assert deletion.startswith("↓") and "lower is better" not in deletion


def test_make_clean_keeps_every_result(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ROOT / "Makefile", folder / "Makefile")
    results = [folder / "outputs" / "quickstart" / "records.parquet", folder / "mlflow.db",
               folder / "mlruns" / "0" / "meta.yaml", folder / "my_store" / "mlflow.db"]
    builds = [folder / ".venv" / "bin" / "python", folder / "site" / "index.html",
              folder / "harness" / "__pycache__" / "x.pyc", folder / ".pytest_cache" / "v"]
    for path in results + builds:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kept" if path in results else "build")
    done = subprocess.run(["make", "clean"], cwd=folder, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(path.read_text() == "kept" for path in results)
    assert not any(path.exists() for path in builds)
    # clean-results asks first; anything but 'delete' deletes nothing
    done = subprocess.run(["make", "clean-results"], cwd=folder, input="no\n",
                          capture_output=True, text=True, timeout=60)
    assert all(path.read_text() == "kept" for path in results)
    assert "nothing deleted" in done.stdout
