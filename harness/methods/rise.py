"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018,
arXiv:1806.07421; reference code eclique/RISE, ``explanations.py`` ``RISE.generate_masks`` and
``RISE.forward``).

N binary ``s x s`` grids, a cell kept with probability ``p``, upsampled bilinearly as
``skimage.transform.resize`` does and cropped at a random shift; the map is
``S = sum_i P(target | x * M_i) M_i / (N p)``, the softmax probability on the image masked in the
model's input space (a masked pixel is the mean colour). Defaults N = 4000, s = 7, p = 0.5. The
masks come from ``image_generator(seed, "masks", salt="rise")`` and are shared by all images, as
the reference's; they are built on the model's device ``batch_size`` at a time.

The reference in detail, its notebooks' settings and where this differs (seeding, memory,
``RISEBatch``): docs/howto/method.md (RISE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import MethodError
from harness.methods._core import register_method
from harness.seeding import image_generator
from harness.settings import check, check_int, check_number, check_seed, check_target_range

GRID_BYTES = 2**31  # the grids [N, s, s] are drawn at once in float64: at most 2 GiB


def upsample_matrix(n_cells: int, size: int) -> torch.Tensor:
    """``[size, n_cells]`` float64 weights of skimage's order-1 resize from ``n_cells`` to
    ``size`` samples (half-pixel centres, mirror boundary: index -k is k, n-1+k is n-1-k)."""
    out = torch.arange(size, dtype=torch.float64)
    source = (out + 0.5) * n_cells / size - 0.5
    low = torch.floor(source)
    frac = source - low
    low = low.long()

    def mirror(index: torch.Tensor) -> torch.Tensor:
        if n_cells == 1:
            return torch.zeros_like(index)
        index = index.abs()
        return torch.where(index > n_cells - 1, 2 * (n_cells - 1) - index, index)

    weights = torch.zeros(size, n_cells, dtype=torch.float64)
    weights.index_put_((torch.arange(size), mirror(low)), 1 - frac, accumulate=True)
    weights.index_put_((torch.arange(size), mirror(low + 1)), frac, accumulate=True)
    return weights


def rise_grids(n_masks: int, grid_size: int, p_keep: float, size: tuple[int, int],
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The random part of the masks: grids ``[N, s, s]`` (float64 0/1) and shifts ``[N, 2]``
    (long: row, column), drawn on the CPU from the seeded generator."""
    cell_h, cell_w = (math.ceil(side / grid_size) for side in size)
    generator = image_generator(seed, "masks", salt="rise")
    grids = (torch.rand((n_masks, grid_size, grid_size), generator=generator) < p_keep).double()
    rows = torch.randint(0, cell_h, (n_masks,), generator=generator)
    cols = torch.randint(0, cell_w, (n_masks,), generator=generator)
    return grids, torch.stack([rows, cols], dim=1)


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int], *,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    """Masks ``[M, H, W]`` in [0, 1] of grids ``[M, s, s]`` and shifts ``[M, 2]``: the grid
    upsampled to ``(s + 1) * cell`` and cropped at the shift, computed on ``device`` in float64
    and cast to ``dtype``."""
    grid_size = grids.shape[1]
    height, width = size
    cell_h, cell_w = (math.ceil(side / grid_size) for side in size)
    up_rows = upsample_matrix(grid_size, (grid_size + 1) * cell_h).to(device)
    up_cols = upsample_matrix(grid_size, (grid_size + 1) * cell_w).to(device)
    shifts = shifts.to(device)
    row_index = shifts[:, :1] + torch.arange(height, device=device)  # [M, H]
    col_index = shifts[:, 1:] + torch.arange(width, device=device)  # [M, W]
    rows = up_rows[row_index]  # [M, H, s]
    cols = up_cols[col_index]  # [M, W, s]
    masks = rows @ grids.to(device) @ cols.transpose(1, 2)
    return masks.to(dtype)


@dataclass(frozen=True)
class RiseSettings:
    """``n_masks`` N, ``grid_size`` s, ``p_keep`` p (the paper's), ``seed`` of the masks,
    ``batch_size`` masked images per forward. The grids ``[N, s, s]`` are drawn at once (float64,
    8 N s^2 bytes, at most 2 GiB); the masks are built ``batch_size`` at a time."""

    n_masks: int = 4000
    grid_size: int = 7
    p_keep: float = 0.5
    seed: int = 0
    batch_size: int = 32

    def check(self) -> None:
        check_int("n_masks", self.n_masks, 1)
        check_int("grid_size", self.grid_size, 1)
        check_number("p_keep", self.p_keep, 0, 1, low_open=True)
        check_seed("seed", self.seed)
        check_int("batch_size", self.batch_size, 1)
        grid_bytes = 8 * self.n_masks * self.grid_size**2
        if grid_bytes > GRID_BYTES:
            raise MethodError(f"n_masks: {self.n_masks} grids of {self.grid_size}x"
                              f"{self.grid_size} cells need {grid_bytes / 2**30:.1f} GiB at once "
                              f"(at most {GRID_BYTES / 2**30:.0f} GiB); lower n_masks or "
                              "grid_size")


@register_method("rise", citation="Petsiuk, Das & Saenko 2018 (arXiv:1806.07421)",
                 settings=RiseSettings)
def rise(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, n_masks: int = 4000,
         grid_size: int = 7, p_keep: float = 0.5, seed: int = 0,
         batch_size: int = 32) -> torch.Tensor:
    """RISE: mean of random smooth masks weighted by the target's softmax probability on the
    masked image, divided by the keep probability (N masks of s x s cells, kept with p).

    ``x`` ``[N, C, H, W]`` -> ``[N, H, W]``. At most ``batch_size`` masked images per forward,
    under ``torch.inference_mode``; the masks are built chunk by chunk on ``x``'s device.
    """
    check(RiseSettings(n_masks, grid_size, p_keep, seed, batch_size))
    n_images, _, height, width = x.shape
    grids, shifts = rise_grids(n_masks, grid_size, p_keep, (height, width), seed)
    masks_per_chunk = max(1, batch_size // n_images)
    images_per_chunk = min(n_images, batch_size)
    total = torch.zeros(n_images, height * width, dtype=torch.float64, device=x.device)
    with torch.inference_mode():
        for start in range(0, n_masks, masks_per_chunk):
            stop = min(start + masks_per_chunk, n_masks)
            masks = rise_masks(grids[start:stop], shifts[start:stop], (height, width),
                               device=x.device, dtype=x.dtype)  # [M, H, W]
            for first in range(0, n_images, images_per_chunk):
                last = min(first + images_per_chunk, n_images)
                inputs = x[first:last, None] * masks[None, :, None]  # [B, M, C, H, W]
                logits = model(inputs.flatten(0, 1))
                if start == 0:
                    check_target_range(target[first:last], logits.shape[1], error=MethodError)
                probs = torch.softmax(logits.float(), dim=1).view(last - first, stop - start, -1)
                chosen = probs.gather(2, target[first:last].view(-1, 1, 1).expand(
                    -1, stop - start, 1))[..., 0]  # [B, M]
                total[first:last] += chosen.double() @ masks.flatten(1).double()
    saliency = total / (n_masks * p_keep)
    return saliency.view(n_images, height, width).to(x.dtype)
