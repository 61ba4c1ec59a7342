"""ROAD's noisy linear imputation: our batched multigrid-CG solver against direct scipy solves.

Measured side by side in ONE run, interleaved system by system (so load drifts hit all alike),
on the same masks: the sample photos at 224 x 224 RGB (EfficientNet-Lite0's preprocessing), two
kinds of maps from the real model (Grad-CAM: smooth blobs; vanilla gradients: scattered pixels),
ROAD's masks (``harness.metrics.road``: min-max scaling, seeded tie-break map, int(H W p)) for
MoRF and LeRF at the reference percentages 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9:

  (a) ours: ``solve_linear`` (noise off) on all images of a map kind at once, as ``road`` runs
      it (no warm start), and warm-started from the previous percentage's solution (for the
      record: ``road`` does not, as this measured no gain);
  (b) the reference's method: its ``NoisyLinearImputer`` (lil_matrix assembly, one
      ``scipy.sparse.linalg.spsolve`` per image with the C channels as right-hand sides), as
      shipped verbatim by pytorch-grad-cam (``pip install grad-cam``; skipped if absent);
  (c) a lean direct solve: the same system assembled vectorised (written here from the
      definition) and one ``spsolve`` per image, C right-hand sides: scipy at its best.

The results must agree (max |difference| <= 1e-5, else exit status 1). Prints seconds, ms per
image-percentage (all channels), the ratios (b)/(a) and (c)/(a), threads and versions. Usage:

    .venv/bin/python benchmarks/road.py [--device cpu] [--images 6] [--threads 1]

On the CPU both sides run on one core by default (scipy's SuperLU is single-threaded; on a
shared, loaded machine torch's 2-thread kernels also wait on each other).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import scipy
import scipy.sparse as sparse
import torch
from scipy.sparse.linalg import spsolve

import harness
from harness.metrics.imputation import solve_linear
from harness.metrics.road import PERCENTAGES, ranking_scores, removal_mask, tie_break_map


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


EDGE, DIAGONAL = 1 / 6, 1 / 12  # the definition's weights, written here (not the solver's)
OFFSETS = [(dy, dx, DIAGONAL if dy and dx else EDGE)
           for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def lean_scipy(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Direct solve of one image ``[C, H, W]`` (float64) at ``removed`` ``[H, W]``: the system
    assembled with vectorised numpy from the definition (docs/faithfulness.md; nothing taken from
    the implementation under test), one ``spsolve`` for all channels."""
    channels, height, width = image.shape
    flat_removed = removed.ravel()
    unknowns = np.flatnonzero(flat_removed)
    variable = -np.ones(height * width, dtype=np.int64)
    variable[unknowns] = np.arange(len(unknowns))
    ys, xs = np.divmod(unknowns, width)
    flat = image.reshape(channels, -1)
    diagonal = np.zeros(len(unknowns))
    rhs = np.zeros((len(unknowns), channels))
    rows, cols, vals = [], [], []
    for dy, dx, weight in OFFSETS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        diagonal[inside] += weight
        equation = np.flatnonzero(inside)
        neighbour = ny[inside] * width + nx[inside]
        unknown = flat_removed[neighbour]
        rows.append(equation[unknown])
        cols.append(variable[neighbour[unknown]])
        vals.append(np.full(int(unknown.sum()), -weight))
        np.add.at(rhs, equation[~unknown], weight * flat[:, neighbour[~unknown]].T)
    rows.append(np.arange(len(unknowns)))
    cols.append(np.arange(len(unknowns)))
    vals.append(diagonal)
    matrix = sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                       np.concatenate(cols))),
                               shape=(len(unknowns), len(unknowns)))
    solution = spsolve(matrix, rhs).reshape(len(unknowns), channels)
    out = image.copy()
    out.reshape(channels, -1)[:, unknowns] = solution.T
    return out


def reference_imputer():
    try:
        from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    except ImportError:
        return None
    return NoisyLinearImputer(noise=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--orders", nargs="+", default=["morf", "lerf"])
    parser.add_argument("--maps", nargs="+", default=["gradcam", "vanilla"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: scipy's solve is single-threaded)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model = harness.load_model("efficientnet_lite0")
    data = harness.load_dataset("samples")
    samples = list(data)[: args.images]
    x = harness.preprocess([s.load() for s in samples], model.harness_info)
    target = harness.resolve_targets(model, x, [s.label for s in samples],
                                     [s.id for s in samples])
    maps = {name: harness.saliency(name, model, x, target).detach() for name in args.maps}
    x = x.to(device)
    x_np = x.double().cpu().numpy()
    reference = reference_imputer()
    height, width = x.shape[2:]

    seconds = {"ours": 0.0, "ours (warm start)": 0.0, "reference": 0.0, "lean scipy": 0.0}
    worst = {"reference": 0.0, "lean scipy": 0.0, "warm": 0.0}
    systems = 0
    solve_linear(x[:1], torch.rand(1, height, width, device=device) < 0.5)  # warm-up
    for name, saliency in maps.items():
        for order in args.orders:
            previous = None
            for p in PERCENTAGES:
                tie = tie_break_map(height, width, seed=0, order=order, percentage=p)
                removed = removal_mask(ranking_scores(saliency, tie), p, order).to(device)
                sync(device)
                began = time.perf_counter()
                ours = solve_linear(x, removed)
                sync(device)
                seconds["ours"] += time.perf_counter() - began
                began = time.perf_counter()
                warm = solve_linear(x, removed, initial=previous)
                sync(device)
                seconds["ours (warm start)"] += time.perf_counter() - began
                previous = warm
                worst["warm"] = max(worst["warm"], float((warm - ours).abs().max()))
                ours_np = ours.cpu().numpy()
                removed_np = removed.cpu().numpy()
                for i in range(x.shape[0]):
                    began = time.perf_counter()
                    lean = lean_scipy(x_np[i], removed_np[i])
                    seconds["lean scipy"] += time.perf_counter() - began
                    worst["lean scipy"] = max(worst["lean scipy"],
                                              float(np.abs(lean - ours_np[i]).max()))
                    if reference is not None:
                        image = x[i].float().cpu()
                        kept = torch.from_numpy(~removed_np[i]).float()
                        began = time.perf_counter()
                        theirs = reference(image, kept)
                        seconds["reference"] += time.perf_counter() - began
                        worst["reference"] = max(worst["reference"], float(
                            np.abs(theirs.double().numpy() - ours_np[i]).max()))
                systems += x.shape[0]
                print(f"{name:8s} {order} p={p}: removed {float(removed.float().mean()):.2f}",
                      flush=True)

    print(f"\n{systems} image-percentages ({x.shape[0]} images x {len(maps)} map kinds x "
          f"{len(args.orders)} orders x {len(PERCENTAGES)} percentages), "
          f"{x.shape[1]} x {height} x {width}, device {device}")
    for label, total in seconds.items():
        if label == "reference" and reference is None:
            print("reference   : pytorch-grad-cam not installed (pip install grad-cam): skipped")
            continue
        print(f"{label:18s}: {total:8.2f} s  {1000 * total / systems:8.1f} ms per image-percentage")
    ours = seconds["ours"]
    if reference is not None:
        print(f"speed-up vs the reference's method  : {seconds['reference'] / ours:.1f}x")
    print(f"speed-up vs a lean direct scipy solve: {seconds['lean scipy'] / ours:.1f}x")
    print(f"warm start vs none (ours)            : {ours / seconds['ours (warm start)']:.2f}x")
    print(f"max |ours - lean scipy| = {worst['lean scipy']:.2e}, |ours - reference (float32 "
          f"output)| = {worst['reference']:.2e}, |warm - ours| = {worst['warm']:.2e}")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), scipy "
          f"{scipy.__version__}, numpy {np.__version__}, python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}")
    agree = max(worst.values()) <= 1e-5
    print("results agree within 1e-5" if agree else "RESULTS DISAGREE (> 1e-5)")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
