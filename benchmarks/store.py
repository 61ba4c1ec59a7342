"""The record store at paper scale: a synthetic run of 50,000 images x 5 methods x 2 curve metrics
(225-point curves, as deletion and insertion at step 224 on 224 x 224 inputs), written through
the runner's shard writer by 4 ranks, compacted, then loaded and summarised as `harness table`
does. Prints the size on disk (shards, then the compacted store) and the times.

    .venv/bin/python benchmarks/store.py                  # the paper-scale figures
    .venv/bin/python benchmarks/store.py --images 500     # quick
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.store import ShardWriter, compact, load_frame
from harness.store import shard_path as shard_paths


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write(folder: Path, images: int, methods: int, points: int, ranks: int, unit: int) -> None:
    rng = np.random.default_rng(0)
    writers = [ShardWriter(shard_paths(folder, rank)) for rank in range(ranks)]
    batches = range(0, images, unit)
    position = 0
    for start in batches:
        ids = [f"val/{i:05d}" for i in range(start, min(start + unit, images))]
        for method in range(methods):
            records = []
            for metric in ("deletion", "insertion"):
                curves = np.sort(rng.random((len(ids), points), dtype=np.float32), axis=1)
                if metric == "deletion":
                    curves = curves[:, ::-1]
                for image_id, curve in zip(ids, curves, strict=True):
                    area = float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / (points - 1))
                    records.append({"image_id": image_id, "method": f"method{method}",
                                    "metric": metric, "target": int(rng.integers(1000)),
                                    "value": area, "curve": curve.tolist(),
                                    "target_source": "predicted"})
            writers[position % ranks].append(records)
            position += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--methods", type=int, default=5)
    parser.add_argument("--points", type=int, default=225)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--unit", type=int, default=64, help="images per work unit")
    parser.add_argument("--folder", default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="harness-store-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        write(folder, args.images, args.methods, args.points, args.ranks, args.unit)
        wrote = time.perf_counter() - began
        shards = folder_size(folder)
        began = time.perf_counter()
        compact(folder)
        compacted = time.perf_counter() - began
        store = folder_size(folder)
        began = time.perf_counter()
        frame = load_frame(folder, curves=False)
        from harness.report import summarize

        summary = summarize(frame, n_resamples=10_000)
        table = time.perf_counter() - began
        began = time.perf_counter()
        with_curves = load_frame(folder, curves=True)
        curves = time.perf_counter() - began
        records = args.images * args.methods * 2
        print(f"{records:,} records ({args.images:,} images x {args.methods} methods x 2 metrics, "
              f"{args.points}-point curves), {args.ranks} rank shards")
        print(f"write-ahead shards: {shards / 1e9:.3f} GB, written in {wrote:.1f} s")
        print(f"records.parquet: {store / 1e9:.3f} GB, compacted in {compacted:.1f} s")
        print(f"load without curves + summarize (harness table): {table:.1f} s "
              f"({len(frame):,} rows, {len(summary)} table cells)")
        print(f"load with curves: {curves:.1f} s ({with_curves['curve'].notna().sum():,} curves)")
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
