"""Maps per second of the attention methods against Grad-CAM and vanilla gradient on one ViT.

Every method explains the same batch of images (the offline samples, repeated) on the same model
(default: timm's DeiT-Tiny with random weights: timing does not depend on the weights), through
``harness.saliency`` as the runner calls it; a plain forward (``inference_mode``) and a forward +
backward to the input are timed beside them as yardsticks. Each is run ``--repeats`` times in a
rotating order after one warm-up call; the best wall time is kept (the machine is shared). Prints
maps per second, the ratio to Grad-CAM and to vanilla, and writes everything to ``--out`` (JSON).
Usage:

    .venv/bin/python benchmarks/attention_methods.py [--model timm:deit_tiny_patch16_224]
        [--images 8] [--repeats 3] [--device cpu] [--out attention_methods.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date

import torch

import harness

METHODS = ["vanilla", "gradcam", "gradcam:GradCAM", "raw_attention", "rollout",
           "generic_attention", "attention_gradcam"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def setup(args):
    model = harness.load_model(args.model, weights=args.weights, device=args.device)
    data = harness.load_dataset("samples")  # 6 photos, repeated up to --images
    x = harness.preprocess([s.load() for s in data], model.harness_info, device=args.device)
    x = x.repeat((args.images + len(data) - 1) // len(data), 1, 1, 1)[:args.images]
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    return model, x, target


def workloads(model, x, target) -> dict:
    def forward():
        with torch.inference_mode():
            model(x)

    def forward_backward():
        inputs = x.clone().requires_grad_(True)
        with torch.enable_grad():
            score = model(inputs).gather(1, target[:, None]).sum()
            torch.autograd.grad(score, inputs)

    runs = {"forward (yardstick)": forward, "forward + backward (yardstick)": forward_backward}
    for name in METHODS:
        runs[name] = lambda name=name: harness.saliency(name, model, x, target)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="timm:deit_tiny_patch16_224")
    parser.add_argument("--weights", default="random", help="timing only: random is fine")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="attention_methods.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, x, target = setup(args)
    runs = workloads(model, x, target)
    best = {name: float("inf") for name in runs}
    cpu = dict.fromkeys(runs, float("inf"))
    for run in runs.values():  # warm-up: allocator, kernels, lazy imports
        run()
    names = list(runs)
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order
            sync(device)
            began, began_cpu = time.perf_counter(), time.process_time()
            runs[name]()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - began)
            cpu[name] = min(cpu[name], time.process_time() - began_cpu)
    n_images = x.shape[0]
    info = model.harness_info
    print(f"{args.model} ({args.weights} weights, {info.input_size}x{info.input_size}, patch "
          f"{info.patch_size}, {len(info.attention_layers)} attention layers), {n_images} images "
          f"per call, device {args.device}, best of {args.repeats}")
    print(f"  {'method':32s} {'maps/s':>8s} {'s/call':>8s} {'x Grad-CAM':>11s} {'x vanilla':>10s}")
    results = {}
    for name in runs:
        rate = n_images / best[name]
        results[name] = {"seconds": best[name], "cpu_seconds": cpu[name], "maps_per_s": rate,
                         "speed_vs_gradcam": best["gradcam"] / best[name],
                         "speed_vs_vanilla": best["vanilla"] / best[name]}
        row = results[name]
        print(f"  {name:32s} {rate:8.2f} {best[name]:8.3f} {row['speed_vs_gradcam']:11.2f} "
              f"{row['speed_vs_vanilla']:10.2f}")
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}")
    print(f"  {machine}")
    report = {"model": args.model, "weights": args.weights, "images": n_images,
              "device": args.device, "repeats": args.repeats, "machine": machine,
              "date": date.today().isoformat(), "results": results}
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
