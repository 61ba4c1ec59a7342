"""The command line."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from harness.cli import main


def test_saliency_figure_on_real_model(tmp_path):
    out = tmp_path / "grid.png"
    code = main(["saliency", "--model", "efficientnet_lite0", "--data", "samples", "--limit", "3",
                 "--methods", "vanilla,smoothgrad,sobel", "--param", "smoothgrad.n=4",
                 "--out", str(out)])
    assert code == 0
    with Image.open(out) as image:
        width, height = image.size
    assert width > 500 and height > 600  # 3 columns, 4 rows


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["saliency", "--methods", "vanila", "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown method 'vanila'" in capsys.readouterr().err
    assert main(["saliency", "--model", "nope", "--out", str(tmp_path / "x.png")]) == 2
    assert "Valid models:" in capsys.readouterr().err
    assert main(["saliency", "--param", "smoothgrad.n=3", "--out", str(tmp_path / "x.png")]) == 2
    assert "METHOD.KEY=VALUE" in capsys.readouterr().err


def test_console_script_lists_methods():
    result = subprocess.run([sys.executable, "-m", "harness.cli", "list", "methods"],
                            capture_output=True, text=True, check=True)
    assert "vanilla" in result.stdout and "Simonyan" in result.stdout
