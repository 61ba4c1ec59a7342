"""Imputers for ROAD: noisy linear imputation (a batched multigrid solver in torch), mean, zero.

Definitions of the ROAD reference code (Rong, Leemann et al., ICML 2022;
``tleemann/road_evaluation`` ``road/imputations.py``): ``linear`` (``NoisyLinearImputer``): every
removed pixel is the weighted mean of its in-image 8 neighbours (1/6 edge, 1/12 diagonal), per
channel, plus ``noise * N(0, 1)`` on imputed pixels only; ``mean`` (``ChannelMeanImputer``,
``"fixed"``): the image's channel means; ``zero`` (``ZeroImputer``): a constant ``fill`` per
channel. The linear system is solved for all images and channels at once (float64 iterative
refinement around float32 multigrid-preconditioned conjugate gradients) until ``||b - A u|| <=
rtol ||b||`` per image and channel.

The system, its solvability, the solver's parts and its tests: docs/faithfulness.md (ROAD
imputers); speed: docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from harness.errors import MetricError
from harness.settings import check_int, check_number

EDGE_WEIGHT = 1.0 / 6.0
DIAGONAL_WEIGHT = 1.0 / 12.0
IMPUTERS = ("linear", "mean", "zero")
# the 3 x 3 offsets in row-major order; index 4 is the centre
OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
# over-correction of the piecewise-constant coarse-grid correction (unsmoothed aggregation
# under-estimates the smooth error's amplitude); tuned on 224 x 224 ROAD masks (Grad-CAM and
# gradient maps): 1.5 took the fewest iterations of 1.0-2.0
COARSE_SCALE = 1.5
# the coarsest level holds at most this many cells and is solved exactly (a dense inverse)
COARSEST_CELLS = 256
# coarse visits per level (1: V-cycle; (2, 2, 2) was a W-cycle on the top levels: fewer
# iterations, not less time on a CPU) and Jacobi sweeps before and after the coarse visit
CYCLE_VISITS = (1,)
SMOOTHING = 1
# default relative residual of the float64 refinement, and the float32 CG's cut per round
RTOL = 1e-8
INNER_REDUCTION = 1e-3


class SingularImputationError(MetricError):
    """Every pixel of an image is removed: its linear system has no kept pixel to anchor it."""


class ImputationNotConvergedError(MetricError, RuntimeError):
    """The iterative solver did not meet its residual criterion within ``max_iter`` iterations."""


def neighbour_weight(dy: int, dx: int) -> float:
    """The reference's weight of offset (dy, dx): 1/6 edge, 1/12 diagonal, 0 for the centre."""
    if (dy, dx) == (0, 0):
        return 0.0
    return DIAGONAL_WEIGHT if dy != 0 and dx != 0 else EDGE_WEIGHT


def _name(ids: Sequence | None, index: int) -> str:
    return str(ids[index]) if ids is not None else f"#{index}"


def validate_removed(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Check ``x`` ``[N, C, H, W]`` and ``removed`` ``[N, H, W]``; return ``removed`` as bool on
    ``x``'s device."""
    if x.ndim != 4:
        raise MetricError(f"x must be [N, C, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise MetricError(f"x must be a floating-point tensor, got {x.dtype}")
    n_images, _, height, width = x.shape
    if tuple(removed.shape) != (n_images, height, width):
        raise MetricError(f"removed has shape {tuple(removed.shape)}; x {tuple(x.shape)} needs "
                         f"[N, H, W] = {(n_images, height, width)}")
    if removed.dtype != torch.bool:
        raise MetricError(f"removed must be a bool tensor (True = removed), got {removed.dtype}")
    return removed.to(x.device)


def per_channel(value: float | Sequence[float], channels: int, name: str) -> tuple[float, ...]:
    """A number (any ``numbers.Real``: int, float, numpy scalars) or one per channel, as a tuple
    of ``channels`` Python floats."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (float(value),) * channels
    try:
        items = tuple(value)
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise MetricError(f"{name} must be a number or one number per channel, got "
                         f"{value!r}") from None
    if len(values) != channels:
        raise MetricError(f"{name} has {len(values)} values for {channels} channels")
    return values


# ---------------------------------------------------------------------------------------------
# multigrid hierarchy


def _neighbour_sum(u: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij u_j over the in-image neighbours j of every pixel of ``u`` ``[..., H, W]``.

    The weights are (outer([1, 2, 1], [1, 2, 1]) - 4 delta) / 12, so this is a separable
    [1, 2, 1] filter in each direction (zero outside the image) minus 4 u, over 12: six shifted
    adds instead of a convolution (single-channel convolutions are slow on CPUs)."""
    rows = u * 2
    rows[..., 1:].add_(u[..., :-1])
    rows[..., :-1].add_(u[..., 1:])
    both = rows * 2
    both[..., 1:, :].add_(rows[..., :-1, :])
    both[..., :-1, :].add_(rows[..., 1:, :])
    return both.sub_(u, alpha=4).mul_(1.0 / 12.0)


def _restrict(u: torch.Tensor) -> torch.Tensor:
    """Sums over 2 x 2 aggregates (P^T for piecewise-constant P): ``[..., H, W]`` ->
    ``[..., ceil(H/2), ceil(W/2)]`` (an odd last row or column forms aggregates of its own)."""
    out = u[..., ::2, ::2].clone()
    for ay, ax in ((0, 1), (1, 0), (1, 1)):
        part = u[..., ay::2, ax::2]
        out[..., : part.shape[-2], : part.shape[-1]] += part
    return out


def _add_prolonged(z: torch.Tensor, weight: torch.Tensor | float, coarse: torch.Tensor
                   ) -> torch.Tensor:
    """z += weight * P coarse, P piecewise constant on 2 x 2 aggregates (``z`` ``[..., H, W]``,
    ``coarse`` ``[..., ceil(H/2), ceil(W/2)]``), as four strided in-place updates."""
    height, width = z.shape[-2:]
    for ay in (0, 1):
        for ax in (0, 1):
            part = z[..., ay::2, ax::2]
            source = coarse[..., : part.shape[-2], : part.shape[-1]]
            if isinstance(weight, torch.Tensor):
                part.addcmul_(weight[..., ay::2, ax::2], source)
            else:
                part.add_(source, alpha=weight)
    return z


def _even(u: torch.Tensor) -> torch.Tensor:
    """Pad the last two dimensions with zeros to even sizes."""
    height, width = u.shape[-2:]
    if height % 2 == 0 and width % 2 == 0:
        return u
    return F.pad(u, (0, width % 2, 0, height % 2))


def _galerkin(stencil: torch.Tensor) -> torch.Tensor:
    """Coarse operator P^T A P for 2 x 2 aggregates (P piecewise constant): ``stencil``
    ``[N, 9, h, w]`` (coefficient of neighbour ``OFFSETS[k]`` at each pixel) ->
    ``[N, 9, ceil(h/2), ceil(w/2)]``. Fine pixel 2I + a couples to 2I + a + o, which lies in
    aggregate I + floor((a + o) / 2)."""
    stencil = _even(stencil)
    coarse = stencil.new_zeros(stencil.shape[0], 9, stencil.shape[2] // 2, stencil.shape[3] // 2)
    for ay in (0, 1):
        for ax in (0, 1):
            part = stencil[:, :, ay::2, ax::2]
            for k, (dy, dx) in enumerate(OFFSETS):
                target = ((ay + dy) // 2 + 1) * 3 + (ax + dx) // 2 + 1
                coarse[:, target] += part[:, k]
    return coarse


@contextlib.contextmanager
def _one_thread():
    """LAPACK on these small matrices, single-threaded: with 2 threads on a loaded CPU it was
    measured 30x slower (threads waiting on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _dense_inverse(stencil: torch.Tensor) -> torch.Tensor:
    """``[N, n, n]`` inverses (float32, computed in float64) of the operators given as 9-point
    stencils ``[N, 9, h, w]``, n = h * w; symmetric, so they also act from the right."""
    n_images, _, height, width = stencil.shape
    cells = height * width
    matrix = stencil.new_zeros(n_images, cells, cells, dtype=torch.float64)
    rows = torch.arange(cells, device=stencil.device)
    row_y, row_x = rows // width, rows % width
    for k, (dy, dx) in enumerate(OFFSETS):
        y, x = row_y + dy, row_x + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        values = stencil[:, k].reshape(n_images, -1)[:, rows[inside]].double()
        matrix[:, rows[inside], (y * width + x)[inside]] = values
    with _one_thread():
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(matrix))
    # entries decay exponentially away from the diagonal where many pixels are kept; ones below
    # float32's normal range (denormals: very slow arithmetic on CPUs) are dropped
    tiny = 1e-12 * inverse.abs().amax(dim=(1, 2), keepdim=True)
    return torch.where(inverse.abs() < tiny, 0.0, inverse).float()


class _Hierarchy:
    """The operators of one batch of masks ``[N, H, W]`` (shared by all channels): level 0 is the
    fine grid (a separable filter), levels >= 1 are Galerkin 9-point stencils in float32, and the
    coarsest level (at most ``COARSEST_CELLS`` cells) a dense inverse."""

    def __init__(self, removed: torch.Tensor):
        device = removed.device
        n_images, height, width = removed.shape
        active = removed[:, None].float()  # [N, 1, H, W]
        ones = torch.ones(1, 1, height, width, dtype=torch.float64, device=device)
        diagonal = _neighbour_sum(ones)  # [1, 1, H, W]: the in-image neighbours' weights
        # A u = active * (D u - (S u - 4 u) / 12) = centre * u + edge * S u (S: [1, 2, 1]^2)
        self.centre = {torch.float64: active.double() * (diagonal + 1.0 / 3.0)}
        self.centre[torch.float32] = self.centre[torch.float64].float()
        self.edge = {torch.float32: active / -12.0, torch.float64: active.double() / -12.0}
        self.smoother = active / diagonal.float()  # Jacobi (omega = 1), kept pixels 0
        self.coarse_scale = COARSE_SCALE * active
        # the fine operator restricted to removed pixels, as stencils, to build the coarse levels
        padded = F.pad(active, (1, 1, 1, 1))
        fine = torch.empty(n_images, 9, height, width, device=device)
        for k, (dy, dx) in enumerate(OFFSETS):
            if k == 4:
                fine[:, k] = (diagonal.float() * active)[:, 0]
            else:
                neighbour = padded[:, 0, 1 + dy: 1 + dy + height, 1 + dx: 1 + dx + width]
                fine[:, k] = -neighbour_weight(dy, dx) * active[:, 0] * neighbour
        self.stencils: list[torch.Tensor] = []
        self.inverse_diagonals: list[torch.Tensor] = []
        stencil = fine
        while stencil.shape[2] * stencil.shape[3] > COARSEST_CELLS:
            stencil = _galerkin(stencil)
            centre = stencil[:, 4]
            centre[centre == 0] = 1.0  # aggregates with no removed pixel: identity rows
            self.stencils.append(stencil)
            self.inverse_diagonals.append(1.0 / stencil[:, 4:5])
        if not self.stencils:  # a tiny image: the fine grid is the coarsest level
            centre = fine[:, 4]
            centre[centre == 0] = 1.0
        self.coarsest_inverse = _dense_inverse(stencil)
        self._buffers: dict = {}

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.dtype, tuple(like.shape))
        if key not in self._buffers:
            self._buffers[key] = torch.empty_like(like)
        return self._buffers[key]

    def fine(self, u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` = A u on the fine grid (``u`` zero on kept pixels; float32 or float64)."""
        rows = self._buffer("rows", u)
        torch.mul(u, 2.0, out=rows)
        rows[..., 1:].add_(u[..., :-1])
        rows[..., :-1].add_(u[..., 1:])
        torch.mul(rows, 2.0, out=out)
        out[..., 1:, :].add_(rows[..., :-1, :])
        out[..., :-1, :].add_(rows[..., 1:, :])
        return out.mul_(self.edge[u.dtype]).addcmul_(self.centre[u.dtype], u)

    def coarse(self, level: int, u: torch.Tensor) -> torch.Tensor:
        """A_level u with the level's 9-point stencils (zero outside the grid)."""
        stencil = self.stencils[level - 1]
        height, width = u.shape[-2:]
        out = stencil[:, 4:5] * u
        for k, (dy, dx) in enumerate(OFFSETS):
            if k == 4:
                continue
            y0, y1 = max(0, -dy), height - max(0, dy)
            x0, x1 = max(0, -dx), width - max(0, dx)
            out[..., y0:y1, x0:x1].addcmul_(stencil[:, k: k + 1, y0:y1, x0:x1],
                                            u[..., y0 + dy: y1 + dy, x0 + dx: x1 + dx])
        return out

    def defect(self, level: int, residual: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """residual - A z (a new tensor)."""
        if level == 0:
            product = self.fine(z, self._buffer("product", z))
            return torch.sub(residual, product, out=product)
        return residual - self.coarse(level, z)

    def cycle(self, level: int, residual: torch.Tensor) -> torch.Tensor:
        """One multigrid cycle from a zero guess (``CYCLE_VISITS[level]`` coarse visits,
        ``SMOOTHING`` Jacobi sweeps before and as many after: symmetric), an SPD approximation
        of A^-1 applied to ``residual`` (float32)."""
        if level == len(self.stencils):  # the coarsest level: exact
            # [N, C, n] x [N, n, n] as a broadcast product (BLAS batched matmul of these small
            # sizes was slow with threads on a loaded CPU)
            shape = residual.shape
            flat = residual.reshape(shape[0], shape[1], -1, 1)
            return (flat * self.coarsest_inverse[:, None]).sum(dim=2).view(shape)
        smoother = self.smoother if level == 0 else self.inverse_diagonals[level - 1]
        z = torch.mul(residual, smoother, out=self._buffer("z", residual)) if level == 0 \
            else residual * smoother
        for _ in range(SMOOTHING - 1):
            z.addcmul_(smoother, self.defect(level, residual, z))
        coarse_residual = _restrict(self.defect(level, residual, z))
        correction = self.cycle(level + 1, coarse_residual)
        visits = CYCLE_VISITS[level] if level < len(CYCLE_VISITS) else 1
        for _ in range(visits - 1):
            correction += self.cycle(level + 1, self.defect(level + 1, coarse_residual,
                                                            correction))
        _add_prolonged(z, self.coarse_scale if level == 0 else COARSE_SCALE, correction)
        for _ in range(SMOOTHING):
            z.addcmul_(smoother, self.defect(level, residual, z))
        return z


def _to_float32(values: torch.Tensor) -> torch.Tensor:
    """float32 copy with entries below 1e-30 set to 0: a residual that is exact in places has
    tiny float64 entries that would become float32 denormals (very slow arithmetic on CPUs)."""
    return torch.where(values.abs() < 1e-30, 0.0, values).float()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per (image, channel) inner products of ``[N, C, H, W]`` tensors -> ``[N, C]``."""
    return (a * b).sum(dim=(2, 3))


def _inner_pcg(levels: _Hierarchy, rhs: torch.Tensor, active: torch.Tensor,
               reduction: torch.Tensor, max_iter: int) -> tuple[torch.Tensor, int]:
    """float32 preconditioned CG for A d = ``rhs`` on the systems where ``active`` ``[N, C]``,
    until each residual norm fell by its ``reduction`` ``[N, C]`` (or ``max_iter``); systems
    that got there are frozen. Returns (d, iterations)."""
    d = torch.zeros_like(rhs)
    residual = rhs.clone()
    goal = reduction * torch.linalg.vector_norm(rhs.flatten(2), dim=2)
    done = ~active
    z = levels.cycle(0, residual)
    direction = z.clone()
    product = torch.empty_like(rhs)
    rz = _dot(residual, z)
    iterations = 0
    while iterations < max_iter and not bool(done.all()):
        iterations += 1
        levels.fine(direction, product)
        curvature = _dot(direction, product)
        step = torch.where(done, 0.0, rz / curvature)[..., None, None]
        d.addcmul_(step, direction)
        residual.addcmul_(step, product, value=-1.0)
        done |= torch.linalg.vector_norm(residual.flatten(2), dim=2) <= goal
        if bool(done.all()):
            break
        z = levels.cycle(0, residual)
        rz_next = _dot(residual, z)
        beta = torch.where(done, 0.0, rz_next / rz)[..., None, None]
        direction.mul_(beta).add_(z)
        rz = rz_next
    return d, iterations


def check_not_singular(removed: torch.Tensor, ids: Sequence | None = None) -> None:
    """Raise ``SingularImputationError`` naming the first image whose every pixel is removed
    (the only way a removed region can touch no kept pixel: see the module docstring)."""
    everything = removed.flatten(1).all(dim=1)
    if bool(everything.any()):
        index = int(everything.nonzero()[0, 0])
        raise SingularImputationError(
            f"image {_name(ids, index)}: every pixel is removed, so the linear imputation's "
            "system is singular (a removed region touches no kept pixel); keep at least one "
            "pixel (e.g. a removal fraction < 1, or LeRF with floor(p * H * W) >= 1)")


def solve_linear(x: torch.Tensor, removed: torch.Tensor, *, initial: torch.Tensor | None = None,
                 rtol: float = RTOL, max_iter: int = 100, ids: Sequence | None = None
                 ) -> torch.Tensor:
    """The noise-free linear imputation of ``x`` ``[N, C, H, W]`` at ``removed`` ``[N, H, W]``,
    float64 ``[N, C, H, W]`` (kept pixels are ``x``). ``initial`` (optional, ``[N, C, H, W]``)
    starts the solver from its values at removed pixels (a warm start).

    Iterative refinement: the residual b - A u in float64, a correction from float32
    preconditioned CG (each round cuts the residual by ``INNER_REDUCTION``), until every
    (image, channel) has ``||b - A u||_2 <= rtol * ||b||_2``; ``max_iter`` bounds the CG
    iterations of all rounds together."""
    removed = validate_removed(x, removed)
    check_not_singular(removed, ids)
    check_number("rtol", rtol, 0, low_open=True)
    check_int("max_iter", max_iter, 1)
    x64 = x.detach().double()
    if not bool(removed.any()):
        return x64.clone()
    with torch.no_grad():  # not inference_mode: callers may use the images with autograd
        levels = _Hierarchy(removed)
        mask = removed[:, None]
        rhs = _neighbour_sum(x64 * ~mask).mul_(mask)
        threshold = rtol * torch.linalg.vector_norm(rhs.flatten(2), dim=2)  # [N, C]
        if initial is None:
            u = torch.zeros_like(rhs)
        else:
            if initial.shape != x.shape:
                raise MetricError(f"initial has shape {tuple(initial.shape)}, x {tuple(x.shape)}")
            u = initial.detach().to(rhs).mul(mask)
            u[threshold == 0] = 0.0  # b = 0: the solution is 0
        residual = torch.empty_like(rhs)
        iterations = 0
        while True:
            torch.sub(rhs, levels.fine(u, residual), out=residual)
            norms = torch.linalg.vector_norm(residual.flatten(2), dim=2)
            open_systems = norms > threshold
            if not bool(open_systems.any()):
                break
            if iterations >= max_iter:
                _not_converged(norms, threshold / rtol, rtol, iterations, ids)
            scale = norms.clamp(min=torch.finfo(torch.float32).tiny)
            # each round cuts by INNER_REDUCTION, the last one only as far as needed (+ margin)
            reduction = torch.clamp(threshold / scale / 4, min=INNER_REDUCTION, max=0.5)
            scale = scale[..., None, None]
            correction, used = _inner_pcg(levels, _to_float32(residual / scale), open_systems,
                                          reduction, max_iter - iterations)
            iterations += max(used, 1)
            u.addcmul_(correction.double(), scale)
        return torch.where(mask, u, x64)


def _not_converged(norms: torch.Tensor, rhs_norms: torch.Tensor, rtol: float, iterations: int,
                   ids: Sequence | None) -> None:
    relative = norms / rhs_norms.clamp(min=torch.finfo(torch.float64).tiny)
    worst = int(relative.argmax())
    image, channel = divmod(worst, relative.shape[1])
    raise ImputationNotConvergedError(
        f"linear imputation did not converge: image {_name(ids, image)}, channel {channel} has "
        f"relative residual {float(relative.flatten()[worst]):.3e} > rtol {rtol:.1e} after "
        f"{iterations} iterations (raise max_iter or rtol)")


def _noise_draws(shape: tuple[int, int, int, int],
                 generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal ``[N, C, H, W]`` float32 on the CPU: one ``[C, H, W]`` draw per image from
    its own generator (a sequence of N), or image after image from one generator (or torch's
    global one when ``None``)."""
    n_images = shape[0]
    if generator is None or isinstance(generator, torch.Generator):
        generators = [generator] * n_images
    else:
        generators = list(generator)
        if len(generators) != n_images:
            raise MetricError(f"generator: {len(generators)} generators for {n_images} images")
    return torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32)
                        for g in generators])


def add_noise(imputed: torch.Tensor, removed: torch.Tensor, noise: float | Sequence[float],
              generator: torch.Generator | Sequence[torch.Generator] | None = None
              ) -> torch.Tensor:
    """``imputed + noise_c * N(0, 1)`` at removed pixels only (``noise`` a float or one per
    channel); draws on the CPU (see ``_noise_draws``), moved to ``imputed``'s device."""
    scales = per_channel(noise, imputed.shape[1], "noise")
    for scale in scales:
        check_number("noise", scale, 0)
    if all(s == 0 for s in scales):
        return imputed
    draws = _noise_draws(tuple(imputed.shape), generator).to(imputed.device, imputed.dtype)
    scale = torch.tensor(scales, dtype=imputed.dtype, device=imputed.device).view(1, -1, 1, 1)
    return imputed + draws * scale * removed[:, None].to(imputed.device)


def linear_impute(x: torch.Tensor, removed: torch.Tensor, *,
                  noise: float | Sequence[float] = 0.01,
                  generator: torch.Generator | Sequence[torch.Generator] | None = None,
                  initial: torch.Tensor | None = None, rtol: float = RTOL, max_iter: int = 100,
                  ids: Sequence | None = None) -> torch.Tensor:
    """The reference's noisy linear imputation (module docstring) of ``x`` ``[N, C, H, W]`` at
    ``removed`` (bool ``[N, H, W]``, True = removed), returned in ``x``'s dtype and device.

    ``noise``: standard deviation of the Gaussian noise added to imputed pixels, a float or one
    per channel, in ``x``'s units (the reference's 0.01 is in [0, 1] pixel units: pass
    ``0.01 / std`` per channel for a normalised ``x``; ``road`` does). ``generator``: one
    ``torch.Generator`` per image (results then do not depend on the batch), or one for all
    images drawn in order, or ``None`` for torch's global generator. ``initial``, ``rtol``,
    ``max_iter``: see ``solve_linear``; ``ids`` name images in errors."""
    solved = solve_linear(x, removed, initial=initial, rtol=rtol, max_iter=max_iter, ids=ids)
    return add_noise(solved, removed.to(x.device), noise, generator).to(x.dtype)


def mean_impute(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The reference's ``ChannelMeanImputer``: removed pixels of ``x`` ``[N, C, H, W]`` get the
    image's per-channel mean over all H * W pixels (computed before removal)."""
    removed = validate_removed(x, removed)
    means = x.mean(dim=(2, 3), keepdim=True)
    return torch.where(removed[:, None], means.expand_as(x), x)


def zero_impute(x: torch.Tensor, removed: torch.Tensor, *,
                fill: float | Sequence[float] = 0.0) -> torch.Tensor:
    """The reference's ``ZeroImputer``: removed pixels of ``x`` ``[N, C, H, W]`` become ``fill``
    (a float or one per channel). The reference zeroes [0, 1] pixels before normalising: for a
    normalised ``x`` that is ``fill = -mean / std`` per channel (``road`` passes it)."""
    removed = validate_removed(x, removed)
    values = torch.tensor(per_channel(fill, x.shape[1], "fill"), dtype=x.dtype, device=x.device)
    return torch.where(removed[:, None], values.view(1, -1, 1, 1).expand_as(x), x)
