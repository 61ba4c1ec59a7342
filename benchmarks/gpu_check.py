"""The GPU path, measured in one prepared run (``benchmarks/gpu_check.sh OUT_DIR``, at most 8
minutes on one GPU), or on the CPU in ``--quick`` mode (tiny sizes; the tests run it so it cannot
rot).

Writes ``OUT_DIR/gpu_check.json`` and ``OUT_DIR/gpu_check.md`` with, on SqueezeNet 1.1 (random
weights: timing only) and vanilla maps:

- (a) the model's best pure inference throughput (batch sizes x NCHW/channels_last), images/s;
- (b) our deletion + insertion (every curve point scored, step ``--step``) in fp32 and in bf16
  autocast, scored images/s, and (b)/(a);
- (c) Quantus 0.6 PixelFlipping on the same deletion work on the same device (when Quantus is
  installed: ``pip install -e '.[bench]'``), and (b)/(c);
- the agreement of the AUCs computed on the device with those computed on the CPU (max |diff|;
  bf16 against fp32 too);
- peak device memory of (b);
- the runner end to end (``harness.experiment.run``: decoding in DataLoader workers, maps,
  deletion + insertion, records) on a synthetic folder of ImageNet-sized JPEGs, images/s, and
  the resulting estimate for 50,000 images (ImageNet validation) on this device.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import causal_metrics  # noqa: E402
import runner as runner_benchmark  # noqa: E402

import harness  # noqa: E402
from harness import metrics  # noqa: E402
from harness.config import from_dict  # noqa: E402
from harness.runner import run  # noqa: E402

FULL = {"batch_sizes": [32, 64, 128, 256, 512], "images": 64, "step": 224, "quantus_images": 16,
        "runner_images": 256, "workers": 8, "batch_size": 64}
QUICK = {"batch_sizes": [2, 4], "images": 2, "step": 12544, "quantus_images": 2,
         "runner_images": 4, "workers": 0, "batch_size": 2}


def scored_rate(model, x, maps, target, step: int, device, amp: str | None) -> tuple[float, dict]:
    causal_metrics.sync(device)
    began = time.perf_counter()
    deletion = metrics.deletion(model, x, maps, target, step=step, amp_dtype=amp)
    insertion = metrics.insertion(model, x, maps, target, step=step, amp_dtype=amp)
    causal_metrics.sync(device)
    seconds = time.perf_counter() - began
    scored = deletion.curves.numel() + insertion.curves.numel()
    return scored / seconds, {"deletion": deletion, "insertion": insertion}


def check(args) -> dict:
    sizes = QUICK if args.quick else FULL
    device = torch.device(args.device)
    step = args.step or sizes["step"]
    model = harness.load_model("squeezenet1_1", weights="random", device=str(device))
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
                    "torch": torch.__version__, "step": step, "quick": args.quick}
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    rates = causal_metrics.pure_throughput(model, device, sizes["batch_sizes"], layouts,
                                           min_images=4 * max(sizes["batch_sizes"]))
    (batch, layout), pure = max(rates.items(), key=lambda item: item[1])
    report["a_model_images_per_s"] = pure
    report["a_setting"] = {"batch_size": batch, "layout": layout}
    x = torch.randn(sizes["images"], 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    target = model(x).argmax(1)
    maps = harness.methods.saliency_batched("vanilla", model, x, target, batch_size=8)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fp32, results = scored_rate(model, x, maps, target, step, device, None)
    if device.type == "cuda":
        report["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    bf16, results_bf16 = scored_rate(model, x, maps, target, step, device, "bf16")
    report["b_fp32_scored_per_s"], report["b_bf16_scored_per_s"] = fp32, bf16
    report["b_over_a_fp32"], report["b_over_a_bf16"] = fp32 / pure, bf16 / pure
    agreement = {}
    for name, result in results.items():
        agreement[f"{name}_bf16_vs_fp32"] = float((results_bf16[name].auc - result.auc)
                                                  .abs().max())
    if device.type != "cpu":
        cpu_model = harness.load_model("squeezenet1_1", weights="random")
        subset = slice(0, min(4, sizes["images"]))
        for name in ("deletion", "insertion"):
            on_cpu = getattr(metrics, name)(cpu_model, x[subset].cpu(), maps[subset].cpu(),
                                            target[subset].cpu(), step=step)
            agreement[f"{name}_device_vs_cpu"] = float(
                (results[name].auc[subset] - on_cpu.auc).abs().max())
    report["auc_agreement_max_abs"] = agreement
    try:
        quantus_x = x[:sizes["quantus_images"]]
        subset = slice(0, quantus_x.shape[0])
        quantus = causal_metrics.quantus_rates(model, quantus_x, maps[subset], target[subset],
                                               step, device, 64,
                                               results["deletion"].curves[subset])
        flipping = quantus["PixelFlipping"]
        ours, _ = scored_rate(model, quantus_x, maps[subset], target[subset], step, device, None)
        report["c_quantus_pixelflipping_scored_per_s"] = flipping["rate"]
        report["b_over_c"] = ours / flipping["rate"]  # both in scored images/s
        report["quantus_curve_max_diff"] = flipping["max_diff"]
    except ImportError:
        report["c_quantus_pixelflipping_scored_per_s"] = None
        report["b_over_c"] = "Quantus not installed (pip install -e '.[bench]')"
    with tempfile.TemporaryDirectory() as temporary:
        root = runner_benchmark.synthetic_folder(Path(temporary) / "images",
                                                 sizes["runner_images"])
        raw = runner_benchmark.runner_raw(root, Path(temporary) / "run", step,
                                          sizes["batch_size"], sizes["workers"], str(device))
        began = time.perf_counter()
        records = sum(1 for _ in run(from_dict(raw), progress=False))
        seconds = time.perf_counter() - began
    rate = sizes["runner_images"] / seconds
    report["runner_images_per_s"] = rate
    report["runner_records"] = records
    report["estimate_50000_images_hours"] = 50_000 / rate / 3600
    return report


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['device']}", "",
             f"torch {report['torch']}, step {report['step']}"
             + (" (quick mode: tiny sizes, not a measurement)" if report["quick"] else ""), "",
             "| figure | value |", "|---|---|"]
    for key, value in report.items():
        if key in ("device", "torch", "step", "quick"):
            continue
        text = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
        lines.append(f"| {key} | {text} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    parser.add_argument("--step", type=int, default=None)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = check(args)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
