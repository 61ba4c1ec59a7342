"""Draw docs/sanity_conventions.png: cascading model randomization of the quickstart's model and
photos under both map normalisations (the README's sanity-check figure).

    .venv/bin/python docs/sanity_conventions.py     # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import harness
from harness.sanity import model_randomization
from harness.sanity.figures import convention_comparison

METHODS = {"vanilla": {}, "smoothgrad": {"n": 15, "noise": 0.15, "seed": 0}, "gradcam": {},
           "sobel": {}}
MEASURES = ("spearman_abs", "ssim", "hog")


def main(out: str = "docs/sanity_conventions.png") -> None:
    model = harness.load_model("efficientnet_lite0")
    data = harness.load_dataset("samples")
    x = harness.preprocess([s.load() for s in data], model.harness_info)
    target = harness.resolve_targets(model, x, [s.label for s in data], data.ids,
                                     mode="predicted")
    results, means = {}, {}
    for convention in ("reference", "method"):
        results[convention] = []
        for method, params in METHODS.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = model_randomization(model, method, x, target, method_params=params,
                                             measures=MEASURES, map_normalisation=convention,
                                             ids=data.ids, batch_size=8)
            results[convention].append(result)
            table = result.table()
            for measure in MEASURES:
                rows = table[table["measure"] == measure].groupby("step")["value"].mean()
                means[f"{convention}/{method}/{measure}"] = [round(float(rows.iloc[0]), 3),
                                                             round(float(rows.iloc[-1]), 3)]
    convention_comparison(results, out, measures=MEASURES)
    print(json.dumps(means, indent=1))
    print(f"wrote {Path(out)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
