"""The revisited sanity checks and the agreement between methods in a run: records, table
columns, figures and agreement tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.api import run as run_experiment
from harness.config import from_dict
from harness.runner import load_records


@pytest.mark.slow  # SqueezeNet on 224 x 224 photos: 15-30 s on 2 shared cores
def test_a_run_with_the_revisited_checks_and_agreement(tmp_path: Path):
    config = from_dict({
        "name": "revisited", "seed": 0,
        "model": {"name": "squeezenet1_1", "weights": "random"},
        "data": {"name": "samples", "options": {"names": ["chelsea", "coffee"]}},
        "batch_size": 2,
        "methods": ["vanilla", "sobel", {"name": "random", "params": {"seed": 0}}],
        "metrics": {
            "model_randomization": {"blocks": ["conv10"], "order": "bottom_up",
                                    "map_normalisation": "second_moment",
                                    "measures": ["spearman_abs"]},
            "smooth_mprt": {"blocks": ["conv10", "fire9"], "n_samples": 2},
            "efficient_mprt": {"blocks": ["conv10", "fire9"]},
            "input_invariance": {"methods": ["vanilla", "sobel"]},
        },
        "agreement": {"top_k": 0.1},
        "figure_images": 2, "output_dir": str(tmp_path / "run"),
        "tracking": {"enabled": False},
    })
    result = run_experiment(config, progress=False, log=lambda *_: None)
    records = pd.DataFrame(load_records(config.output_dir))
    smooth = records[records["metric"] == "smooth_mprt"]
    # bottom-up over the two chosen blocks: fire9 first, then conv10 (both random)
    assert smooth.groupby("step")["block"].first().tolist() == ["fire9", "conv10"]
    assert set(smooth["order"]) == {"bottom_up"} and set(smooth["measure"]) == {"spearman"}
    randomization = records[records["metric"] == "model_randomization"]
    assert set(randomization["order"]) == {"bottom_up"}
    assert set(randomization["map_normalisation"]) == {"second_moment"}
    invariance = records[records["metric"] == "input_invariance"]
    assert set(invariance["first_layer"]) == {"features.0"}
    assert (invariance[invariance["method"] == "vanilla"]["value"] < 1e-2).all()  # float32
    summary = result.table
    sobel = summary[summary["method"] == "sobel"].set_index("metric")["mean"]
    assert sobel["smooth_mprt"] == 1.0 and sobel["efficient_mprt"] == 0.0  # ignores the model
    assert sobel["input_invariance"] < 1e-6
    assert {"smooth_mprt", "efficient_mprt", "input_invariance", "rand_spearman_abs"} <= set(
        summary["metric"])
    output = Path(config.output_dir)
    assert (output / "figures" / "smooth_mprt.png").exists()
    text = (output / "tables" / "table.md").read_text()
    assert "bottom-up layer order" in text and "second moment" in text
    feature = (output / "tables" / "agreement_feature.md").read_text()
    assert "| vanilla | 1.000 |" in feature and "mean over 2 images" in feature
    per_image = pd.read_csv(output / "tables" / "agreement_per_image.csv")
    assert len(per_image) == 3 * 2 * 6 and set(per_image["top_k"]) == {5018}
    assert (output / "figures" / "agreement" / "rank_correlation.png").exists()
