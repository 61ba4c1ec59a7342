"""Deletion/insertion throughput against the model's own best inference speed and Quantus 0.6.

Measured side by side in ONE run on the same model (SqueezeNet 1.1, random weights: timing only)
and the same saliency maps:

  (a) the model's best pure batched inference throughput over batch sizes and memory layouts
      (NCHW contiguous and channels_last, set explicitly), images/s;
  (b) harness deletion + insertion at default settings, scored images/s;
  (c) Quantus 0.6 PixelFlipping and RegionPerturbation on the same images and maps, scored
      images/s, at Quantus' default batch_size (64) and at the engine's (8 on the CPU); with
      fewer images than a batch both are the same run. Each with the model as loaded (Quantus'
      numpy-made inputs are NCHW tensors, so it runs NCHW) and with the model converted to
      channels_last (the convolutions then run channels_last: the best Quantus can be handed).
      PixelFlipping does exactly our deletion work (``step`` whole pixels per step into zeros)
      and its curves are checked against ours.

(a) is timed sustained over as many images as (b) scores, alternating with (b) (best of
``--repeats``); the sweep over batch sizes and layouts that picks (a)'s setting uses short bursts.

Prints (b)/(a), (b)/(c), peak memory, device and versions. Usage:

    .venv/bin/python benchmarks/causal_metrics.py [--images 8] [--device cpu] [--step 224]

Quantus is in the benchmark-only extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import time
import warnings

import numpy as np
import torch

import harness
from harness import metrics


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pure_throughput(model, device, batch_sizes, layouts, min_images: int) -> dict:
    """images/s of ``model(x)`` under inference_mode for each (batch size, layout)."""
    rates = {}
    for layout_name, layout in layouts.items():
        for batch_size in batch_sizes:
            x = torch.randn(batch_size, 3, 224, 224, device=device)
            x = x.contiguous(memory_format=layout)
            repeats = max(2, -(-min_images // batch_size))
            best = 0.0
            with torch.inference_mode():
                model(x)
                for _ in range(3):  # best of 3 timed rounds of >= min_images images
                    sync(device)
                    began = time.perf_counter()
                    for _ in range(repeats):
                        model(x)
                    sync(device)
                    best = max(best, repeats * batch_size / (time.perf_counter() - began))
            rates[(batch_size, layout_name)] = best
    return rates


def harness_once(model, x, saliency, target, step: int, device
                 ) -> tuple[float, int, dict, torch.Tensor]:
    """One timed deletion + insertion run at default engine settings (sort, substrate and all
    scoring included): (seconds, scored images, mean AUCs, deletion curves ``[N, n_steps + 1]``)."""
    sync(device)
    began = time.perf_counter()
    deletion = metrics.deletion(model, x, saliency, target, step=step)
    insertion = metrics.insertion(model, x, saliency, target, step=step)
    sync(device)
    seconds = time.perf_counter() - began
    aucs = {"deletion": float(deletion.auc.mean()), "insertion": float(insertion.auc.mean())}
    return seconds, deletion.curves.numel() + insertion.curves.numel(), aucs, deletion.curves


def sustained_pure(model, device, batch_size: int, layout, n_images: int) -> float:
    """images/s of pure inference at one setting over ``n_images`` images (as many as (b))."""
    x = torch.randn(batch_size, 3, 224, 224, device=device).contiguous(memory_format=layout)
    repeats = max(1, n_images // batch_size)
    with torch.inference_mode():
        model(x)
        sync(device)
        began = time.perf_counter()
        for _ in range(repeats):
            model(x)
        sync(device)
    return repeats * batch_size / (time.perf_counter() - began)


def same_inputs(a_np: np.ndarray, saliency: torch.Tensor, step: int, channels: int
                ) -> np.ndarray:
    """``[N, n_steps]`` bool: whether after step k (1..n_steps) Quantus' order (np.argsort of the
    negated maps broadcast over channels; not stable) has changed exactly the pixels ours has, so
    that both score the same input there. Runs of tied saliency values (exact zeros, repeated
    gradients) that straddle a step boundary are ordered differently by the two tools."""
    n_images = a_np.shape[0]
    features = np.broadcast_to(a_np, (n_images, channels, *a_np.shape[2:])).reshape(n_images, -1)
    quantus_rank = np.empty_like(features, dtype=np.int64)
    np.put_along_axis(quantus_rank, np.argsort(-features, axis=1),
                      np.arange(features.shape[1])[None].repeat(n_images, 0), axis=1)
    quantus_step = quantus_rank // (step * channels)  # the step (0-based) that changes feature f
    our_step = np.tile(metrics.causal.pixel_ranks(saliency.cpu()).numpy() // step, (1, channels))
    n_steps = -(-features.shape[1] // (step * channels))
    # after k steps the changed sets differ iff some feature is changed at step index < k by one
    # tool and >= k by the other: k in (min, max] of its two step indices
    low, high = np.minimum(quantus_step, our_step), np.maximum(quantus_step, our_step)
    differs = np.zeros((n_images, n_steps + 2), dtype=np.int64)
    rows = np.arange(n_images)[:, None].repeat(features.shape[1], 1)
    np.add.at(differs, (rows, low + 1), (low != high).astype(np.int64))
    np.add.at(differs, (rows, high + 1), -(low != high).astype(np.int64))
    return np.cumsum(differs, axis=1)[:, 1:n_steps + 1] == 0


def quantus_rates(model, x, saliency, target, step: int, device, batch_size: int,
                  deletion_curves: torch.Tensor) -> dict:
    """Quantus on the same work as our deletion: the [N, 1, H, W] maps broadcast over channels,
    so ``features_in_step = step * C`` flips ``step`` whole pixels per step, into zeros (our
    default ``zero`` substrate; Quantus' "black" would be each image's minimum). Its curve then
    equals our deletion curve without the unperturbed point 0 (up to float rounding and argsort
    tie order), which is checked and printed at every point where both changed the same pixels.

    Quantus 0.6 asserts that ``features_in_step`` divides H * W, but steps over all C * H * W
    broadcast features, so whole-pixel steps (3 * 224 features; 3 does not divide 224 * 224) fail
    its check although its loop handles them. The check is lifted for this call only."""
    import quantus
    from quantus.metrics.faithfulness import pixel_flipping as pixel_flipping_module

    x_np = x.cpu().numpy()
    a_np = saliency.cpu().numpy()[:, None]
    y_np = target.cpu().numpy()
    results = {}
    pixel_flipping = quantus.PixelFlipping(features_in_step=step * x.shape[1],
                                           perturb_baseline=0.0, normalise=False, abs=False,
                                           disable_warnings=True, display_progressbar=False)
    check = pixel_flipping_module.asserts.assert_features_in_step
    pixel_flipping_module.asserts.assert_features_in_step = lambda **_: None
    try:
        began = time.perf_counter()
        curves = pixel_flipping(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np,
                                device=str(device), batch_size=batch_size, softmax=True)
        seconds = time.perf_counter() - began
    finally:
        pixel_flipping_module.asserts.assert_features_in_step = check
    curves = np.asarray(curves)
    ours = deletion_curves[:, 1:].numpy()
    same = same_inputs(a_np, saliency, step, x.shape[1])
    results["PixelFlipping"] = {
        "seconds": seconds, "scored": curves.size, "rate": curves.size / seconds,
        "same_points": int(same.sum()), "points": same.size,
        "max_diff": float(np.abs(curves - ours)[same].max()) if same.any() else None,
    }
    region = quantus.RegionPerturbation(patch_size=8, regions_evaluation=100, order="morf",
                                        perturb_baseline=0.0, normalise=False, abs=False,
                                        disable_warnings=True, display_progressbar=False)
    began = time.perf_counter()
    region_curves = region(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np,
                           device=str(device), batch_size=batch_size, softmax=True)
    seconds = time.perf_counter() - began
    scored = sum(len(c) + 1 for c in region_curves)  # + the unperturbed score per image
    results["RegionPerturbation"] = {"seconds": seconds, "scored": scored,
                                     "rate": scored / seconds}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--step", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of (b); best is kept")
    parser.add_argument("--skip-quantus", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")

    model = harness.load_model("squeezenet1_1", weights="random", device=device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 224, 224, generator=generator).to(device).contiguous()
    target = torch.randint(0, 1000, (args.images,), generator=generator).to(device)
    saliency = harness.methods.saliency_batched("vanilla", model, x, target, batch_size=8)

    metrics.deletion(model, x[:1], saliency[:1], target[:1], step=224 * 224)  # warm-up
    _, scored, aucs, deletion_curves = harness_once(model, x, saliency, target, args.step, device)
    rss_b = peak_rss_gb()
    gpu_peak = torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else None

    batch_sizes = [1, 2, 4, 8, 16, 32, 64] if device.type == "cpu" else [64, 128, 256, 512]
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    rates_a = pure_throughput(model, device, batch_sizes, layouts,
                              min_images=128 if device.type == "cpu" else 4096)
    (best_bs, best_layout), burst_a = max(rates_a.items(), key=lambda item: item[1])
    # sustained, interleaved: (a) over as many images as (b) scores, alternating with (b)
    rate_a, rate_b = 0.0, 0.0
    for _ in range(args.repeats):
        rate_a = max(rate_a, sustained_pure(model, device, best_bs, layouts[best_layout], scored))
        seconds, scored, aucs, deletion_curves = harness_once(model, x, saliency, target,
                                                              args.step, device)
        rate_b = max(rate_b, scored / seconds)
    seconds_b = scored / rate_b

    print(f"device: {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads)" if device.type == "cpu" else
          f"device: {torch.cuda.get_device_name(device)}")
    print(f"torch {torch.__version__}, numpy {np.__version__}, harness {harness.__version__}")
    print(f"work: {args.images} images 224x224, step {args.step} "
          f"({metrics.causal.n_steps_for(224, 224, args.step) + 1} points per curve)")
    print("\n(a) pure inference, images/s:")
    for (batch_size, layout), rate in sorted(rates_a.items()):
        print(f"    batch {batch_size:4d} {layout:14s} {rate:9.1f}")
    print(f"    best in short bursts: {burst_a:.1f} (batch {best_bs}, {best_layout}); sustained "
          f"over {scored} images, best of {args.repeats}: {rate_a:.1f}")
    print(f"(b) harness deletion+insertion: {rate_b:.1f} scored images/s "
          f"({seconds_b:.1f} s; mean AUC del {aucs['deletion']:.4f} ins {aucs['insertion']:.4f})")
    print(f"    peak RSS after (b): {rss_b:.2f} GB" +
          (f"; peak GPU memory {gpu_peak:.2f} GB" if gpu_peak is not None else ""))
    print(f"(b)/(a) = {rate_b / rate_a:.3f}")
    if not args.skip_quantus:
        engine_batch = metrics.causal.default_batch_size(device)
        settings = [64] if min(64, args.images) == min(engine_batch, args.images) \
            else [64, engine_batch]  # with fewer images than a batch both are the same run
        # Quantus builds its inputs in numpy: C-contiguous arrays become NCHW tensors, so with the
        # model as loaded it runs in the NCHW layout; a model converted to channels_last (weights)
        # makes the convolutions use channels_last anyway, which is the best Quantus can be handed
        tuned = copy.deepcopy(model).to(memory_format=torch.channels_last)
        models = {"model as loaded": model, "model converted to channels_last": tuned}
        for quantus_batch in settings:
            effective = min(quantus_batch, args.images)
            label = "its default batch_size=64" if quantus_batch == 64 else \
                f"batch_size={quantus_batch}, the engine's"
            for model_label, quantus_model in models.items():
                results = quantus_rates(quantus_model, x, saliency, target, args.step, device,
                                        quantus_batch, deletion_curves)
                for name, result in results.items():
                    print(f"(c) Quantus 0.6 {name} ({model_label}; {label}; {effective} images "
                          f"per forward): {result['rate']:.1f} scored images/s "
                          f"({result['seconds']:.1f} s)" +
                          (f"; max |its curve - our deletion curve| {result['max_diff']:.1e} over"
                           f" the {result['same_points']}/{result['points']} points where both "
                           "changed the same pixels" if result.get("max_diff") is not None else ""))
                    print(f"    (b)/(c) = {rate_b / result['rate']:.2f}")
    print(f"peak RSS of the whole run: {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
