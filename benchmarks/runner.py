"""The runner's overhead: end-to-end images/s of ``harness run`` against the metric engine alone
on the same work, measured in one run (alternating, best of ``--repeats``).

Work: SqueezeNet 1.1 (random weights: timing only), ``--images`` synthetic ImageNet-sized JPEGs
(500 x 375) in an image folder, vanilla gradient maps, deletion and insertion at ``--step``.

- runner: ``harness.experiment.run`` on the folder (decode, resize, normalise, targets, maps,
  both metrics, records fsynced per unit), tracking off;
- engine: ``harness.metrics.deletion`` and ``insertion`` on the same preprocessed inputs, maps and
  targets (prepared once, outside the timing).

Goal: runner overhead (runner time / engine time - 1) <= 10%.

    .venv/bin/python benchmarks/runner.py [--images 16] [--step 224] [--workers 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import harness
from harness import metrics
from harness.config import from_dict
from harness.runner import run


def synthetic_folder(folder: Path, images: int, seed: int = 0) -> Path:
    """``images`` random 500 x 375 JPEGs (ImageNet's typical size) in a flat folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(images):
        pixels = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{index:05d}.jpg", quality=90)
    return folder


def runner_raw(root: Path, output: Path, step: int, batch_size: int, workers: int,
               device: str) -> dict:
    return {"name": "runner-benchmark", "device": device, "batch_size": batch_size,
            "model": {"name": "squeezenet1_1", "weights": "random"},
            "data": {"name": "imagefolder", "options": {"root": str(root)}, "workers": workers},
            "methods": ["vanilla"], "figure_images": 0, "output_dir": str(output),
            "metrics": {"deletion": {"step": step}, "insertion": {"step": step}},
            "tracking": {"enabled": False}}


def time_runner(raw: dict) -> float:
    config = from_dict(raw)
    began = time.perf_counter()
    records = sum(1 for _ in run(config, progress=False))
    seconds = time.perf_counter() - began
    assert records == 2 * len(list(Path(raw["data"]["options"]["root"]).iterdir()))
    return seconds


def time_engine(model, x, maps, target, step: int, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    began = time.perf_counter()
    metrics.deletion(model, x, maps, target, step=step)
    metrics.insertion(model, x, maps, target, step=step)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--step", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        root = synthetic_folder(Path(temporary) / "images", args.images)
        model = harness.load_model("squeezenet1_1", weights="random", device=args.device)
        data = harness.load_dataset("imagefolder", root=str(root))
        x = harness.preprocess([s.load() for s in data], model.harness_info, device=args.device)
        target = harness.resolve_targets(model, x, [None] * len(data), data.ids,
                                         mode="predicted")
        maps = harness.methods.saliency_batched("vanilla", model, x, target,
                                                batch_size=args.batch_size)
        best_runner = best_engine = float("inf")
        for repeat in range(args.repeats):
            raw = runner_raw(root, Path(temporary) / f"run{repeat}", args.step, args.batch_size,
                             args.workers, args.device)
            best_runner = min(best_runner, time_runner(raw))
            best_engine = min(best_engine, time_engine(model, x, maps, target, args.step,
                                                       args.device))
    overhead = best_runner / best_engine - 1
    print(f"{args.images} images, step {args.step}, batch {args.batch_size}, workers "
          f"{args.workers}, {args.device}, {torch.get_num_threads()} threads")
    print(f"runner end to end: {args.images / best_runner:.2f} images/s ({best_runner:.1f} s)")
    print(f"engine alone:      {args.images / best_engine:.2f} images/s ({best_engine:.1f} s)")
    print(f"runner overhead:   {100 * overhead:.1f}% (goal <= 10%)")


if __name__ == "__main__":
    main()
