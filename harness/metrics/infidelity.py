"""Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, NeurIPS 2019, "On the (In)fidelity and
Sensitivity of Explanations"; reference code ``chihkuanyeh/saliency_evaluation``,
``infid_sen_utils.py``: ``get_exp_infid``, ``set_zero_infid``, ``get_imageset``).

INFD(phi, f, x) = E_I[(I^T phi - (f(x) - f(x - I)))^2] over random perturbations I, f the
target's logit; lower is better. With the reference's optimal scaling (``scaling=True``), e = I^T
phi, d = f(x) - f(x - I): beta = mean(d e) / mean(e^2) and the value is mean((d - beta e)^2).
Perturbations as the reference draws them, in [0, 1] pixel units and entering d and e as I / std
in the model's input: ``gaussian`` (10000 draws, I = clip(p - b + 0.2 z, p - 1, p)) or ``square``
(every square of side 1..10 set to the baseline, I binary). For ``[H, W]`` maps e = sum_hw phi_hw
sum_c I_chw. Randomness per image from ``image_generator(seed, id, salt="infidelity")``.

Conventions, peers, exact maps, sampling bias and measured numbers: docs/faithfulness.md
(Infidelity) and the metric reference (docs/metrics.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.errors import ConfigError
from harness.metrics._common import (
    MAPS,
    SCORES,
    baseline_fill,
    clean_scores,
    image_key,
    pixel_scale,
    resolve_batch_size,
    score_stream,
    unit_map,
    validate_maps,
)
from harness.metrics.registry import register_metric
from harness.seeding import image_generator
from harness.settings import (
    check,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_seed,
)

PERTURBATIONS = ("gaussian", "square")
BASELINES = ("black", "zero", "mean")
REFERENCE_GAUSSIAN_COUNT = 10_000
REFERENCE_SQUARE_SIZES = tuple(range(1, 11))
PAIRS_PER_PASS = 1 << 16  # (image, perturbation) pairs kept per scoring pass (e and f: 1 MB)


@dataclass(frozen=True)
class InfidelityResult:
    """Per-image infidelity ``values`` ``[N]`` (``scaled`` if ``scaling`` else ``unscaled``),
    both forms ``[N]``, the optimal scale ``beta`` ``[N]``, and the settings used."""

    values: torch.Tensor
    scaled: torch.Tensor
    unscaled: torch.Tensor
    beta: torch.Tensor
    n_perturbations: int
    perturbation: str
    baseline: str
    noise: float
    square_sizes: tuple[int, ...]
    score: str
    scaling: bool


def square_count(height: int, width: int, sizes: Sequence[int] = REFERENCE_SQUARE_SIZES) -> int:
    """Number of squares of the given sides at every position: sum (H - s + 1) (W - s + 1) over
    the sides that fit in the image (a larger side has no position)."""
    return sum(max(height - s + 1, 0) * max(width - s + 1, 0) for s in sizes)


def squares(index: torch.Tensor, height: int, width: int,
            sizes: Sequence[int] = REFERENCE_SQUARE_SIZES
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(side, top, left) ``[K]`` of squares by their index in the reference's enumeration order
    (``get_imageset``: for each side, for each top row, for each left column)."""
    sides = torch.tensor(list(sizes), dtype=torch.long, device=index.device)
    counts = (height - sides + 1).clamp(min=0) * (width - sides + 1).clamp(min=0)
    ends = counts.cumsum(0)
    which = torch.searchsorted(ends, index, right=True)
    local = index - (ends - counts)[which]
    columns = width - sides[which] + 1
    return sides[which], local // columns, local % columns


def _count(settings: InfidelitySettings, height: int, width: int) -> int:
    """The number of perturbations per image for an image of ``height`` x ``width`` (the settings
    already checked): the square sides must fit the image, and a sampled count of squares be at
    most the number of squares."""
    sizes = settings.square_sizes
    if min(sizes) > min(height, width):
        raise ConfigError(f"square_sizes: no side fits the {height} x {width} image, got "
                          f"{list(sizes)!r}")
    least = 2 if settings.scaling else 1
    if settings.perturbation == "gaussian":
        count = settings.n_perturbations
        return REFERENCE_GAUSSIAN_COUNT if count is None else count
    total = square_count(height, width, sizes)
    count = total if settings.n_perturbations is None else settings.n_perturbations
    return check_int("n_perturbations", count, least, total)


def normal_draws(generator: torch.Generator, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``count`` draws of N(0, 1) noise of ``shape`` (float32, CPU), the same numbers as ``count``
    calls ``torch.randn(shape, generator=generator)`` in order: one call when the draw's size is
    a multiple of 16 (torch's CPU normal sampler fills blocks of 16 from consecutive uniforms, so
    one large draw is the small ones concatenated; a test checks it), else one call per draw."""
    if math.prod(shape) % 16 == 0:
        return torch.randn((count, *shape), generator=generator, dtype=torch.float32)
    return torch.stack([torch.randn(shape, generator=generator, dtype=torch.float32)
                        for _ in range(count)])


def _integral(saliency: torch.Tensor) -> torch.Tensor:
    """Zero-padded summed-area tables ``[N, H + 1, W + 1]`` (float64) of the maps."""
    table = saliency.double().cumsum(1).cumsum(2)
    return torch.nn.functional.pad(table, (1, 0, 1, 0))


def infidelity(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target, *,
               perturbation: str = "gaussian", n_perturbations: int | None = None,
               noise: float = 0.2, square_sizes: Sequence[int] = REFERENCE_SQUARE_SIZES,
               baseline: str = "black", score: str = "logit", scaling: bool = True,
               seed: int = 0, ids: Sequence[str] | None = None,
               batch_size: int | None = None) -> InfidelityResult:
    """Infidelity of maps ``saliency`` ``[N, H, W]`` for inputs ``x`` ``[N, C, H, W]`` (the model's
    normalised input) and classes ``target`` ``[N]``; lower is better. See the module docstring
    for the definition, the perturbations and the peers.

    ``n_perturbations``: None = the reference's count (10000 Gaussian draws; every square of the
    ``square_sizes``), or an integer (>= 2 with ``scaling``: beta fits one perturbation exactly,
    so every map would score 0). ``batch_size`` perturbed inputs per forward (default 8 on the
    CPU, 256 on accelerators)."""
    settings = check(InfidelitySettings(
        perturbation=perturbation, n_perturbations=n_perturbations, noise=noise,
        square_sizes=square_sizes, baseline=baseline, score=score, scaling=scaling,
        batch_size=batch_size))
    check_seed("seed", seed)
    target = validate_maps(x, saliency, target, ids)
    n_images, _, height, width = x.shape
    count = _count(settings, height, width)
    sizes = tuple(square_sizes)
    batch_size = resolve_batch_size(batch_size, x.device)
    x = x.detach()
    maps = saliency.detach().to(x.device)
    mean, std = pixel_scale(model, x)
    fill = baseline_fill(baseline, x, mean, std, BASELINES)  # [N, C, 1, 1]
    clean = clean_scores(model, x, target, score=score, batch_size=batch_size, ids=ids)
    setting = _Setting(perturbation, count, float(noise), sizes, score, batch_size, mean, std)
    scaled = torch.empty(n_images, dtype=torch.float64)
    unscaled = torch.empty(n_images, dtype=torch.float64)
    beta = torch.empty(n_images, dtype=torch.float64)
    group = max(1, PAIRS_PER_PASS // count)  # whole images per pass: memory O(batch + count)
    for start in range(0, n_images, group):
        images = range(start, min(start + group, n_images))
        explained, perturbed = _group_scores(model, x, maps, target, fill, images, setting, seed,
                                             ids)
        drop = clean[start:images.stop, None] - perturbed  # d = f(x) - f(x - I)
        power = (explained ** 2).mean(1)
        fitted = torch.where(power > 0, (drop * explained).mean(1) / power.where(power > 0, 1.0),
                             0.0)
        beta[start:images.stop] = fitted
        scaled[start:images.stop] = ((drop - fitted[:, None] * explained) ** 2).mean(1)
        unscaled[start:images.stop] = ((drop - explained) ** 2).mean(1)
    return InfidelityResult(scaled if scaling else unscaled, scaled, unscaled, beta, count,
                            perturbation, baseline, float(noise), sizes, score, bool(scaling))


@dataclass(frozen=True)
class _Setting:
    perturbation: str
    count: int
    noise: float
    sizes: tuple[int, ...]
    score: str
    batch_size: int
    mean: torch.Tensor  # [1, C, 1, 1]
    std: torch.Tensor


def _group_scores(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                  fill: torch.Tensor, images: range, setting: _Setting, seed: int,
                  ids: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """e = I^T phi and f(x - I) ``[len(images), count]`` (float64, CPU) for the images of one
    scoring pass, each image's perturbations drawn from its own generator, in order."""
    _, channels, height, width = x.shape
    count, mean, std = setting.count, setting.mean, setting.std
    generators = {i: image_generator(seed, image_key(ids, i), salt="infidelity") for i in images}
    explained = torch.empty(len(images), count, dtype=torch.float64)
    if setting.perturbation == "square":
        total = square_count(height, width, setting.sizes)
        # every square in the reference's order, or a seeded sample of distinct squares (the
        # slice is cloned so the full permutation is not kept alive)
        chosen = {i: None if count == total else
                  torch.randperm(total, generator=generators[i])[:count].clone() for i in images}
        tables = {i: _integral(maps[i:i + 1])[0] for i in images}

    if setting.perturbation == "gaussian":  # per image, what every chunk of its draws reuses
        pixels = {i: x[i] * std + mean for i in images}
        lowest = {i: pixels[i] - 1 for i in images}
        centre = {i: pixels[i] - (fill[i] * std + mean) for i in images}
        maps64 = {i: maps[i].double() for i in images}

    def build(begin: int, end: int) -> torch.Tensor:
        inputs = []
        for local in range(begin // count, (end - 1) // count + 1):
            image = images[local]
            first = max(begin, local * count) - local * count
            last = min(end, (local + 1) * count) - local * count
            if setting.perturbation == "gaussian":
                z = normal_draws(generators[image], last - first, (channels, height, width))
                z = z.to(x.device, x.dtype)
                # I = min(p, max(p - 1, p - b + noise z)) in pixels, in place on z: the same
                # operations on the same operands as written out (a + b == b + a exactly)
                removed = z.mul_(setting.noise).add_(centre[image])
                torch.maximum(lowest[image], removed, out=removed)
                torch.minimum(pixels[image], removed, out=removed)
                perturbation_model = removed.div_(std)  # I in the model's input space
                chunk = x[image] - perturbation_model
                e = (perturbation_model.sum(1).double() * maps64[image]).sum((1, 2))
            else:
                index = (torch.arange(first, last) if chosen[image] is None
                         else chosen[image][first:last]).to(x.device)
                side, top, left = squares(index, height, width, setting.sizes)
                rows = torch.arange(height, device=x.device)
                cols = torch.arange(width, device=x.device)
                in_rows = (rows >= top[:, None]) & (rows < (top + side)[:, None])
                in_cols = (cols >= left[:, None]) & (cols < (left + side)[:, None])
                inside = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
                chunk = torch.where(inside, fill[image], x[image])
                table = tables[image]
                e = (table[top + side, left + side] - table[top, left + side]
                     - table[top + side, left] + table[top, left])
            explained[local, first:last] = e.cpu()
            inputs.append(chunk)
        return torch.cat(inputs)

    owners = torch.arange(images.start, images.stop).repeat_interleave(count)
    perturbed = score_stream(model, owners, build, target, score=setting.score,
                             batch_size=setting.batch_size, ids=ids)
    return explained, perturbed.view(len(images), count)


# ----------------------------------------------------------------------------- registry entry


@dataclass(frozen=True)
class InfidelitySettings:
    """Settings of ``infidelity`` (defaults: the reference's: 10000 Gaussian draws of noise 0.2
    around a black baseline, the target's logit, optimal scaling). ``n_perturbations`` None: the
    reference's count (10000 Gaussian draws; every square of ``square_sizes``); a smaller integer
    is the practical setting for large runs (each perturbation is one forward pass per image).
    ``map``: ``signed`` (default) reads the method's signed map where it has one, else its own
    map; ``absolute`` always its own map (see ``harness.metrics._common.unit_map``). Each record
    says which (``map``). ``batch_size`` None: the device's default (8 on the CPU, 256 on CUDA).
    The random draws use the experiment's seed and each image's id."""

    perturbation: str = "gaussian"
    n_perturbations: int | None = None
    noise: float = 0.2
    square_sizes: list = field(default_factory=lambda: list(REFERENCE_SQUARE_SIZES))
    baseline: str = "black"
    score: str = "logit"
    scaling: bool = True
    map: str = "signed"
    batch_size: int | None = None
    methods: list | None = None

    def check(self) -> None:
        check_choice("perturbation", self.perturbation, PERTURBATIONS)
        check_int("n_perturbations", self.n_perturbations, 1, optional=True)
        check_bool("scaling", self.scaling)
        if self.scaling and self.n_perturbations == 1:
            raise ConfigError("n_perturbations: must be an integer >= 2 with scaling (one "
                              "perturbation is fitted exactly: every map would score 0), got 1")
        check_number("noise", self.noise, 0, low_open=True)
        sides = self.square_sizes
        if (isinstance(sides, str) or not isinstance(sides, Sequence) or not sides
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides)
                or len(set(sides)) != len(sides)):
            raise ConfigError(f"square_sizes: must be distinct integer sides >= 1, got "
                              f"{sides!r}")
        check_choice("baseline", self.baseline, BASELINES)
        check_choice("score", self.score, SCORES)
        check_choice("map", self.map, MAPS)
        check_int("batch_size", self.batch_size, 1, optional=True)


@register_metric("infidelity", settings=InfidelitySettings, direction="down",
                 citation="Yeh et al. 2019 (arXiv:1901.09392), chihkuanyeh/saliency_evaluation")
def _infidelity_records(unit, settings: InfidelitySettings) -> list[dict]:
    """Infidelity: mean squared error between the map's prediction of the score change under
    random perturbations and the actual change (optimally scaled); lower is better."""
    saliency, used = unit_map(unit, settings.map)
    result = infidelity(unit.model, unit.x, saliency, unit.target,
                        perturbation=settings.perturbation,
                        n_perturbations=settings.n_perturbations, noise=settings.noise,
                        square_sizes=settings.square_sizes, baseline=settings.baseline,
                        score=settings.score, scaling=settings.scaling, seed=unit.seed,
                        ids=list(unit.ids), batch_size=settings.batch_size)
    return [{"image_id": i, "value": float(v), "scaled": float(a), "unscaled": float(b),
             "beta": float(beta), "map": used, "n_perturbations": result.n_perturbations}
            for i, v, a, b, beta in zip(unit.ids, result.values.tolist(), result.scaled.tolist(),
                                        result.unscaled.tolist(), result.beta.tolist(),
                                        strict=True)]
