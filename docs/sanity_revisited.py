"""Draw docs/sanity_revisited.png: cascading model randomization of EfficientNet-Lite0 on the six
sample photos in both layer orders (top-down with the notebook's normalisation, the classic
test; bottom-up with it and with the second-moment normalisation), the methods and settings of
experiments/sanity_revisited.yaml; prints the mean similarity after each step as JSON.

    .venv/bin/python docs/sanity_revisited.py [docs/sanity_revisited.png] [steps.json]
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import harness
from harness.sanity import model_randomization
from harness.sanity.figures import convention_comparison

METHODS = {"vanilla": {}, "smoothgrad": {"n": 5, "noise": 0.15, "seed": 0}, "gradcam": {},
           "integrated_gradients": {"n_steps": 8}, "sobel": {}}
MEASURES = ("spearman_abs", "ssim")
SETTINGS = {"top-down, reference": ("top_down", "reference"),
            "bottom-up, reference": ("bottom_up", "reference"),
            "bottom-up, second moment": ("bottom_up", "second_moment")}


def main(out: str = "docs/sanity_revisited.png", steps_out: str | None = None) -> None:
    model = harness.load_model("efficientnet_lite0")
    data = harness.load_dataset("samples")
    x = harness.preprocess([s.load() for s in data], model.harness_info)
    target = harness.resolve_targets(model, x, [s.label for s in data], data.ids,
                                     mode="predicted")
    results, means = {}, {}
    for label, (order, normalisation) in SETTINGS.items():
        results[label] = []
        for method, params in METHODS.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = model_randomization(model, method, x, target, method_params=params,
                                             measures=MEASURES, order=order,
                                             map_normalisation=normalisation, ids=data.ids,
                                             batch_size=6)
            results[label].append(result)
            table = result.table()
            for measure in MEASURES:
                rows = table[table["measure"] == measure].groupby("step")["value"].mean()
                means[f"{label}/{method}/{measure}"] = {
                    "blocks": list(result.blocks),
                    "mean_per_step": [round(float(v), 3) for v in rows]}
    convention_comparison(results, out, measures=MEASURES)
    text = json.dumps(means, indent=1)
    if steps_out:
        Path(steps_out).write_text(text)
    print(text)
    print(f"wrote {Path(out)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
