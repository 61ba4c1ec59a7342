"""RISE: ``harness.saliency("rise", ...)`` against the reference implementation's loop.

The reference (eclique/RISE ``explanations.py``, as ``Saliency.ipynb`` runs it) generates the N
masks one by one with ``skimage.transform.resize`` in a Python loop into an ``[N, H, W]`` array,
then explains one image at a time: all N masked copies at once (``masks * x``, ``[N, C, H, W]``),
the model on chunks of ``gpu_batch``, and one matmul of the probabilities with the masks. Ours
builds the masks from the same seeded grids and shifts chunk by chunk on the model's device (two
interpolation matrices), masks all images of the batch per chunk, at most ``batch_size`` model
inputs per forward, under ``torch.inference_mode``.

Both run on the same model, images, grids and shifts (so the maps must agree; the largest
difference is printed) with the same forward batch size, each in its own process so that each
one's peak memory is its own, ``--repeats`` times alternating the order (best time kept). Prints
the times, their ratio (reference / ours), the peak RSS and the device. Usage:

    .venv/bin/python benchmarks/rise.py [--images 2] [--n-masks 1000] [--device cpu]
        [--model squeezenet1_1 --weights random] [--batch-size 100] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import harness
from harness.methods.rise import rise_grids, rise_masks


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_masks(grids: torch.Tensor, shifts: torch.Tensor, size, device) -> torch.Tensor:
    """``RISE.generate_masks``: the per-mask skimage loop (with the given grids and shifts)."""
    from skimage.transform import resize

    n_masks, s, _ = grids.shape
    cell_size = np.ceil(np.array(size) / s)
    up_size = (s + 1) * cell_size
    masks = np.empty((n_masks, *size))
    for i in range(n_masks):
        x, y = int(shifts[i, 0]), int(shifts[i, 1])
        masks[i, :, :] = resize(grids[i].numpy().astype("float32"), up_size, order=1,
                                mode="reflect", anti_aliasing=False)[x:x + size[0], y:y + size[1]]
    masks = masks.reshape(-1, 1, *size)
    return torch.from_numpy(masks).float().to(device)


def reference_explain(model, masks, image, p1: float, gpu_batch: int) -> torch.Tensor:
    """``RISE.forward`` for one image ``[1, C, H, W]`` -> ``[classes, H, W]``."""
    n_masks = masks.shape[0]
    _, _, height, width = image.size()
    stack = torch.mul(masks, image.data)
    p = []
    for i in range(0, n_masks, gpu_batch):
        p.append(model(stack[i:min(i + gpu_batch, n_masks)]))
    p = torch.cat(p)
    sal = torch.matmul(p.data.transpose(0, 1), masks.view(n_masks, height * width))
    return sal.view((p.size(1), height, width)) / n_masks / p1


def setup(args):
    device = torch.device(args.device)
    model = harness.load_model(args.model, weights=args.weights, device=args.device)
    names = ["chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "grace_hopper"]
    data = harness.load_dataset("samples", names=(names * 8)[:args.images])
    x = harness.preprocess([s.load() for s in data], model.harness_info, device=args.device)
    with torch.inference_mode():
        target = model(x).argmax(dim=1)
    return device, model, x, target


def child(args) -> None:
    device, model, x, target = setup(args)
    rss_loaded = peak_rss_gb()
    size = tuple(x.shape[2:])
    result = {"rss_loaded_gb": rss_loaded}
    with torch.inference_mode():  # warm-up forward (allocator, kernels)
        model(x[:1])
    sync(device)
    began, began_cpu = time.perf_counter(), time.process_time()
    if args.only == "reference":
        grids, shifts = rise_grids(args.n_masks, args.grid_size, args.p_keep, size, args.seed)
        masks = reference_masks(grids, shifts, size, device)
        sync(device)
        result["mask_seconds"] = time.perf_counter() - began
        black_box = nn.Sequential(model, nn.Softmax(dim=1)).eval()
        with torch.no_grad():
            maps = torch.stack([reference_explain(black_box, masks, x[i:i + 1], args.p_keep,
                                                  args.batch_size)[int(target[i])]
                                for i in range(x.shape[0])])
    else:
        # mask construction alone (timed apart; the method builds the same masks per chunk)
        grids, shifts = rise_grids(args.n_masks, args.grid_size, args.p_keep, size, args.seed)
        for start in range(0, args.n_masks, args.batch_size):
            rise_masks(grids[start:start + args.batch_size], shifts[start:start + args.batch_size],
                       size, device=device)
        sync(device)
        result["mask_seconds"] = time.perf_counter() - began
        began, began_cpu = time.perf_counter(), time.process_time()
        maps = harness.saliency("rise", model, x, target, n_masks=args.n_masks,
                                grid_size=args.grid_size, p_keep=args.p_keep, seed=args.seed,
                                batch_size=args.batch_size)
    sync(device)
    result["seconds"] = time.perf_counter() - began
    result["cpu_seconds"] = time.process_time() - began_cpu  # all threads of the process
    result["peak_rss_gb"] = peak_rss_gb()
    if device.type == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    torch.save(maps.cpu(), args.out + ".pt")
    Path(args.out + ".json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--n-masks", type=int, default=1000)
    parser.add_argument("--grid-size", type=int, default=7)
    parser.add_argument("--p-keep", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=100,
                        help="model inputs per forward, both (the reference's gpu_batch)")
    parser.add_argument("--model", default="squeezenet1_1")
    parser.add_argument("--weights", default="random", help="timing only: random is fine")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each, alternating the order; the best time is kept")
    parser.add_argument("--only", choices=["reference", "harness"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        child(args)
        return
    results, maps = {}, {}
    order = ["reference", "harness"]
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):  # alternating, best of the repeats
            for which in order if repeat % 2 == 0 else order[::-1]:
                out = str(Path(folder) / which)
                command = [sys.executable, __file__, *sys.argv[1:], "--only", which, "--out",
                           out]
                subprocess.run(command, check=True)
                result = json.loads(Path(out + ".json").read_text())
                if which not in results or result["seconds"] < results[which]["seconds"]:
                    results[which] = result
                maps[which] = torch.load(out + ".pt")
    reference, ours = results["reference"], results["harness"]
    difference = float((maps["reference"] - maps["harness"]).abs().max())
    scale = float(maps["reference"].abs().max())
    print(f"RISE, {args.images} images, N = {args.n_masks}, s = {args.grid_size}, "
          f"p = {args.p_keep}, {args.batch_size} model inputs per forward, {args.model} "
          f"({args.weights} weights), device {args.device}")
    print(f"  reference loop: {reference['seconds']:.2f} s (masks {reference['mask_seconds']:.2f}"
          f" s), peak RSS {reference['peak_rss_gb']:.2f} GB "
          f"(after loading {reference['rss_loaded_gb']:.2f})")
    print(f"  harness rise:   {ours['seconds']:.2f} s, peak RSS {ours['peak_rss_gb']:.2f} GB "
          f"(after loading {ours['rss_loaded_gb']:.2f}); its {args.n_masks} masks alone "
          f"{ours['mask_seconds']:.3f} s (reference {reference['mask_seconds']:.2f} s: "
          f"{reference['mask_seconds'] / ours['mask_seconds']:.0f}x)")
    if "peak_cuda_gb" in ours:
        print(f"  peak CUDA memory: reference {reference['peak_cuda_gb']:.2f} GB, harness "
              f"{ours['peak_cuda_gb']:.2f} GB")
    print(f"  CPU time (all threads; steadier than wall time on a shared machine): reference "
          f"{reference['cpu_seconds']:.1f} s, harness {ours['cpu_seconds']:.1f} s, ratio "
          f"{reference['cpu_seconds'] / ours['cpu_seconds']:.2f}x")
    print(f"  ratio reference / harness (wall): {reference['seconds'] / ours['seconds']:.2f}x; "
          f"largest map difference {difference:.2e} (maps up to {scale:.3e})")
    print(f"  {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
