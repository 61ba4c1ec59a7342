"""Substrates: what removed pixels are replaced by (deletion) or revealed from (insertion).

Each substrate maps model inputs ``[N, C, H, W]`` to same-shaped replacement images in the model's
input space. ``make_substrate(spec)`` accepts a name, ``{"name": ..., **params}`` or a callable.

- ``zero``: zeros in the model's input space; for mean/std-normalised models, the dataset mean
  colour (RISE's deletion substrate, ``torch.zeros_like``).
- ``mean``: each image's own per-channel spatial mean.
- ``rise_blur``: RISE's insertion substrate: ``conv2d(x, gkern(11, 5), padding=5)``, where
  ``gkern(klen, nsig)`` is ``scipy.ndimage.gaussian_filter`` (reflect boundary) of an 11x11 delta
  with sigma 5, applied per channel with zero padding. A nearly flat 11x11 kernel; NOT torchvision's
  ``GaussianBlur(11, 5)`` (Petsiuk et al. 2018, reference ``evaluation.py``).
- ``blur``: a Gaussian blur with standard deviation ``sigma`` pixels (separable, kernel radius
  ceil(4 sigma), reflect padding).
- ``uniform``: i.i.d. uniform noise over each image's [min, max] range, from a generator seeded with
  ``seed`` and the image's values (the same draw whatever batch the image is in).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from harness.errors import ConfigError, MetricError
from harness.registry import lookup
from harness.seeding import content_generator
from harness.settings import check_number

Substrate = Callable[[torch.Tensor], torch.Tensor]
SUBSTRATES: dict[str, Callable[..., torch.Tensor]] = {}


def _substrate(name: str):
    def add(fn):
        SUBSTRATES[name] = fn
        return fn

    return add


def gkern(klen: int = 11, nsig: float = 5.0) -> torch.Tensor:
    """RISE's kernel ``[3, 3, klen, klen]``: scipy ``gaussian_filter`` of a centred delta, placed
    on the channel diagonal (each channel blurred separately)."""
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    kernel = gaussian_filter(delta, nsig)
    weights = np.zeros((3, 3, klen, klen))
    for channel in range(3):
        weights[channel, channel] = kernel
    return torch.from_numpy(weights.astype("float32"))


@_substrate("zero")
def zero(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


@_substrate("mean")
def mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()


@_substrate("rise_blur")
def rise_blur(x: torch.Tensor, klen: int = 11, nsig: float = 5.0) -> torch.Tensor:
    if x.shape[1] != 3:
        raise MetricError(f"rise_blur needs 3-channel inputs, got {x.shape[1]}")
    # The same operator as RISE's F.conv2d(x, gkern(klen, nsig), padding=klen // 2), computed
    # cheaply: gkern's 3x3 channel matrix is diagonal (depthwise), and scipy's gaussian_filter of
    # a delta filters one axis after the other, so the 2-D kernel is the outer product of the 1-D
    # filtered delta (equal to 1e-18); zero padding commutes with the split. 22 instead of 363
    # multiply-adds per output pixel; a test compares with the dense reference convolution.
    delta = np.zeros(klen)
    delta[klen // 2] = 1
    line = torch.from_numpy(gaussian_filter1d(delta, nsig).astype("float32"))
    line = line.to(device=x.device, dtype=x.dtype)
    pad = klen // 2
    out = F.conv2d(x, line.view(1, 1, klen, 1).expand(3, 1, klen, 1), padding=(pad, 0), groups=3)
    return F.conv2d(out, line.view(1, 1, 1, klen).expand(3, 1, 1, klen), padding=(0, pad),
                    groups=3)


@_substrate("blur")
def blur(x: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    check_number("substrate.sigma", sigma, 0, low_open=True)
    radius = max(1, math.ceil(4 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(device=x.device, dtype=x.dtype)
    channels = x.shape[1]
    pad_h, pad_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    out = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect")
    vertical = kernel[radius - pad_h: radius + pad_h + 1].view(1, 1, -1, 1)
    out = F.conv2d(out, vertical.expand(channels, 1, -1, 1), groups=channels)
    out = F.pad(out, (pad_w, pad_w, 0, 0), mode="reflect")
    horizontal = kernel[radius - pad_w: radius + pad_w + 1].view(1, 1, 1, -1)
    return F.conv2d(out, horizontal.expand(channels, 1, 1, -1), groups=channels)


@_substrate("uniform")
def uniform(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    noise = []
    for image in x:
        generator = content_generator(seed, image, salt="uniform")
        draw = torch.rand(image.shape, generator=generator, dtype=torch.float32)
        low, high = float(image.min()), float(image.max())
        noise.append(draw * (high - low) + low)
    return torch.stack(noise).to(device=x.device, dtype=x.dtype)


def list_substrates() -> list[str]:
    return sorted(SUBSTRATES)


def make_substrate(spec: str | dict | Substrate) -> tuple[Substrate, str]:
    """(function, description) for a substrate given by name, ``{"name": ..., **params}`` or a
    callable ``[N, C, H, W] -> [N, C, H, W]``."""
    if callable(spec):
        return spec, getattr(spec, "__name__", "callable")
    if isinstance(spec, dict):
        params = {k: v for k, v in spec.items() if k != "name"}
        if "name" not in spec:
            raise ConfigError(f"substrate: {spec!r} needs a 'name' (one of: "
                              f"{', '.join(list_substrates())})")
        fn = lookup(SUBSTRATES, "substrate", spec["name"])
        text = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        return partial(fn, **params), f"{spec['name']}({text})" if text else spec["name"]
    return lookup(SUBSTRATES, "substrate", spec), str(spec)
