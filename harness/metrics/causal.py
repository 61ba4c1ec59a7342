"""Deletion, insertion and pixel-flipping curves on one batched engine.

Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models"
(reference eclique/RISE ``evaluation.py``); MoRF / LeRF (Samek et al. 2017, "Evaluating the
visualization of what a deep neural network has learned"); ABPC (Schulz et al. 2020, "Restricting
the Flow") = AUC(LeRF) - AUC(MoRF). Pixels ordered by decreasing saliency (ties: lower flat index
first), ``step`` pixels changed per step in all channels, ``ceil(H * W / step) + 1`` points;
deletion moves the image to the substrate, insertion the substrate to the image; the score is the
target's softmax probability (or logit); AUC = (sum(curve) - curve[0] / 2 - curve[-1] / 2) /
(len(curve) - 1). ``patch=P`` ranks and removes whole P x P patches.

Conventions against Quantus, the engine and patch granularity: docs/faithfulness.md,
docs/transformers.md (patch granularity) and the metric reference (docs/metrics.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import ConfigError, MetricError
from harness.methods._core import check_finite_inputs
from harness.metrics.registry import register_metric
from harness.metrics.substrates import Substrate, list_substrates, make_substrate
from harness.model_info import model_info
from harness.settings import check, check_choice, check_int, check_target_range

SCORES = ("prob", "logit")
AMP_DTYPES = ("bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@dataclass(frozen=True)
class CurveResult:
    """Per-image curves and AUCs of one perturbation metric.

    ``curves`` ``[N, n_steps + 1]``, ``auc`` ``[N]``, ``fractions`` ``[n_steps + 1]`` (fraction of
    pixels changed at each point), and the settings that produced them.
    """

    metric: str
    curves: torch.Tensor
    auc: torch.Tensor
    fractions: torch.Tensor
    step: int
    substrate: str
    score: str
    patch: int | None = None  # patch granularity: ``step`` counts P x P patches

    @property
    def n_steps(self) -> int:
        return self.curves.shape[1] - 1


@dataclass(frozen=True)
class ABPCResult:
    """MoRF and LeRF curves and their area between (``abpc`` ``[N]`` = AUC LeRF - AUC MoRF)."""

    morf: CurveResult
    lerf: CurveResult
    abpc: torch.Tensor


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Normalised trapezoid of curves ``[..., K]`` on K evenly spaced points in [0, 1] (RISE)."""
    if curves.shape[-1] < 2:
        raise MetricError("a curve needs at least 2 points")
    curves = curves.double()
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / (curves.shape[-1] - 1)


def n_steps_for(height: int, width: int, step: int) -> int:
    """ceil(H * W / step)."""
    return (height * width + step - 1) // step


def pixel_ranks(saliency: torch.Tensor, *, descending: bool = True) -> torch.Tensor:
    """Rank of every pixel in the removal order ``[N, H * W]`` (0 = first changed).

    One stable sort per image: equal saliency goes to the lower flat index first."""
    flat = saliency.reshape(saliency.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=descending, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def check_patch(patch, height: int, width: int) -> int | None:
    """``patch`` (None: pixel order) as an int dividing ``height`` and ``width``, else a
    ValueError naming it."""
    if patch is None:
        return None
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise MetricError(f"patch must be a positive integer (pixels per patch side) or None, got "
                         f"{patch!r}")
    if height % patch or width % patch:
        raise MetricError(f"patch {patch} does not divide the {height} x {width} input: patches "
                         "must tile the image")
    return patch


def patch_means(saliency: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean saliency of each ``patch`` x ``patch`` square: ``[N, H, W]`` -> ``[N, H/P, W/P]``."""
    n_images, height, width = saliency.shape
    return saliency.reshape(n_images, height // patch, patch, width // patch, patch).mean(
        dim=(2, 4))


def patch_ranks(saliency: torch.Tensor, patch: int, *, descending: bool = True) -> torch.Tensor:
    """Rank of every pixel ``[N, H * W]`` when whole ``patch`` x ``patch`` squares are removed in
    the order of their mean saliency (one stable sort: ties to the lower row-major patch index),
    a patch's pixels in row-major order within it, so the first k * P^2 ranks are the first k
    patches. ``saliency`` ``[N, H, W]``, P dividing H and W."""
    _, height, width = saliency.shape
    cols = width // patch
    order = pixel_ranks(patch_means(saliency, patch), descending=descending)  # [N, patches]
    device = saliency.device
    y = torch.arange(height, device=device)[:, None]
    x = torch.arange(width, device=device)[None, :]
    owner = ((y // patch) * cols + x // patch).reshape(-1)  # the patch of each pixel
    within = ((y % patch) * patch + x % patch).reshape(-1)
    return order[:, owner] * (patch * patch) + within


def validate_maps(x: torch.Tensor, saliency: torch.Tensor, target,
                  ids: Sequence[str] | None) -> torch.Tensor:
    """Check ``x`` ``[N, C, H, W]``, ``saliency`` ``[N, H, W]`` (finite: a NaN/inf map is named by
    its image), ``target`` ``[N]`` and ``ids``; return ``target`` as long ``[N]`` on x's device."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise MetricError(f"x must be a tensor [N, C, H, W], got {shape}")
    n_images, _, height, width = x.shape
    if not isinstance(saliency, torch.Tensor) or tuple(saliency.shape) != (n_images, height,
                                                                            width):
        shape = tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency)
        raise MetricError(f"saliency has shape {shape}; x {tuple(x.shape)} needs maps [N, H, W] = "
                         f"{(n_images, height, width)}")
    if ids is not None and len(ids) != n_images:
        raise MetricError(f"ids has {len(ids)} entries for {n_images} images")
    finite = torch.isfinite(saliency.reshape(n_images, -1)).all(dim=1)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0, 0])
        name = ids[index] if ids is not None else f"#{index}"
        raise MetricError(f"saliency map of image {name} contains NaN or inf")
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    if target.shape[0] != n_images:
        raise MetricError(f"target has {target.shape[0]} entries for {n_images} images")
    return target


def validate(model_input: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor | Sequence,
             step: int, ids: Sequence[str] | None) -> torch.Tensor:
    """Check shapes, finiteness and ``step`` against the image's pixels (the settings are checked
    by ``CurveSettings.check``); return target as long ``[N]``."""
    target = validate_maps(model_input, saliency, target, ids)
    check_finite_inputs(model_input, ids)
    height, width = model_input.shape[2:]
    check_int("step", step, 1, height * width)
    return target


def _autocast(device: torch.device, amp_dtype: str | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    check_choice("amp_dtype", amp_dtype, AMP_DTYPES)
    return torch.autocast(device_type=device.type, dtype=dtypes[amp_dtype])


def resolve_memory_format(memory_format: str, device: torch.device) -> torch.memory_format:
    """``auto`` is channels_last on every device: ``benchmarks/causal_metrics.py`` measured
    SqueezeNet 1.1 2.8x and EfficientNet-Lite0 1.6x faster on a 2-core x86 CPU (oneDNN) with
    channels_last inputs, and cuDNN prefers it for convnets."""
    formats = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    check_choice("memory_format", memory_format, MEMORY_FORMATS)
    if memory_format == "auto":
        return torch.channels_last
    return formats[memory_format]


def _pixel_rows(image: torch.Tensor) -> torch.Tensor:
    """A ``[H * W, C]`` view of ``image`` ``[C, H, W]`` (channels_last or contiguous) whose row p
    is pixel p in all channels; writes go through to ``image``."""
    channels = image.shape[0]
    if image.stride(0) == 1:  # channels_last: the C values of a pixel are adjacent
        return image.permute(1, 2, 0).view(-1, channels)
    return image.view(channels, -1).t()


def default_batch_size(device: torch.device) -> int:
    """Chunk size when none is given: 8 on the CPU (per-image throughput falls with larger
    batches on cache-bound CPUs; see the benchmark), 256 on accelerators."""
    return 8 if device.type == "cpu" else 256


BUILDS = ("auto", "mask", "incremental")


def resolve_build(build: str, device: torch.device) -> str:
    """``auto``: ``incremental`` on the CPU (half the engine's overhead there, measured by
    ``benchmarks/causal_metrics.py``), ``mask`` on accelerators (one broadcast kernel per image
    run in a chunk rather than a few small kernels per point)."""
    check_choice("build", build, BUILDS)
    if build == "auto":
        return "incremental" if device.type == "cpu" else "mask"
    return build


def perturbation_curves(model: nn.Module, start: torch.Tensor, finish: torch.Tensor,
                        ranks: torch.Tensor, target: torch.Tensor, *, step: int,
                        score: str = "prob", batch_size: int | None = None,
                        memory_format: str = "auto", amp_dtype: str | None = None,
                        build: str = "auto", ids: Sequence[str] | None = None) -> torch.Tensor:
    """Scores ``[N, n_steps + 1]``: point k of image i scores ``where(rank_i < min(k*step, HW),
    finish_i, start_i)``. ``start``/``finish`` ``[N, C, H, W]``, ``ranks`` ``[N, H * W]``.

    (image, point) pairs are taken in image-major order, ``batch_size`` at a time, into one
    preallocated input buffer in the chosen memory layout. A chunk holds consecutive points of one
    or a few images; ``build`` says how an image's run of points is written (the inputs are
    identical either way, bit for bit): ``mask`` broadcasts start/finish against the run's
    ``rank < threshold`` masks; ``incremental`` builds the run's first point that way and each
    next one as a copy of the previous plus the next ``step`` pixels of the order. ``target``
    is checked against the model's classes on the first chunk (``ids`` name the image)."""
    n_images, _, height, width = start.shape
    n_pixels = height * width
    n_points = n_steps_for(height, width, step) + 1
    device = start.device
    layout = resolve_memory_format(memory_format, device)
    build = resolve_build(build, device)
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    check_int("batch_size", batch_size, 1)
    start = start.contiguous(memory_format=layout)
    finish = finish.contiguous(memory_format=layout)
    # ranks broadcast over channels in the inputs' layout, so that the mask, the sources and the
    # output share strides (a channels_last mask of shape [b, 1, H, W] would loop 3 wide)
    rank_images = (ranks.to(torch.int32).view(n_images, 1, height, width)
                   .expand(start.shape).contiguous(memory_format=layout))
    curves = torch.empty((n_images, n_points), dtype=torch.float32, device=device)
    flat_curves = curves.view(-1)
    total = n_images * n_points
    buffer = torch.empty((min(batch_size, total), *start.shape[1:]), dtype=start.dtype,
                         device=device).contiguous(memory_format=layout)
    order = rows = None
    if build == "incremental":  # the pixel index of each rank, and [H*W, C] views of the slots
        order = torch.empty_like(ranks).scatter_(
            1, ranks, torch.arange(n_pixels, device=device).expand_as(ranks))
        rows = [_pixel_rows(buffer[b]) for b in range(buffer.shape[0])]
    with torch.inference_mode(), _autocast(device, amp_dtype):
        for begin in range(0, total, batch_size):
            end = min(begin + batch_size, total)
            inputs = buffer[: end - begin]
            for image in range(begin // n_points, (end - 1) // n_points + 1):
                first = max(begin, image * n_points) - begin  # the image's slots in the chunk
                last = min(end, (image + 1) * n_points) - begin
                point = first + begin - image * n_points  # the curve point of slot ``first``
                if build == "mask":
                    points = torch.arange(point, point + last - first, device=device,
                                          dtype=torch.int32)
                    thresholds = (points * step).clamp(max=n_pixels).view(-1, 1, 1, 1)
                    torch.where(rank_images[image] < thresholds, finish[image], start[image],
                                out=inputs[first:last])
                    continue
                threshold = min(point * step, n_pixels)
                torch.where(rank_images[image] < threshold, finish[image], start[image],
                            out=inputs[first])
                finish_rows = _pixel_rows(finish[image])
                for slot in range(first + 1, last):
                    inputs[slot].copy_(inputs[slot - 1])
                    pixels = order[image, threshold: min((point + slot - first) * step, n_pixels)]
                    threshold = min((point + slot - first) * step, n_pixels)
                    rows[slot].index_copy_(0, pixels, finish_rows.index_select(0, pixels))
            logits = model(inputs).float()
            if begin == 0:
                check_target_range(target, logits.shape[1], ids, error=MetricError)
            targets = target[torch.arange(begin, end, device=device) // n_points]
            if score == "prob":
                values = logits.softmax(dim=1).gather(1, targets[:, None])[:, 0]
            else:
                values = logits.gather(1, targets[:, None])[:, 0]
            flat_curves[begin:end] = values
    return curves


def _fractions(height: int, width: int, step: int) -> torch.Tensor:
    points = torch.arange(n_steps_for(height, width, step) + 1, dtype=torch.float64)
    return (points * step).clamp(max=height * width) / (height * width)


def _curve_metric(metric: str, model: nn.Module, x: torch.Tensor, saliency: torch.Tensor,
                  target, *, step: int, substrate: str | dict | Substrate | None, score: str,
                  batch_size: int, ids: Sequence[str] | None, memory_format: str,
                  amp_dtype: str | None, patch: int | None = None) -> CurveResult:
    settings_class = InsertionSettings if metric == "insertion" else CurveSettings
    check(settings_class(step=step, substrate=substrate, score=score, batch_size=batch_size,
                         amp_dtype=amp_dtype))
    check_choice("memory_format", memory_format, MEMORY_FORMATS)
    pixel_step = step if patch is None else _patch_step(x, step, patch)
    target = validate(x, saliency, target, pixel_step, ids)
    substrate_fn, substrate_name = make_substrate(substrate or DEFAULT_SUBSTRATES[metric])
    x = x.detach()
    with torch.inference_mode():
        replacement = substrate_fn(x)
    if replacement.shape != x.shape:
        raise MetricError(f"substrate {substrate_name} returned {tuple(replacement.shape)}, "
                         f"expected {tuple(x.shape)}")
    if patch is None:
        ranks = pixel_ranks(saliency.detach().to(x.device), descending=metric != "lerf")
    else:
        ranks = patch_ranks(saliency.detach().to(x.device), patch, descending=metric != "lerf")
    start, finish = (replacement, x) if metric == "insertion" else (x, replacement)
    curves = perturbation_curves(model, start, finish, ranks, target, step=pixel_step,
                                 score=score, batch_size=batch_size, memory_format=memory_format,
                                 amp_dtype=amp_dtype, ids=ids)
    curves = curves.cpu()
    return CurveResult(metric, curves, auc(curves), _fractions(*x.shape[2:], pixel_step), step,
                       substrate_name, score, patch)


def _patch_step(x: torch.Tensor, step: int, patch: int) -> int:
    """Pixels per step at patch granularity (``step`` patches of ``patch`` x ``patch``); checks
    that the patches tile ``x`` and that ``step`` is in [1, patches]."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise MetricError(f"x must be a tensor [N, C, H, W], got {shape}")
    height, width = x.shape[2:]
    check_patch(patch, height, width)
    n_patches = (height // patch) * (width // patch)
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= n_patches:
        raise MetricError(f"step must be an integer in [1, {n_patches}] (patches of {patch} x "
                         f"{patch} pixels per step), got {step}")
    return step * patch * patch


def deletion(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, *,
             step: int = 224, substrate: str | dict | Substrate = "zero", score: str = "prob",
             batch_size: int | None = None, ids: Sequence[str] | None = None,
             memory_format: str = "auto", amp_dtype: str | None = None,
             patch: int | None = None) -> CurveResult:
    """Deletion (RISE): remove the most salient pixels first into ``substrate``; lower AUC is
    better. ``x`` ``[N, C, H, W]`` model input, ``saliency`` ``[N, H, W]``, ``target`` ``[N]``.
    Returns curves ``[N, ceil(HW/step) + 1]`` and AUC ``[N]``. ``patch=P``: remove whole P x P
    patches, ``step`` patches per step (module docstring)."""
    return _curve_metric("deletion", model, x, saliency, target, step=step, substrate=substrate,
                         score=score, batch_size=batch_size, ids=ids, memory_format=memory_format,
                         amp_dtype=amp_dtype, patch=patch)


def insertion(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, *,
              step: int = 224, substrate: str | dict | Substrate = "rise_blur",
              score: str = "prob", batch_size: int | None = None, ids: Sequence[str] | None = None,
              memory_format: str = "auto", amp_dtype: str | None = None,
              patch: int | None = None) -> CurveResult:
    """Insertion (RISE): start from ``substrate`` (RISE's blur) and reveal the most salient pixels
    first; higher AUC is better. Shapes and ``patch`` as ``deletion``."""
    return _curve_metric("insertion", model, x, saliency, target, step=step, substrate=substrate,
                         score=score, batch_size=batch_size, ids=ids, memory_format=memory_format,
                         amp_dtype=amp_dtype, patch=patch)


def morf(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, **options
         ) -> CurveResult:
    """MoRF curve (Samek et al. 2017): most relevant pixels removed first (= deletion)."""
    result = deletion(model, x, saliency, target, **options)
    return CurveResult("morf", result.curves, result.auc, result.fractions, result.step,
                       result.substrate, result.score, result.patch)


def lerf(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, *, step: int = 224,
         substrate: str | dict | Substrate = "zero", score: str = "prob",
         batch_size: int | None = None, ids: Sequence[str] | None = None,
         memory_format: str = "auto", amp_dtype: str | None = None,
         patch: int | None = None) -> CurveResult:
    """LeRF curve (Samek et al. 2017): least relevant pixels (or ``patch``es) removed first
    (ties: lower index first); higher AUC is better."""
    return _curve_metric("lerf", model, x, saliency, target, step=step, substrate=substrate,
                         score=score, batch_size=batch_size, ids=ids, memory_format=memory_format,
                         amp_dtype=amp_dtype, patch=patch)


def abpc(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, **options
         ) -> ABPCResult:
    """Area between the LeRF and MoRF curves: AUC(LeRF) - AUC(MoRF) per image ``[N]``."""
    most = morf(model, x, saliency, target, **options)
    least = lerf(model, x, saliency, target, **options)
    return ABPCResult(most, least, least.auc - most.auc)


# ----------------------------------------------------------------------------- registry entries


@dataclass(frozen=True)
class CurveSettings:
    """Settings of the perturbation-curve metrics (defaults: RISE's evaluation). ``substrate``:
    what removed pixels become (None, as configs of harness 0.1 wrote it: the metric's default);
    ``batch_size`` None: the device's default (8 on the CPU, 256 on CUDA); ``amp_dtype``
    ``bf16``/``fp16`` autocasts the scoring (None: fp32)."""

    step: int = 224
    substrate: str | dict | None = "zero"
    score: str = "prob"
    batch_size: int | None = None
    amp_dtype: str | None = None
    methods: list | None = None
    # None: pixel order (RISE); P: whole P x P patches, ``step`` patches per step; "model": the
    # model's patch size (ModelInfo.patch_size, a vision transformer's)
    patch: int | str | None = None

    def check(self) -> None:
        check_patch_setting(self.patch)
        check_int("step", self.step, 1)
        check_choice("score", self.score, SCORES)
        check_int("batch_size", self.batch_size, 1, optional=True)
        if self.amp_dtype is not None:
            check_choice("amp_dtype", self.amp_dtype, AMP_DTYPES)
        substrate = self.substrate
        if substrate is None or (callable(substrate) and not isinstance(substrate, str)):
            return  # the metric's default, or a substrate function given in Python
        if isinstance(substrate, dict):
            if "name" not in substrate:
                raise ConfigError(f"substrate: {substrate!r} needs a 'name' (one of: "
                                  f"{', '.join(list_substrates())})")
            substrate = substrate["name"]
        check_choice("substrate", substrate, list_substrates())


@dataclass(frozen=True)
class InsertionSettings(CurveSettings):
    """Insertion starts from RISE's blur."""

    substrate: str | dict | None = "rise_blur"


DEFAULT_SUBSTRATES = {"deletion": "zero", "morf": "zero", "lerf": "zero", "abpc": "zero",
                      "insertion": "rise_blur"}


def check_patch_setting(patch) -> None:
    """The ``patch`` field of a settings dataclass: None, a positive int or ``"model"``."""
    if patch is None or patch == "model":
        return
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ConfigError(f"patch: a positive integer (pixels per patch side), 'model' (the "
                          f"model's patch size) or omitted (pixel order), got {patch!r}")


def resolve_patch(patch, model: nn.Module) -> int | None:
    """A ``patch`` setting for ``model``: ``"model"`` becomes its ``ModelInfo.patch_size``."""
    if patch != "model":
        return patch
    info = model_info(model)
    if info.patch_size is None:
        raise MetricError(f"patch: 'model', but {info.name!r} declares no patch size "
                         "(ModelInfo.patch_size; vision transformers have one): give the size")
    return info.patch_size


def _options(metric: str, unit, settings: CurveSettings) -> dict:
    options = {"step": settings.step, "score": settings.score, "batch_size": settings.batch_size,
               "substrate": settings.substrate or DEFAULT_SUBSTRATES[metric],
               "amp_dtype": settings.amp_dtype, "ids": list(unit.ids)}
    if settings.patch is not None:  # pixel order passes no patch: its calls are unchanged
        options["patch"] = resolve_patch(settings.patch, unit.model)
    return options


def _with_patch(record: dict, options: dict) -> dict:
    """A record with the patch size it was computed at, when at patch granularity."""
    if "patch" in options:
        record["patch"] = options["patch"]
    return record


def _curve_records(metric: str):
    function = {"deletion": deletion, "insertion": insertion, "morf": morf, "lerf": lerf}[metric]

    def records(unit, settings: CurveSettings) -> list[dict]:
        options = _options(metric, unit, settings)
        result = function(unit.model, unit.x, unit.maps, unit.target, **options)
        return [_with_patch({"image_id": i, "value": float(v), "curve": curve}, options)
                for i, v, curve in zip(unit.ids, result.auc.tolist(), result.curves.tolist(),
                                       strict=True)]

    records.__doc__ = function.__doc__
    return records


_RISE = "Petsiuk, Das & Saenko 2018, RISE (arXiv:1806.07421), evaluation.py"
_SAMEK = "Samek et al. 2017 (arXiv:1509.06321)"
register_metric("deletion", settings=CurveSettings, direction="down", citation=_RISE,
                summary="Deletion AUC: the target's score as the most salient pixels are removed")(
    _curve_records("deletion"))
register_metric("insertion", settings=InsertionSettings, direction="up", citation=_RISE,
                summary="Insertion AUC: the target's score as the most salient pixels appear")(
    _curve_records("insertion"))
register_metric("morf", settings=CurveSettings, direction="down", citation=_SAMEK,
                summary="MoRF AUC: most relevant pixels removed first (= deletion)")(
    _curve_records("morf"))
register_metric("lerf", settings=CurveSettings, direction="up", citation=_SAMEK,
                summary="LeRF AUC: least relevant pixels removed first")(
    _curve_records("lerf"))


@register_metric("abpc", settings=CurveSettings, direction="up",
                 citation="Schulz et al. 2020 (arXiv:2001.00396)")
def _abpc_records(unit, settings: CurveSettings) -> list[dict]:
    """Area between the LeRF and MoRF curves: AUC(LeRF) - AUC(MoRF); higher is better."""
    options = _options("abpc", unit, settings)
    result = abpc(unit.model, unit.x, unit.maps, unit.target, **options)
    return [_with_patch({"image_id": i, "value": float(v), "auc_morf": float(m),
                         "auc_lerf": float(lo)}, options)
            for i, v, m, lo in zip(unit.ids, result.abpc.tolist(), result.morf.auc.tolist(),
                                   result.lerf.auc.tolist(), strict=True)]
