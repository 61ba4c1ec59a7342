"""The command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from harness.cli import main


@pytest.mark.slow
def test_saliency_figure_on_real_model(tmp_path):
    out = tmp_path / "grid.png"
    code = main(["saliency", "--model", "efficientnet_lite0", "--data", "samples", "--limit", "3",
                 "--methods", "vanilla,smoothgrad,sobel", "--param", "smoothgrad.n=4",
                 "--out", str(out)])
    assert code == 0
    with Image.open(out) as image:
        width, height = image.size
    assert width > 500 and height > 600  # 3 columns, 4 rows


@pytest.mark.slow
def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["saliency", "--methods", "vanila", "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown method 'vanila'" in capsys.readouterr().err
    assert main(["saliency", "--model", "nope", "--out", str(tmp_path / "x.png")]) == 2
    assert "harness list models" in capsys.readouterr().err
    assert main(["saliency", "--param", "smoothgrad.n=3", "--out", str(tmp_path / "x.png")]) == 2
    assert "METHOD.KEY=VALUE" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_lists_methods():
    result = subprocess.run([sys.executable, "-m", "harness.cli", "list", "methods"],
                            capture_output=True, text=True, check=True)
    assert "vanilla" in result.stdout and "Simonyan" in result.stdout


@pytest.mark.slow
def test_score_maps_from_disk_in_any_format(tmp_path, capsys):
    import numpy as np
    import pandas as pd
    import pytest
    import torch

    from harness.mapsfile import load_maps, save_maps

    rng = np.random.default_rng(0)
    maps = rng.random((2, 224, 224)).astype(np.float32)
    save_maps(tmp_path / "m.npz", maps, ["coffee", "chelsea"])  # order differs from the dataset
    np.save(tmp_path / "m.npy", maps[:, None])
    torch.save({"maps": torch.from_numpy(maps), "ids": ["coffee", "chelsea"]}, tmp_path / "m.pt")
    for name in ("m.npz", "m.npy", "m.pt"):
        loaded, ids = load_maps(tmp_path / name)
        np.testing.assert_array_equal(loaded, maps)
        assert ids == (None if name == "m.npy" else ["coffee", "chelsea"])
    out = tmp_path / "scores.csv"
    code = main(["score", "--maps", str(tmp_path / "m.npz"), "--data", "samples",
                 "--data-opt", "names=[chelsea, coffee]", "--metrics", "deletion,lerf,sparseness",
                 "--step", "12544", "--option", "lerf.substrate=mean", "--out", str(out)])
    assert code == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["metric", "image_id", "value", "direction"]
    assert table["image_id"].tolist() == ["coffee", "chelsea"] * 3
    assert table.groupby("metric")["direction"].first().to_dict() == {
        "deletion": "down", "lerf": "up", "sparseness": "up"}
    assert table["value"].between(0, 1).all()
    assert "lerf: step=12544, substrate=mean" in capsys.readouterr().out
    curves = np.load(tmp_path / "scores_curves.npz")
    assert curves["deletion"].shape == (2, 5)  # 224*224 / 12544 = 4 steps + 1
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="does not exist"):
        load_maps(tmp_path / "nope.npz")
    np.save(tmp_path / "rgb.npy", np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"expected \[N, H, W\]"):
        load_maps(tmp_path / "rgb.npy")
    assert main(["score", "--maps", str(tmp_path / "m.npz"), "--metrics", "aopc",
                 "--out", str(out)]) == 2
    assert "unknown metric 'aopc'" in capsys.readouterr().err
    assert main(["score", "--maps", str(tmp_path / "m.npz"), "--metrics", "model_randomization",
                 "--out", str(out)]) == 2
    assert "needs method, not only maps: run it with `harness run`" in capsys.readouterr().err
    assert main(["score", "--maps", str(tmp_path / "m.npz"), "--option", "deletion.stepp=3",
                 "--out", str(out)]) == 2
    assert "metrics.deletion.stepp: unknown key" in capsys.readouterr().err
