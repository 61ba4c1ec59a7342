"""Max-Sensitivity: our batched version against a per-sample loop on the same work.

Both compute Max-Sensitivity (Yeh et al. 2019) of the same method on the same images with the
SAME perturbations (``draw_perturbations`` with the same seed and image keys):

  (a) ``harness.metrics.max_sensitivity``: the (image, sample) pairs of all images stacked into
      chunks of ``batch_size`` perturbed inputs, one ``saliency`` call per chunk;
  (b) a per-sample loop, the shape of the reference code (``get_exp_sens``) and of Quantus'
      per-step explain calls with one image: one ``saliency`` call per perturbed input.

The values of (a) and (b) are compared (max abs difference printed) and the timing ratio (b)/(a)
is printed, each the best of ``--repeats`` alternating runs. Usage:

    .venv/bin/python benchmarks/sensitivity.py [--images 4] [--samples 16] [--method vanilla]
        [--model efficientnet_lite0] [--batch-size N] [--device cpu] [--repeats 2]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import harness
from harness import metrics
from harness.metrics.robustness import default_batch_size, draw_perturbations


def per_sample_loop(model, method, x, target, n_samples, radius, seed) -> torch.Tensor:
    """Max-Sensitivity with one method call per perturbed input (the reference's loop)."""
    values = []
    for i in range(x.shape[0]):
        original = harness.saliency(method, model, x[i:i + 1], target[i:i + 1]).double()
        deltas = draw_perturbations(x[i], n_samples, radius=radius, seed=seed, key=i,
                                    pixel_std=model.harness_info.std)  # the default pixel units
        worst = -float("inf")
        for j in range(n_samples):
            perturbed = harness.saliency(method, model, x[i:i + 1] + deltas[j:j + 1],
                                         target[i:i + 1]).double()
            worst = max(worst, float((perturbed - original).norm() / original.norm()))
        values.append(worst)
    return torch.tensor(values, dtype=torch.float64)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--method", default="vanilla")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--radius", type=float, default=0.2)
    args = parser.parse_args()

    device = torch.device(args.device)
    model = harness.load_model(args.model).to(device)
    names = ["chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "grace_hopper"]
    data = harness.load_dataset("samples", names=(names * args.images)[: args.images])
    x = harness.preprocess([s.load() for s in data], model.harness_info, device=device)
    target = harness.resolve_targets(model, x, [None] * len(data), data.ids)
    batch_size = args.batch_size or default_batch_size(device)
    calls = args.images * (args.samples + 1)

    def batched():
        return metrics.max_sensitivity(model, args.method, x, target, n_samples=args.samples,
                                       radius=args.radius, batch_size=batch_size).values

    def looped():
        return per_sample_loop(model, args.method, x, target, args.samples, args.radius, 0)

    batched()  # warm-up (allocator, oneDNN primitives)
    best_batched = best_loop = float("inf")
    for _ in range(args.repeats):
        seconds, ours = timed(batched, device)
        best_batched = min(best_batched, seconds)
        seconds, reference = timed(looped, device)
        best_loop = min(best_loop, seconds)
    difference = float((ours.cpu() - reference).abs().max())
    print(f"device {device} ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model {args.model}, method {args.method}, {args.images} images x {args.samples} "
          f"samples (+1 clean map each) = {calls} maps, radius {args.radius}")
    print(f"(a) batched max_sensitivity, batch_size {batch_size}: {best_batched:.2f} s "
          f"({calls / best_batched:.1f} maps/s)")
    print(f"(b) per-sample loop, one call per input:   {best_loop:.2f} s "
          f"({calls / best_loop:.1f} maps/s)")
    print(f"ratio (b)/(a): {best_loop / best_batched:.2f}x; values agree to {difference:.1e}")


if __name__ == "__main__":
    main()
