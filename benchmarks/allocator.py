"""The C allocator's settings against the model's own passes, in fresh processes.

Each of ``--processes`` fresh subprocesses per setting loads the model, computes the harness's
setup (vanilla maps of 4 sample photos, as ``benchmarks/metrics_limit.py`` does before a metric)
and then times forward + backward to the input (channels_last, the vanilla gradient's passes) at
each batch size, best of 2 rounds over 64 images. Settings: ``default`` (the C library's own)
and ``tuned`` (``harness.tune_cpu_allocator()``, what the harness's runs on the CPU use). Prints
the images/s per setting and batch size (min / median / max over the processes) and the largest
peak resident memory of its processes, and writes JSON.

    .venv/bin/python benchmarks/allocator.py [--processes 4] [--sizes 4,8,16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MARK = "ALLOCATOR_JSON "


def child(sizes: list[int]) -> dict:
    import torch

    import harness

    applied = harness.tune_cpu_allocator()
    model = harness.load_model("efficientnet_lite0")
    names = ["chelsea", "coffee", "rocket", "astronaut"]
    data = harness.load_dataset("samples", names=names)
    x = harness.preprocess([s.load() for s in data], model.harness_info)
    target = harness.resolve_targets(model, x, [None] * len(names), list(data.ids))
    harness.saliency("vanilla", model, x, target)  # the setup a metric's process has done
    rates = {}
    for _ in range(2):
        for batch_size in sizes:
            inputs = x.repeat(batch_size // len(names) + 1, 1, 1, 1)[:batch_size]
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            classes = target.repeat(batch_size // len(names) + 1)[:batch_size]
            passes = max(2, 64 // batch_size)

            def one_pass(inputs=inputs, classes=classes):
                leaf = inputs.detach().clone().requires_grad_(True)
                scores = model(leaf).gather(1, classes[:, None]).sum()
                torch.autograd.grad(scores, leaf)

            one_pass()  # warm-up
            began = time.perf_counter()
            for _ in range(passes):
                one_pass()
            rate = passes * batch_size / (time.perf_counter() - began)
            rates[batch_size] = max(rates.get(batch_size, 0.0), rate)
    peak = next((int(line.split()[1]) / 1024**2 for line in
                 Path("/proc/self/status").read_text().splitlines()
                 if line.startswith("VmHWM:")), None) if Path("/proc/self/status").exists() \
        else None
    return {"applied": applied, "rates": rates, "rss_peak_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--sizes", default="4,8,16")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        print(MARK + json.dumps(child(sizes)), flush=True)
        return
    runs: dict[str, list[dict]] = {"default": [], "tuned": []}
    for _ in range(args.processes):  # the settings interleaved, one fresh process each
        for setting in runs:
            env = {**os.environ, "HARNESS_CPU_ALLOCATOR": setting, "PYTHONWARNINGS": "ignore"}
            done = subprocess.run([sys.executable, __file__, "--child", "--sizes", args.sizes],
                                  capture_output=True, text=True, env=env, timeout=1200)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARK)), None)
            if line is None:
                raise SystemExit(done.stderr[-2000:])
            runs[setting].append(json.loads(line[len(MARK):]))
    print("| allocator | " + " | ".join(f"batch {s} (images/s: min / median / max)"
                                         for s in sizes) + " | peak RSS GB (max) |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for setting, results in runs.items():
        cells = []
        for s in sizes:
            rates = [r["rates"][str(s)] for r in results]
            cells.append(f"{min(rates):.1f} / {statistics.median(rates):.1f} / {max(rates):.1f}")
        peaks = [r["rss_peak_gb"] for r in results if r.get("rss_peak_gb") is not None]
        peak = f"{max(peaks):.2f}" if peaks else "-"
        print(f"| {setting} | " + " | ".join(cells) + f" | {peak} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": sizes, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
