"""Every registered metric that calls the model, against the model's own speed limit and the
peers, with its peak memory, in one run.

For each metric (its registry entry, default settings, the runner's call ``fn(unit, settings)``,
on EfficientNet-Lite0 and 4 sample photos at 224 x 224, vanilla-gradient maps computed before
the timing) one fresh subprocess measures:

- the passes it makes through the model, counted by hooks on the model: images forwarded
  without a backward, and images forwarded with a backward (the metrics that recompute maps);
- its time, and side by side (interleaved, best of ``--repeats``) the model-limit time for the
  same passes: the counted images at the best per-image speed of plain ``model(x)`` under
  ``torch.inference_mode`` and of forward + backward to the input (vanilla gradient's passes).
  A sweep over batch sizes and memory layouts (NCHW, channels_last; best of 3 interleaved
  rounds, in its own subprocess) picks each kind's three fastest settings; in the metric's
  process those three are timed once more and the fastest is the limit's setting there (which
  batch size wins shifts with the process's allocator state), timed beside the metric in each
  repeat. ``limit / metric`` is the fraction of
  the limit the metric reaches (1.0: at the limit);
- peak memory: the resident memory (RSS) the metric adds at its peak over what the process held
  before it (the peak is reset through ``/proc/self/clear_refs`` before the run and read from
  ``VmHWM``), and the absolute peak; on CUDA also ``torch.cuda.max_memory_allocated``. The
  model's own footprint is the same figure for its forward + backward at the harness's default
  backward chunk and at the limit's batch size;
- where a peer implements the metric (Quantus 0.6, ``pip install -e '.[bench]'``; Captum), the
  peer's time on the same work (same model, images, maps, method and sample counts; where the
  peer accepts a perturbation function it is handed the harness's own perturbations, so the
  values must agree, and the largest difference is printed) and its peak memory (in its own
  subprocess). The peers' batching is set to their best for this work (stated per peer).

Settings: each metric's defaults, except ``infidelity``'s 10,000 Gaussian draws per image, run
as 500 (the same per-draw work; ``--full`` runs the defaults). Every subprocess sets the C
allocator as the harness's runs on the CPU do (``harness.tune_cpu_allocator``; the metric, the
limit and the peers share it); ``--allocator default`` keeps the C library's settings. Prints one
table and writes JSON.

    .venv/bin/python benchmarks/metrics_limit.py [--device cpu] [--images 4] [--repeats 3]
        [--metrics max_sensitivity,irof] [--no-peers] [--full] [--allocator default]
        [--settings '{"max_sensitivity": {"batch_size": 16}}'] [--json out.json]
    .venv/bin/python benchmarks/metrics_limit.py --quick   # tiny sizes: a smoke test, no figure
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402
from harness.methods import saliency_batched  # noqa: E402
from harness.metrics import METRICS, Unit, get_metric  # noqa: E402
from harness.metrics.neighbourhood import default_batch_size as default_backward_chunk  # noqa: E402
from harness.settings import check  # noqa: E402

NAMES = ["chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "grace_hopper"]
MARK = "METRICS_LIMIT_JSON "
# benchmark-scale settings (the same per-pass work as the defaults, fewer repetitions of it)
SCALED = {"infidelity": {"n_perturbations": 500}}
QUICK = {"deletion": {"step": 512}, "insertion": {"step": 512}, "morf": {"step": 512},
         "lerf": {"step": 512}, "abpc": {"step": 512}, "infidelity": {"n_perturbations": 6},
         "faithfulness_correlation": {"n_subsets": 4, "subset_size": 32},
         "irof": {"n_segments": 6}, "road": {"percentages": [0.5]},
         "max_sensitivity": {"n_samples": 3}, "avg_sensitivity": {"n_samples": 3},
         "local_lipschitz_estimate": {"n_samples": 3}, "relative_input_stability": {"n_samples": 3},
         "model_randomization": {"blocks": ["fc", "head"]}}


# ----------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in GB (None where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        return None
    return None


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict):
    """Fills ``out`` with ``rss_added_gb`` (peak RSS during the block minus RSS before it),
    ``rss_peak_gb`` and, on CUDA, ``cuda_max_allocated_gb``."""
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    before = _status("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    sync(device)
    peak = _status("VmHWM") if reset else None
    if peak is None:  # no /proc: the lifetime peak (an upper bound of the block's)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out["rss_peak_gb"] = peak
    out["rss_added_gb"] = None if before is None else peak - before
    if device.type == "cuda":
        out["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9


class PassCounter:
    """Images through ``model`` and through every copy of it (the randomization metrics run
    deep copies with re-initialised weights): ``forward`` (every pass) and ``backward`` (passes
    whose output was backpropagated). A global forward hook (removed on exit) counts the calls of
    modules that carry the mark set on ``model``, which ``copy.deepcopy`` keeps."""

    MARK = "_metrics_limit_counted"

    def __init__(self, model: torch.nn.Module):
        self.model, self.forward, self.backward = model, 0, 0

    def _hook(self, module, args, output):
        if not getattr(module, self.MARK, False) or not args:
            return
        n = int(args[0].shape[0])
        self.forward += n
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: self._backward(n))

    def _backward(self, n: int) -> None:
        self.backward += n

    def __enter__(self) -> PassCounter:
        setattr(self.model, self.MARK, True)
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()
        delattr(self.model, self.MARK)


def one_pass(model, x: torch.Tensor, target: torch.Tensor, backward: bool) -> None:
    """The model-limit pass: ``model(x)`` under inference_mode, or forward + backward of the
    summed target scores to the input (the vanilla gradient's passes)."""
    if not backward:
        with torch.inference_mode():
            model(x)
        return
    inputs = x.detach().clone().requires_grad_(True)
    torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)


def limit_rate(model, device, size: int, batch_size: int, layout: str, backward: bool,
               images: int) -> float:
    """Images/s of ``one_pass`` at one setting over about ``images`` images (>= 2 passes)."""
    memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=memory)
    target = torch.zeros(batch_size, dtype=torch.long, device=device)
    passes = max(2, math.ceil(images / batch_size))
    one_pass(model, x, target, backward)  # warm-up (allocator, oneDNN primitives)
    sync(device)
    began = time.perf_counter()
    for _ in range(passes):
        one_pass(model, x, target, backward)
    sync(device)
    return passes * batch_size / (time.perf_counter() - began)


# ----------------------------------------------------------------------------- the work


@dataclasses.dataclass
class Setup:
    model: torch.nn.Module
    x: torch.Tensor
    target: torch.Tensor
    ids: tuple[str, ...]
    maps: torch.Tensor
    signed_maps: torch.Tensor
    device: torch.device
    method: str = "vanilla"
    seed: int = 0


def make_setup(args) -> Setup:
    device = torch.device(args.device)
    model = harness.load_model(args.model, weights=args.weights, device=str(device))
    data = harness.load_dataset("samples", names=(NAMES * args.images)[: args.images])
    ids = tuple(f"{name}_{i}" for i, name in enumerate(data.ids))
    x = harness.preprocess([s.load() for s in data], model.harness_info, device=device)
    if args.size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(args.size, args.size), mode="bilinear",
                                            align_corners=False)
    target = harness.resolve_targets(model, x, [None] * len(ids), ids, mode="predicted")
    maps = saliency_batched("vanilla", model, x, target, batch_size=len(ids))
    signed = saliency_batched("vanilla", model, x, target, batch_size=len(ids), signed=True)
    return Setup(model, x, target, ids, maps, signed, device)


def make_unit(setup: Setup) -> Unit:
    """A fresh work unit (nothing shared between runs) whose maps are already computed."""
    unit = Unit(setup.model, setup.x, setup.target, setup.ids, setup.method, seed=setup.seed,
                batch_size=len(setup.ids))
    unit.__dict__["maps"] = setup.maps  # the cached properties' slots: no recomputation
    unit.__dict__["signed_maps"] = setup.signed_maps
    return unit


def metric_settings(name: str, args):
    overrides = dict(QUICK.get(name, {}) if args.quick else
                     {} if args.full else SCALED.get(name, {}))
    overrides.update(json.loads(args.settings or "{}").get(name, {}))
    entry = get_metric(name)
    return check(dataclasses.replace(entry.settings(), **overrides)), overrides


def values_of(records: list[dict]) -> np.ndarray:
    return np.array([np.nan if r.get("value") is None else r["value"] for r in records],
                    dtype=float)


# ----------------------------------------------------------------------------- children


def child_limit(args) -> dict:
    """The sweep over batch sizes and layouts, for plain forwards and forward + backward: each
    setting's best rate over 3 rounds, the rounds interleaved (every setting once per round), so
    that a slow spell of a shared machine does not decide which setting is best."""
    device = torch.device(args.device)
    model = harness.load_model(args.model, weights=args.weights, device=str(device))
    sizes = [1, 2, 4] if args.quick else ([8, 16, 32, 64, 128, 256] if device.type == "cuda"
                                          else [1, 2, 4, 8, 16, 32])
    images = 8 if args.quick else (512 if device.type == "cuda" else 64)
    rounds = 1 if args.quick else 3
    out: dict = {"rates": {}, "rounds": rounds, "images_per_setting": images}
    for _ in range(rounds):
        for backward in (False, True):
            kind = "forward_backward" if backward else "forward"
            for layout in ("contiguous", "channels_last"):
                for batch_size in sizes:
                    key = f"{kind} {layout} {batch_size}"
                    rate = limit_rate(model, device, args.size, batch_size, layout, backward,
                                      images)
                    out["rates"][key] = max(out["rates"].get(key, 0.0), rate)
    for kind in ("forward", "forward_backward"):
        batch_size, layout = candidates(out, kind, 1)[0]
        out[kind] = {"images_per_s": out["rates"][f"{kind} {layout} {batch_size}"],
                     "batch_size": batch_size, "layout": layout}
    return out


def child_footprint(args, limit: dict) -> dict:
    """Peak memory of the model's own forward + backward (channels_last) at the harness's
    default backward chunk and at the limit's batch size, the smaller first (the allocator keeps
    what the first one took, so the larger one's figure is not understated)."""
    device = torch.device(args.device)
    model = harness.load_model(args.model, weights=args.weights, device=str(device))
    best = limit["forward_backward"]
    sizes = sorted({default_backward_chunk(device), best["batch_size"]})
    out: dict = {"layout": best["layout"]}
    before = _status("VmRSS")
    for batch_size in sizes:
        size_out: dict = {}
        with peak_memory(device, size_out):
            limit_rate(model, device, args.size, batch_size, best["layout"], True, 1)
        if before is not None:  # over the RSS before the first size, not before this one
            size_out["rss_added_gb"] = size_out["rss_peak_gb"] - before
        out[f"batch {batch_size}"] = size_out
    return out


def candidates(limit: dict, kind: str, count: int = 3) -> list[tuple[int, str]]:
    """The ``count`` fastest (batch size, layout) settings of ``kind`` in the sweep."""
    rates = sorted(((rate, key) for key, rate in limit["rates"].items()
                    if key.split()[0] == kind), reverse=True)[:count]
    return [(int(key.split()[2]), key.split()[1]) for _, key in rates]


def counted_passes(counter: PassCounter) -> list[tuple[str, int]]:
    """The images of each kind of pass the metric made (plain forwards, forward + backward)."""
    return [(kind, count) for kind, count in (("forward", counter.forward - counter.backward),
                                              ("forward_backward", counter.backward))
            if count > 0]


def limit_settings(model, device, size: int, limit: dict, counter: PassCounter,
                   cap: int) -> dict[str, tuple[int, str]]:
    """Per kind of pass the metric made, the fastest of the sweep's three fastest settings,
    each timed once now in the metric's process over at most ``cap`` images (which batch size
    wins shifts with the process's allocator state). One timing each, before the repeats, so
    that the limit below is, like the metric, a best of ``--repeats``."""
    return {kind: max(candidates(limit, kind), key=lambda setting: limit_rate(
                model, device, size, *setting, kind == "forward_backward", min(count, cap)))
            for kind, count in counted_passes(counter)}


def limit_seconds(model, device, size: int, chosen: dict[str, tuple[int, str]],
                  counter: PassCounter, cap: int) -> float:
    """Seconds the counted passes take at the limit: the plain forwards and the forward +
    backward passes at their ``chosen`` settings, timed now over at most ``cap`` images each."""
    return sum(count / limit_rate(model, device, size, *chosen[kind],
                                  kind == "forward_backward", min(count, cap))
               for kind, count in counted_passes(counter))


def child_metric(args, name: str, limit: dict) -> dict:
    setup = make_setup(args)
    settings, overrides = metric_settings(name, args)
    entry = get_metric(name)
    out: dict = {"metric": name, "settings": overrides}
    with PassCounter(setup.model) as counter, peak_memory(setup.device, out):
        records = entry.fn(make_unit(setup), settings)
    out["forward_images"] = counter.forward - counter.backward
    out["backward_images"] = counter.backward
    out["values"] = values_of(records).tolist()
    if counter.forward == 0:
        return out
    peers = [] if args.no_peers else peer_runs(name, setup, settings)
    out["peer_errors"] = {}
    cap = 32 if args.quick else (4096 if setup.device.type == "cuda" else 256)
    chosen = limit_settings(setup.model, setup.device, args.size, limit, counter, cap)
    out["limit_settings"] = {kind: {"batch_size": b, "layout": layout}
                             for kind, (b, layout) in chosen.items()}
    times: dict[str, list[float]] = {"metric": [], "limit": []}
    for _ in range(args.repeats):
        times["limit"].append(limit_seconds(setup.model, setup.device, args.size, chosen,
                                            counter, cap))
        sync(setup.device)
        began = time.perf_counter()
        entry.fn(make_unit(setup), settings)
        sync(setup.device)
        times["metric"].append(time.perf_counter() - began)
        for peer in list(peers):
            sync(setup.device)
            began = time.perf_counter()
            try:
                values = peer.run()
            except Exception as error:  # noqa: BLE001  (reported; the metric's row stays)
                out["peer_errors"][peer.name] = f"{type(error).__name__}: {error}"[:300]
                peers.remove(peer)
                continue
            sync(setup.device)
            times.setdefault(peer.name, []).append(time.perf_counter() - began)
            peer.values = values
    out["metric_s"] = min(times["metric"])
    out["limit_s"] = min(times["limit"])
    out["limit_over_metric"] = out["limit_s"] / out["metric_s"]
    out["peers"] = []
    for peer in peers:
        ours = np.asarray(out["values"] if peer.compare is None else peer.compare(records))
        entry_out = {"name": peer.name, "seconds": min(times[peer.name]), "note": peer.note,
                     "agreement": peer.agreement(ours, np.asarray(peer.values, dtype=float))}
        out["peers"].append(entry_out)
    return out


def child_peer_memory(args, name: str, peer_name: str) -> dict:
    setup = make_setup(args)
    settings, _ = metric_settings(name, args)
    peer = next(p for p in peer_runs(name, setup, settings) if p.name == peer_name)
    out: dict = {}
    with peak_memory(setup.device, out):
        peer.run()
    return out


# ----------------------------------------------------------------------------- peers


@dataclasses.dataclass
class Peer:
    """A peer's run on the same work: ``run() -> values [N]``; ``compare(records)`` gives the
    harness's comparable values (default: the records' values); ``exact``: the peer was handed
    the harness's perturbations, so the values must agree (else only the time is comparable)."""

    name: str
    run: callable
    note: str
    exact: bool = True
    compare: callable | None = None
    values: object = None

    def agreement(self, ours: np.ndarray, theirs: np.ndarray) -> dict:
        both = np.isfinite(ours) & np.isfinite(theirs)
        if not both.any():
            return {"max_abs_diff": None, "exact": self.exact, "compared": 0}
        difference = np.abs(ours[both] - theirs[both])
        scale = np.maximum(np.abs(ours[both]), 1e-12)
        return {"max_abs_diff": float(difference.max()),
                "max_rel_diff": float((difference / scale).max()), "exact": self.exact,
                "compared": int(both.sum())}


def peer_runs(name: str, setup: Setup, settings) -> list[Peer]:
    """The peers of metric ``name`` available in this environment (none when not installed)."""
    import peers_limit  # noqa: PLC0415  (the peers import Quantus / Captum lazily)

    return peers_limit.peers(name, setup, settings, Peer)


# ----------------------------------------------------------------------------- parent


def run_child(args, *extra: str, timeout: int = 3600) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *extra,
               "--device", args.device, "--images", str(args.images), "--size", str(args.size),
               "--repeats", str(args.repeats), "--model", args.model, "--weights", args.weights]
    command += ["--quick"] * args.quick + ["--full"] * args.full + ["--no-peers"] * args.no_peers
    command += ["--settings", args.settings] if args.settings else []
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HARNESS_CPU_ALLOCATOR": args.allocator}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {"error": (done.stderr or done.stdout)[-2000:]}


def model_metrics(requested: list[str] | None) -> list[str]:
    """The metrics to measure: every registered one that does not need ground-truth masks
    (those read maps only); the children leave out those that make no model pass."""
    names = [n for n in sorted(METRICS) if "masks" not in get_metric(n).needs]
    if requested:
        unknown = sorted(set(requested) - set(names))
        if unknown:
            raise SystemExit(f"unknown or mask-only metrics: {unknown}; choose from {names}")
        names = [n for n in names if n in requested]
    return names


def fmt(value, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def table(report: dict) -> str:
    lines = ["| metric | passes fwd / fwd+bwd | metric s | limit s | limit / metric | "
             "RSS added GB (peak) | fastest peer | peer s | peer / harness | peer RSS added GB "
             "| agreement |", "|" + "---|" * 11]
    for row in report["metrics"]:
        if "error" in row:
            lines.append(f"| {row['metric']} | error: {row['error'].splitlines()[-1][:80]} |")
            continue
        if row.get("forward_images", 0) + row.get("backward_images", 0) == 0:
            continue
        peers = [p for p in row.get("peers", []) if p.get("seconds")]
        fastest = min(peers, key=lambda p: p["seconds"]) if peers else None
        agreement = "-"
        if fastest is not None:
            a = fastest["agreement"]
            agreement = ("max rel diff " + fmt(a.get("max_rel_diff"), "{:.1e}")
                         if a["exact"] else "not comparable (" + fastest["note"] + ")")
        name = row["metric"] + (f" ({', '.join(f'{k}={v}' for k, v in row['settings'].items())})"
                                if row["settings"] else "")
        lines.append(
            f"| {name} | {row['forward_images']} / {row['backward_images']} | "
            f"{fmt(row.get('metric_s'))} | {fmt(row.get('limit_s'))} | "
            f"{fmt(row.get('limit_over_metric'))} | {fmt(row.get('rss_added_gb'))} "
            f"({fmt(row.get('rss_peak_gb'))}) | {fastest['name'] if fastest else '-'} | "
            f"{fmt(fastest['seconds']) if fastest else '-'} | "
            f"{fmt(fastest['seconds'] / row['metric_s']) if fastest else '-'} | "
            f"{fmt(fastest.get('rss_added_gb')) if fastest else '-'} | {agreement} |")
    failed = [f"- {row['metric']}: the peer {peer} failed: {why}" for row in report["metrics"]
              for peer, why in row.get("peer_errors", {}).items()]
    if failed:
        lines += ["", "Peers that failed (their metric's row is measured without them):", *failed]
    return "\n".join(lines)


def parent(args, write=None) -> dict:
    names = model_metrics(args.metrics.split(",") if args.metrics else None)
    device = torch.device(args.device)
    report = {"device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                         else f"cpu ({platform.processor() or platform.machine()}, "
                              f"{torch.get_num_threads()} threads)"),
              "torch": torch.__version__, "model": args.model, "images": args.images,
              "size": args.size, "repeats": args.repeats, "quick": args.quick,
              "full": args.full, "allocator": args.allocator,
              "load_average": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    limit = run_child(args, "limit")
    if "error" in limit:
        raise SystemExit(f"the limit sweep failed:\n{limit['error']}")
    report["limit"] = limit
    report["model_footprint"] = run_child(args, "footprint", json.dumps(limit))
    print(f"limit: forward {limit['forward']}, forward+backward {limit['forward_backward']}; "
          f"model footprint (forward+backward) {report['model_footprint']}", flush=True)
    rows = []
    for name in names:
        row = run_child(args, "metric", name, json.dumps(limit))
        row.setdefault("metric", name)
        for peer in row.get("peers", []):
            peer.update(run_child(args, "peer", name, peer["name"]))
        rows.append(row)
        print(f"{name}: " + json.dumps({k: v for k, v in row.items() if k != "values"}),
              flush=True)
        if write is not None:  # what is measured so far survives a timeout
            write({**report, "metrics": rows, "partial": True})
    report["metrics"] = rows
    report["not_calling_the_model"] = [
        r["metric"] for r in rows if r.get("forward_images", 1) + r.get("backward_images", 1)
        == 0]
    report["load_average_after"] = os.getloadavg()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--full", action="store_true", help="every default (infidelity: 10000)")
    parser.add_argument("--settings", default=None,
                        help='JSON of settings per metric over its defaults, e.g. '
                             '\'{"max_sensitivity": {"batch_size": 16}}\'')
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and counts: a smoke test, not a measurement")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                        help="the C allocator's settings in every subprocess (harness."
                             "tune_cpu_allocator, as the harness's runs on the CPU; default: "
                             "the C library's own)")
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.images, args.repeats = min(args.size, 64), min(args.images, 2), 1
    if args.child:
        harness.tune_cpu_allocator()  # as the harness's runs do (HARNESS_CPU_ALLOCATOR decides)
        kind, *rest = args.child
        if kind == "limit":
            out = child_limit(args)
        elif kind == "footprint":
            out = child_footprint(args, json.loads(rest[0]))
        elif kind == "metric":
            out = child_metric(args, rest[0], json.loads(rest[1]))
        else:
            out = child_peer_memory(args, rest[0], rest[1])
        print(MARK + json.dumps(out), flush=True)
        return
    def write(data: dict) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1))

    report = parent(args, write)
    text = table(report)
    print(f"\n{report['device']}, torch {report['torch']}, {args.model}, {args.images} images "
          f"at {args.size} x {args.size}, best of {args.repeats}, allocator {args.allocator}; "
          "load average "
          f"{report['load_average']} -> {report['load_average_after']}\n")
    print(text)
    write(report)


if __name__ == "__main__":
    main()
