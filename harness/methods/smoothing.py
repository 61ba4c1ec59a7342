"""Wrappers that compose with any base method (so "smoothgrad of integrated gradients" exists).

- ``blurred``: the base map convolved with a Gaussian of standard deviation ``sigma`` pixels
  (``scipy.ndimage.gaussian_filter``, reflect boundary, truncate 4 sigma).
- ``smoothgrad``: Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise": the mean over
  ``n`` noisy copies x + N(0, s^2), with s = ``noise`` * (max(x) - min(x)) per image, computed in
  the model's input space. Defaults n = 50, noise = 0.15 (the sanity-check paper's setting).
- ``smoothgrad_sq``: SmoothGrad-Squared (Hooker et al. 2019, "A Benchmark for Interpretability
  Methods in Deep Neural Networks"): the mean of the squared estimates.
- ``vargrad``: VarGrad (Adebayo et al. 2018, "Local Explanation Methods for Deep Neural Networks
  Lack Sensitivity to Parameter Values"): their (population) variance.

What is averaged (``average``): ``"attribution"`` (default where the base has one) averages the raw
signed per-channel attributions, as Smilkov et al. average gradients and as PAIR saliency and
Captum's NoiseTunnel do, then applies the base's channel reduction (``reduce``, default abs-max);
``"map"`` averages the base's final maps (the only choice for map-only bases such as Grad-CAM).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from harness.errors import ConfigError, HarnessError, MethodError
from harness.methods._core import get_method, reduce_channels, register_method, signed_channels
from harness.seeding import content_generator
from harness.settings import check, check_choice, check_int, check_number, check_seed

AVERAGES = ("attribution", "map")


def _check_base(base: str, base_params: dict | None) -> None:
    """The base method exists and its parameters pass its own checks (named ``base_params.*``)."""
    try:
        method = get_method(base)
    except HarnessError as error:
        raise ConfigError(f"base: {error}") from None
    method.validate(dict(base_params or {}), "base_params")


def _base_map(base: str, base_params: dict | None, signed: bool):
    method = get_method(base)
    fn = method.signed if signed else method.fn
    if fn is None:
        raise MethodError(f"base method {base!r} has no signed variant")
    return lambda model, x, target: fn(model, x, target, **dict(base_params or {}))


def _blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    array = maps.detach().double().cpu().numpy()
    blurred = gaussian_filter(array, sigma=(0, sigma, sigma), mode="reflect", truncate=4.0)
    return torch.from_numpy(np.ascontiguousarray(blurred)).to(maps.device, maps.dtype)


@dataclass(frozen=True)
class BlurredSettings:
    """The ``base`` method (and its ``base_params``) and the Gaussian's ``sigma`` in pixels."""

    base: str = "vanilla"
    base_params: dict | None = None
    sigma: float = 2.0

    def check(self) -> None:
        _check_base(self.base, self.base_params)
        check_number("sigma", self.sigma, 0)


def _blurred(model, x, target, *, signed: bool, **params):
    settings = check(BlurredSettings(**params))
    base = _base_map(settings.base, settings.base_params, signed)
    return _blur(base(model, x, target), settings.sigma)


def blurred_signed(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                   **params) -> torch.Tensor:
    """Gaussian blur of the base method's signed map."""
    return _blurred(model, x, target, signed=True, **params)


@register_method("blurred", signed=blurred_signed, settings=BlurredSettings,
                 citation="Gaussian smoothing of a base map (cs231n notebook's blur_image)")
def blurred(model: nn.Module, x: torch.Tensor, target: torch.Tensor, **params) -> torch.Tensor:
    """Blurred: the base method's map convolved with a Gaussian of ``sigma`` pixels."""
    return _blurred(model, x, target, signed=False, **params)


def noise_for_image(x_image: torch.Tensor, n: int, noise: float, seed: int) -> torch.Tensor:
    """``[n, C, H, W]`` Gaussian noise for one image ``[C, H, W]`` with standard deviation
    ``noise * (max - min)`` of that image; drawn on the CPU from a generator seeded with ``seed``
    and the image's values (``harness.seeding.content_generator``), so an image gets the same
    noise whatever batch, position, rank or device it is computed in."""
    generator = content_generator(seed, x_image, salt="smoothgrad")
    spread = float(x_image.max() - x_image.min()) * noise
    draws = torch.randn((n, *x_image.shape), generator=generator, dtype=torch.float32)
    return (draws * spread).to(device=x_image.device, dtype=x_image.dtype)


@dataclass(frozen=True)
class SmoothSettings:
    """The SmoothGrad family's parameters: the ``base`` method (and its ``base_params``), ``n``
    noisy copies, the ``noise`` level (a fraction of each image's value range), ``seed``,
    ``batch_size`` noisy inputs per pass and what is averaged (``average``: ``attribution``
    where the base has one, else ``map``)."""

    base: str = "vanilla"
    base_params: dict | None = None
    n: int = 50
    noise: float = 0.15
    seed: int = 0
    batch_size: int = 16
    average: str | None = None

    def check(self) -> None:
        _check_base(self.base, self.base_params)
        check_int("n", self.n, 1)
        check_number("noise", self.noise, 0)
        check_seed("seed", self.seed)
        check_int("batch_size", self.batch_size, 1)
        if self.average is not None:
            check_choice("average", self.average, AVERAGES)
            if self.average == "attribution" and get_method(self.base).attribution is None:
                raise MethodError(f"average: base method {self.base!r} has no raw attribution; "
                                  "use average: map")

    def averaged(self) -> str:
        """What is averaged: ``average``, or the base's attribution where it has one."""
        if self.average is not None:
            return self.average
        return "attribution" if get_method(self.base).attribution is not None else "map"


def noisy_moments(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                  settings: SmoothSettings, signed: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """First and second moments over ``n`` noisy copies per image of the base estimate.

    The estimate is the base's raw attribution ``[C, H, W]`` (``average="attribution"``) or its map
    ``[H, W]`` (``"map"``). Copies of all images are evaluated in chunks of ``batch_size`` inputs.
    Returns (mean, mean of squares, the ``average`` used), accumulated in float64.
    """
    check(settings)
    method = get_method(settings.base)
    average = settings.averaged()
    n, batch_size = settings.n, settings.batch_size
    if average == "attribution":
        params = {k: v for k, v in dict(settings.base_params or {}).items() if k != "reduce"}
        estimate = lambda m, inputs, t: method.attribution(m, inputs, t, **params)  # noqa: E731
    else:
        estimate = _base_map(settings.base, settings.base_params, signed)
    total = total_sq = None
    pairs = [(i, j) for i in range(x.shape[0]) for j in range(n)]
    noise_cache: dict[int, torch.Tensor] = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        for i in {i for i, _ in chunk} - set(noise_cache):
            noise_cache[i] = noise_for_image(x[i], n, settings.noise, settings.seed)
        inputs = torch.stack([x[i] + noise_cache[i][j] for i, j in chunk])
        images = torch.tensor([i for i, _ in chunk], device=x.device)
        values = estimate(model, inputs, target[images]).detach().double()
        if total is None:
            shape = (x.shape[0], *values.shape[1:])
            total = torch.zeros(shape, dtype=torch.float64, device=x.device)
            total_sq = torch.zeros_like(total)
        total.index_add_(0, images, values)
        total_sq.index_add_(0, images, values * values)
        for i in {i for i, _ in chunk}:
            if chunk[-1][0] > i:  # all copies of image i are done
                noise_cache.pop(i, None)
    return total / n, total_sq / n, average


_SMOOTH_CITES = {
    "smoothgrad": "Smilkov et al. 2017 (arXiv:1706.03825)",
    "smoothgrad_sq": "Hooker et al. 2019 (arXiv:1806.10758)",
    "vargrad": "Adebayo et al. 2018 (arXiv:1810.03677)",
}


def _statistic(statistic: str, mean: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
    if statistic == "mean":
        return mean
    if statistic == "mean_sq":
        return mean_sq
    return (mean_sq - mean * mean).clamp(min=0)


def _smooth(statistic: str, doc: str, signed: bool = False):
    def fn(model: nn.Module, x: torch.Tensor, target: torch.Tensor, **params) -> torch.Tensor:
        settings = SmoothSettings(**params)
        mean, mean_sq, used = noisy_moments(model, x, target, settings, signed=signed)
        value = _statistic(statistic, mean, mean_sq)
        if used == "attribution":
            reduce = dict(settings.base_params or {}).get("reduce", "abs_max")
            value = signed_channels(value) if signed else reduce_channels(value, reduce)
        return value.to(x.dtype)

    fn.__doc__ = doc
    return fn


def _smooth_raw(statistic: str):
    """The statistic of the raw attributions ``[N, C, H, W]`` before the channel reduction (what
    the sanity checks' reference normalisation reads), or None when maps are averaged."""

    def raw(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
            **params) -> torch.Tensor | None:
        settings = check(SmoothSettings(**params))
        if settings.averaged() != "attribution":
            return None
        mean, mean_sq, _ = noisy_moments(model, x, target, settings)
        return _statistic(statistic, mean, mean_sq).to(x.dtype)

    return raw


smoothgrad_signed = _smooth(
    "mean", "SmoothGrad of the base's signed estimate (channel sum or signed map).", signed=True)
register_method("smoothgrad", citation=_SMOOTH_CITES["smoothgrad"], settings=SmoothSettings,
                signed=smoothgrad_signed, raw=_smooth_raw("mean"))(_smooth(
    "mean", "SmoothGrad: mean of the base estimate over n noisy copies of the input."))
register_method("smoothgrad_sq", citation=_SMOOTH_CITES["smoothgrad_sq"], settings=SmoothSettings,
                raw=_smooth_raw("mean_sq"))(_smooth(
    "mean_sq", "SmoothGrad-Squared: mean of the squared base estimate over noisy copies."))
register_method("vargrad", citation=_SMOOTH_CITES["vargrad"], settings=SmoothSettings,
                raw=_smooth_raw("var"))(_smooth(
    "var", "VarGrad: variance of the base estimate over n noisy copies of the input."))
