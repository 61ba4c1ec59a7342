"""The sampled neighbourhood of the robustness metrics, and one pass of a method over it.

Every robustness metric (``harness.metrics.robustness``) reads the same per-(image, sample)
statistics of the maps phi(x + delta) of ``n_samples`` deltas per image: ``sample_statistics``
computes them all in one batched pass, so configuring several robustness metrics with the same
neighbourhood costs one set of method calls (the registry entries share it through
``Unit.shared``). Definitions, sources and peers' conventions: ``harness.metrics.robustness``.

- Deltas: U(-r, r) per element (``uniform``, the L-infinity ball) or N(0, r^2) (``gaussian``);
  r in [0, 1] pixel units (``radius_units="pixel"``, divided by the model's std per channel) or in
  the model's input space (``"input"``). Image i's deltas come from
  ``image_generator(seed, ids[i] or i, salt="robustness")`` on the CPU and are moved to the
  device, so they do not depend on the batch, ``batch_size`` or the device.
- Batched: (image, sample) pairs image-major, ``batch_size`` perturbed inputs per ``saliency``
  call (several images' samples in one batched backward); statistics in float64; a NaN/inf map
  raises ``ValueError`` naming the image and sample.
- Speed and memory: the model runs on channels_last inputs (``model_layout``: a forward pre-hook
  converts the model's input, a differentiable copy, so the method still sees and differentiates
  ``x`` in its own layout; ``benchmarks/metrics_limit.py`` measured channels_last the faster
  layout for forward + backward, as the causal engine's forwards). Memory is bounded by
  ``batch_size`` (the method's activations for that many inputs) plus one image's deltas at a
  time: the default chunk (``default_batch_size``) is chosen from that benchmark's measurements
  (``docs/benchmarks.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import MetricError
from harness.methods import saliency
from harness.methods._core import NonFiniteMapError, check_inputs, guarded
from harness.metrics.causal import resolve_memory_format
from harness.models import model_info
from harness.seeding import image_generator
from harness.settings import check_choice, check_int, check_number, check_seed

NOISES = ("uniform", "gaussian")
RADIUS_UNITS = ("pixel", "input")
NORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "fro": lambda flat: flat.norm(dim=1),
    "l1": lambda flat: flat.abs().sum(dim=1),
    "linf": lambda flat: flat.abs().amax(dim=1),
}


def default_batch_size(device: torch.device) -> int:
    """Inputs per method call (a forward + backward) when none is given: 4 on the CPU, 128 on
    accelerators. On the CPU the chunk is chosen for memory: the activations kept for the
    backward grow with it (EfficientNet-Lite0 at 224 x 224, forward + backward: 0.38 GB at 4,
    1.53 GB at 16 over the process's resident memory), while larger chunks are faster per image
    (Max-Sensitivity at 0.81 of the model's best rate at 4 and 0.92 at 16, adding 0.13 GB and
    1.26 GB): ``benchmarks/metrics_limit.py``, ``docs/benchmarks.md``. Pass ``batch_size`` for
    speed where memory allows."""
    return 4 if device.type == "cpu" else 128


class _Layout(torch.autograd.Function):
    """Identity on values: forward returns ``x`` in ``memory_format``, backward returns the
    gradient in ``x``'s own layout (so a method's gradient is laid out as its input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        ctx.was_contiguous = x.is_contiguous()
        return x.contiguous(memory_format=memory_format)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (grad.contiguous() if ctx.was_contiguous else grad), None


@contextlib.contextmanager
def model_layout(model: nn.Module, memory_format: torch.memory_format) -> Iterator[None]:
    """Within the block, ``model`` runs on its 4-D input converted to ``memory_format`` (a forward
    pre-hook, removed on exit); the conversion changes no value and hands gradients back in the
    input's own layout, so a method sees and differentiates ``x`` as it was given.
    ``contiguous_format``: no hook."""
    if memory_format == torch.contiguous_format:
        yield
        return

    def convert(module: nn.Module, args: tuple):
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            return (_Layout.apply(args[0], memory_format), *args[1:])
        return None

    handle = model.register_forward_pre_hook(convert)
    try:
        yield
    finally:
        handle.remove()


def draw_perturbations(image: torch.Tensor, n_samples: int, *, radius: float,
                       noise: str = "uniform", pixel_std: Sequence[float] | None = None,
                       seed: int = 0, key: int | str = 0) -> torch.Tensor:
    """Deltas ``[n_samples, C, H, W]`` for one image ``[C, H, W]``: U(-r, r) per element
    (``uniform``: the L-infinity ball of radius r) or N(0, r^2) (``gaussian``), r = ``radius``
    (divided by ``pixel_std[c]`` per channel when given). Drawn on the CPU from
    ``image_generator(seed, key, salt="robustness")`` and moved to the image's device."""
    check_choice("noise", noise, NOISES)
    check_number("radius", radius, 0, low_open=True)
    generator = image_generator(seed, key, salt="robustness")
    shape = (n_samples, *image.shape)
    if noise == "uniform":
        draws = torch.rand(shape, generator=generator, dtype=torch.float32).mul_(2).sub_(1)
    else:
        draws = torch.randn(shape, generator=generator, dtype=torch.float32)
    scale = torch.full((image.shape[0],), float(radius))
    if pixel_std is not None:
        std = torch.as_tensor(pixel_std, dtype=torch.float32).reshape(-1)
        if std.numel() != image.shape[0] or not bool((std > 0).all()):
            raise MetricError(f"pixel_std must hold {image.shape[0]} positive values (one per "
                             f"channel), got {list(std.tolist())}")
        scale = scale / std
    draws *= scale.view(1, -1, 1, 1)
    return draws.to(device=image.device, dtype=image.dtype)


def pixel_scale(model: nn.Module, radius_units: str) -> tuple[float, ...] | None:
    """The per-channel std that converts a radius in [0, 1] pixel units to the model's input space
    (``radius_units="pixel"``: ``model_info(model).std``), or None for ``"input"``."""
    check_choice("radius_units", radius_units, RADIUS_UNITS)
    if radius_units == "input":
        return None
    return tuple(float(v) for v in model_info(model).std)


def _name(ids: Sequence | None, index: int) -> str:
    return str(ids[index]) if ids is not None else f"#{index}"


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(tensor.shape[0], -1).double()


def _check_finite(maps: torch.Tensor, method: str, what) -> None:
    finite = torch.isfinite(maps.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        where = what(int((~finite).nonzero()[0, 0]))
        raise MetricError(f"method {method!r} gave a NaN/inf map for {where}")


def _finite_maps(method: str, model, x: torch.Tensor, target: torch.Tensor, params: dict,
                 what) -> torch.Tensor:
    """``saliency`` in float64, a NaN/inf map named by ``what(position in x)``."""
    try:
        maps = saliency(method, model, x, target, **params).double()
    except NonFiniteMapError as error:
        raise NonFiniteMapError(method, error.index, what(error.index)) from None
    _check_finite(maps, method, what)
    return maps


def check_neighbourhood(settings) -> None:
    """The checks of the neighbourhood fields ``radius``, ``radius_units``, ``n_samples``,
    ``noise`` and ``batch_size`` of ``settings`` (a ``Neighbourhood`` or the robustness metrics'
    settings), ``ConfigError("field: why")``."""
    check_number("radius", settings.radius, 0, low_open=True)
    check_choice("radius_units", settings.radius_units, RADIUS_UNITS)
    check_int("n_samples", settings.n_samples, 1)
    check_choice("noise", settings.noise, NOISES)
    check_int("batch_size", settings.batch_size, 1, optional=True)


@dataclass(frozen=True)
class Neighbourhood:
    """The sampled neighbourhood of every image: ``n_samples`` deltas per image, U(-r, r)
    (``uniform``) or N(0, r^2) (``gaussian``) per element, r = ``radius`` in ``radius_units``,
    from ``image_generator(seed, ids[i] or i, salt="robustness")``; ``batch_size`` perturbed
    inputs per method call (None: 4 on the CPU, 128 on accelerators)."""

    radius: float = 0.2
    radius_units: str = "pixel"
    n_samples: int = 50
    noise: str = "uniform"
    seed: int = 0
    batch_size: int | None = None

    def check(self) -> None:
        check_neighbourhood(self)
        check_seed("seed", self.seed)


@dataclass(frozen=True)
class SampleStatistics:
    """What every robustness metric reads, per image and sample (float64 ``[N, n_samples]``
    unless said), from ONE pass of the method over the neighbourhood:

    ``difference[norm]`` ||phi(x') - phi(x)|| and ``clean_norm[norm]`` ||phi(x)|| ``[N]`` for the
    norms ``fro``, ``l1``, ``linf``; ``difference_normalised`` the L2 norm of the difference of
    the max-normalised maps; ``delta_norm`` ||x' - x||_2; ``relative_explanation``
    ||(e_x - e_x') / e_x||_p and ``relative_input`` ||(x - x') / x||_p (with ``p`` and
    ``eps_min``); ``same_prediction`` bool, whether x' keeps the clean top-1 class (None unless
    asked: it costs a forward pass per perturbed input)."""

    difference: dict
    clean_norm: dict
    difference_normalised: torch.Tensor
    delta_norm: torch.Tensor
    relative_explanation: torch.Tensor
    relative_input: torch.Tensor
    p: float
    eps_min: float
    same_prediction: torch.Tensor | None


def _original_maps(model, method, x, target, params, batch_size, ids) -> torch.Tensor:
    return torch.cat([_finite_maps(method, model, x[s:s + batch_size], target[s:s + batch_size],
                                   params, lambda i, s=s: f"image {_name(ids, s + i)}")
                      for s in range(0, x.shape[0], batch_size)])


def perturbed_inputs(x: torch.Tensor, neighbourhood: Neighbourhood, pixel_std, ids, batch_size):
    """Yield ``(images, samples, deltas, inputs)`` per chunk of ``batch_size`` (image, sample)
    pairs taken image-major: ``images``/``samples`` long ``[b]``, ``deltas`` and ``inputs`` =
    x[images] + deltas ``[b, C, H, W]``. Each image's deltas are drawn once, when first needed."""
    n_samples = neighbourhood.n_samples
    total = x.shape[0] * n_samples
    cache: dict[int, torch.Tensor] = {}
    for start in range(0, total, batch_size):
        pairs = range(start, min(start + batch_size, total))
        images = torch.tensor([p // n_samples for p in pairs], device=x.device)
        samples = torch.tensor([p % n_samples for p in pairs], device=x.device)
        for image in sorted(set(images.tolist()) - set(cache)):
            cache[image] = draw_perturbations(
                x[image], n_samples, radius=neighbourhood.radius, noise=neighbourhood.noise,
                pixel_std=pixel_std, seed=neighbourhood.seed,
                key=ids[image] if ids is not None else image)
        deltas = torch.stack([cache[int(i)][int(j)] for i, j in zip(images, samples, strict=True)])
        yield images, samples, deltas, x[images] + deltas
        last = (pairs[-1] + 1) // n_samples  # images before this one are finished
        for image in [i for i in cache if i < last]:
            del cache[image]


def check_stability(p: float, eps_min: float) -> None:
    """The checks of relative input stability's ``p`` (the norm, > 0) and ``eps_min`` (the guard
    for zero divisors, > 0), ``ConfigError("field: why")``."""
    check_number("p", p, 0, low_open=True)
    check_number("eps_min", eps_min, 0, low_open=True)


def _divisor(base: torch.Tensor, eps_min: float) -> torch.Tensor:
    """``base`` with its zeros replaced by ``eps_min``: the divisor of a relative change."""
    return torch.where(base == 0, eps_min, base)


def sample_statistics(model: nn.Module, method: str, x: torch.Tensor, target, *,
                      method_params: dict | None = None,
                      neighbourhood: Neighbourhood = Neighbourhood(), p: float = 2.0,
                      eps_min: float = 1e-6, predictions: bool = False,
                      ids: Sequence | None = None) -> SampleStatistics:
    """One pass of ``method`` over every image's neighbourhood: the ``SampleStatistics`` all four
    metrics reduce. ``x`` ``[N, C, H, W]`` model input, ``target`` ``[N]`` the class explained on
    the clean and on every perturbed input. Raises ``ValueError`` naming the image (and sample)
    of a NaN/inf map."""
    target = check_inputs(x, target)
    neighbourhood.check()
    check_stability(p, eps_min)
    if ids is not None and len(ids) != x.shape[0]:
        raise MetricError(f"ids has {len(ids)} entries for {x.shape[0]} images")
    with model_layout(model, resolve_memory_format("auto", x.device)), guarded(model, method):
        return _statistics(model, method, x.detach(), target, dict(method_params or {}),
                           neighbourhood, p, eps_min, predictions, ids)


def _statistics(model, method, x, target, params, neighbourhood, p, eps_min, predictions,
                ids) -> SampleStatistics:
    batch_size = neighbourhood.batch_size or default_batch_size(x.device)
    pixel_std = pixel_scale(model, neighbourhood.radius_units)
    originals = _original_maps(model, method, x, target, params, batch_size, ids)
    shape = (x.shape[0], neighbourhood.n_samples)
    stats = {name: torch.empty(shape, dtype=torch.float64, device=x.device)
             for name in ("fro", "l1", "linf", "normalised", "delta", "rel_e", "rel_x")}
    same = torch.ones(shape, dtype=torch.bool, device=x.device) if predictions else None
    clean = None
    if predictions:
        with torch.inference_mode():
            clean = torch.cat([model(x[s:s + batch_size]).argmax(dim=1)
                               for s in range(0, x.shape[0], batch_size)])
    # per image, what every chunk of its samples divides by or subtracts (the same values as
    # computed per chunk: elementwise, and a max per map)
    originals_normalised = max_normalised(originals)
    originals_divisor = _divisor(originals, eps_min)
    x_divisor = _divisor(x.double(), eps_min)
    for images, samples, deltas, inputs in perturbed_inputs(x, neighbourhood, pixel_std, ids,
                                                            batch_size):
        maps = _finite_maps(method, model, inputs, target[images], params,
                            lambda b, images=images, samples=samples: (
                                f"image {_name(ids, int(images[b]))} perturbed by sample "
                                f"{int(samples[b])}"))
        original = originals[images]
        change = _flat(maps - original)
        where = (images, samples)
        for name, norm in NORMS.items():
            stats[name][where] = norm(change)
        stats["normalised"][where] = _flat(max_normalised(maps)
                                           - originals_normalised[images]).norm(dim=1)
        stats["delta"][where] = _flat(deltas).norm(dim=1)
        stats["rel_e"][where] = _flat((original - maps).div_(originals_divisor[images])).norm(
            p=p, dim=1)
        stats["rel_x"][where] = _flat((-deltas.double()).div_(x_divisor[images])).norm(
            p=p, dim=1)
        if predictions:
            with torch.inference_mode():
                same[where] = model(inputs).argmax(dim=1) == clean[images]
    flat = _flat(originals)
    return SampleStatistics(
        difference={name: stats[name].cpu() for name in NORMS},
        clean_norm={name: norm(flat).cpu() for name, norm in NORMS.items()},
        difference_normalised=stats["normalised"].cpu(), delta_norm=stats["delta"].cpu(),
        relative_explanation=stats["rel_e"].cpu(), relative_input=stats["rel_x"].cpu(),
        p=p, eps_min=eps_min, same_prediction=None if same is None else same.cpu())


def kept_predictions(model: nn.Module, x: torch.Tensor, *, neighbourhood: Neighbourhood,
                     ids: Sequence | None = None) -> torch.Tensor:
    """Whether each perturbed input keeps the clean top-1 class, bool ``[N, n_samples]`` (a
    forward-only pass over the same deltas as ``sample_statistics``)."""
    neighbourhood.check()
    batch_size = neighbourhood.batch_size or default_batch_size(x.device)
    pixel_std = pixel_scale(model, neighbourhood.radius_units)
    same = torch.ones((x.shape[0], neighbourhood.n_samples), dtype=torch.bool, device=x.device)
    layout = resolve_memory_format("auto", x.device)
    with torch.inference_mode(), model_layout(model, layout):
        clean = torch.cat([model(x[s:s + batch_size]).argmax(dim=1)
                           for s in range(0, x.shape[0], batch_size)])
        for images, samples, _, inputs in perturbed_inputs(x.detach(), neighbourhood, pixel_std,
                                                           ids, batch_size):
            same[images, samples] = model(inputs).argmax(dim=1) == clean[images]
    return same.cpu()


def max_normalised(maps: torch.Tensor) -> torch.Tensor:
    """Each map ``[N, H, W]`` divided by its own max |value|; an all-zero map is returned as it
    is (Quantus' ``normalise_by_max`` also leaves all-zero input unchanged, but divides by the
    max over the whole batch: see ``harness.metrics.robustness``)."""
    peak = maps.flatten(1).abs().amax(dim=1).view(-1, 1, 1)
    return torch.where(peak > 0, maps / torch.where(peak > 0, peak, 1.0), maps)
