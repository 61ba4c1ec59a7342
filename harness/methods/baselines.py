"""Control baselines: maps that ignore the model (Adebayo et al. 2018 use an edge detector to show
that a method passing a visual check need not depend on the model).

- ``random``: i.i.d. uniform [0, 1) per pixel from a seeded generator;
- ``sobel``: Sobel edge magnitude of the input image (``skimage.filters.sobel`` on the channel
  mean);
- ``center``: an isotropic Gaussian centred on the image (the centre-bias prior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from skimage.filters import sobel
from torch import nn

from harness.methods._core import register_method
from harness.seeding import content_generator
from harness.settings import check, check_number, check_seed

_CONTROL = "Adebayo et al. 2018 (arXiv:1810.03292), input-only controls"
CONTROLS = ("random", "sobel", "center")  # the controls below (the reliability report places them)


@dataclass(frozen=True)
class RandomSettings:
    """``seed`` of the per-image generators."""

    seed: int = 0

    def check(self) -> None:
        check_seed("seed", self.seed)


@register_method("random", citation=_CONTROL, settings=RandomSettings)
def random_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
               seed: int = 0) -> torch.Tensor:
    """Random control: uniform [0, 1) per pixel; each image draws from a generator seeded with
    ``seed`` and the image's values (``harness.seeding.content_generator``), so an image's map is
    the same on any device and in any batch."""
    n_images, _, height, width = x.shape
    maps = []
    for index in range(n_images):
        generator = content_generator(seed, x[index], salt="random")
        maps.append(torch.rand((height, width), generator=generator))
    return torch.stack(maps).to(device=x.device, dtype=x.dtype)


def _sobel(x: torch.Tensor) -> torch.Tensor:
    gray = x.detach().double().mean(dim=1).cpu().numpy()
    edges = np.stack([sobel(image) for image in gray])
    return torch.from_numpy(edges).to(device=x.device, dtype=x.dtype)


@register_method("sobel", citation=_CONTROL)
def sobel_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Edge-detector control: Sobel gradient magnitude of the channel mean of the input (no model,
    no target)."""
    return _sobel(x)


@dataclass(frozen=True)
class CenterSettings:
    """``sigma``: the Gaussian's standard deviation as a fraction of the shorter side."""

    sigma: float = 0.25

    def check(self) -> None:
        check_number("sigma", self.sigma, 0, low_open=True)


@register_method("center", citation="Centre-bias prior (Judd et al. 2009)",
                 settings=CenterSettings)
def center_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
               sigma: float = 0.25) -> torch.Tensor:
    """Centre-prior control: exp(-d^2 / (2 s^2)) with d the distance to the image centre and
    s = ``sigma`` * min(H, W); the same map for every image."""
    check(CenterSettings(sigma))
    n_images, _, height, width = x.shape
    rows = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    distance2 = rows.view(-1, 1) ** 2 + cols.view(1, -1) ** 2
    spread = sigma * min(height, width)
    prior = torch.exp(-distance2 / (2 * spread**2))
    return prior.expand(n_images, height, width).to(device=x.device, dtype=x.dtype).clone()
