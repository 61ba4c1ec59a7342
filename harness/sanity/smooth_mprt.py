"""Smooth MPRT (Hedström, Weber, Lapuschkin & Höhne, "A Fresh Look at Sanity Checks for Saliency
Maps", xAI 2024; Quantus 0.6 ``metrics/randomisation/smooth_mprt.py``): the similarity between the
noise-averaged maps of the model and of its randomized copies (definitions, defaults and the
differences from Quantus: ``harness.sanity.revisited``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.errors import MetricError
from harness.methods import get_method, guarded, saliency
from harness.metrics._common import MAPS, defined
from harness.metrics.causal import default_batch_size
from harness.metrics.registry import register_metric, value_column
from harness.sanity.randomization import MODES, ORDERS, randomized_models, resolve_blocks
from harness.sanity.revisited import (
    NORMALISES,
    SIMILARITIES,
    check_blocks,
    evaluated_steps,
    map_similarity,
    preprocess_maps,
)
from harness.seeding import image_generator
from harness.settings import check_bool, check_choice, check_int, check_number, check_seed

# ----------------------------------------------------------------------------- smoothing


def smoothing_noise(x: torch.Tensor, n_samples: int, *, seed: int,
                    ids: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Per image, ``n_samples - 1`` standard normal draws ``[n_samples - 1, C, H, W]`` (float32,
    CPU) from ``image_generator(seed, id or index, salt="smooth_mprt")``."""
    draws = []
    for index in range(x.shape[0]):
        generator = image_generator(seed, ids[index] if ids is not None else index,
                                    salt="smooth_mprt")
        draws.append(torch.randn((n_samples - 1, *x.shape[1:]), generator=generator))
    return draws


def smoothed_maps(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                  draws: Sequence[torch.Tensor], *, noise_magnitude: float,
                  method_params: dict | None = None, batch_size: int = 8,
                  signed: bool = False) -> np.ndarray:
    """The mean ``[N, H, W]`` (float64) of the method's maps (its signed variant if ``signed``)
    over ``x_i + draws[i][s] * sigma_i`` for every draw s and the noise-free ``x_i`` (last),
    ``sigma_i = noise_magnitude * (max x_i - min x_i)``. All images' noisy inputs form one
    stream, evaluated ``batch_size`` at a time inside one method guard. The model sees the
    inputs in their own (NCHW) layout: channels_last was measured faster but moves the values by
    up to 3e-4 relative (Spearman ranks of nearly tied smoothed pixels flip)."""
    n_samples = draws[0].shape[0] + 1
    spread = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))) * noise_magnitude  # x's dtype
    pairs = [(i, s) for i in range(x.shape[0]) for s in range(n_samples)]
    total = None
    params = dict(method_params or {})
    with guarded(model, method):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            inputs = []
            for i, s in chunk:
                if s == n_samples - 1:
                    inputs.append(x[i])
                else:  # as Quantus: float64 draws times the float32 spread, added, then cast
                    noise = draws[i][s].to(x.device, torch.float64) * float(spread[i])
                    inputs.append((x[i].double() + noise).to(x.dtype))
            owners = torch.tensor([i for i, _ in chunk], device=x.device)
            maps = saliency(method, model, torch.stack(inputs), target[owners], signed=signed,
                            **params)
            if total is None:
                total = torch.zeros((x.shape[0], *maps.shape[1:]), dtype=torch.float64)
            total.index_add_(0, owners.cpu(), maps.detach().double().cpu())
    return (total / n_samples).numpy()


# ----------------------------------------------------------------------------- Smooth MPRT


@dataclass(frozen=True)
class SmoothMPRTSettings:
    """Settings of ``smooth_mprt`` (defaults: Quantus 0.6 ``SmoothMPRT``)."""

    n_samples: int = 50
    noise_magnitude: float = 0.1
    mode: str = "cascading"
    order: str = "bottom_up"
    blocks: list | None = None  # labels, top-down (default: every block)
    skip_layers: bool = False  # only the fully randomized model
    abs: bool = True
    normalise: str = "second_moment"
    similarity: str = "spearman"
    map: str = "absolute"  # or the method's signed variant (where it has one)
    seed: int = 0  # the blocks' re-initialisation (the noise uses the experiment seed)
    batch_size: int | None = None  # noisy inputs per method call (default 8 CPU, 256 CUDA)
    methods: list | None = None

    def check(self) -> None:
        check_int("n_samples", self.n_samples, 1)
        check_number("noise_magnitude", self.noise_magnitude, 0)
        check_choice("mode", self.mode, MODES)
        check_choice("order", self.order, ORDERS)
        check_bool("skip_layers", self.skip_layers)
        check_bool("abs", self.abs)
        check_choice("normalise", self.normalise, NORMALISES)
        check_choice("similarity", self.similarity, SIMILARITIES)
        check_choice("map", self.map, MAPS)
        check_seed("seed", self.seed)
        check_int("batch_size", self.batch_size, 1, optional=True)
        check_blocks(self.blocks)

@dataclass(frozen=True)
class SmoothMPRTResult:
    """``values`` ``[N]``: the similarity after the last step (NaN where undefined, ``status``
    says why); ``steps``: the block each evaluated step adds, in order; ``similarities``
    ``[N, len(steps)]`` and ``statuses`` per step; the smoothed, preprocessed original maps
    ``[N, H, W]``."""

    values: np.ndarray
    status: tuple[str, ...]
    steps: tuple[str, ...]
    similarities: np.ndarray
    statuses: tuple[tuple[str, ...], ...]
    original: np.ndarray
    settings: SmoothMPRTSettings
    map: str = "absolute"  # the maps used: "signed" only where the method has a signed variant

def smooth_mprt(model: nn.Module, method: str, x: torch.Tensor, target, *,
                method_params: dict | None = None, ids: Sequence[str] | None = None,
                noise_seed: int = 0, noise: Sequence[Sequence[torch.Tensor]] | None = None,
                **settings) -> SmoothMPRTResult:
    """Smooth MPRT of ``method`` on ``x`` ``[N, C, H, W]`` explaining ``target`` ``[N]`` (see the
    module docstring); ``settings`` are the fields of ``SmoothMPRTSettings``. ``noise``: one
    list of per-image draws ``[n_samples - 1, C, H, W]`` per evaluated model (the original
    first, then each evaluated step) to replay other draws; default ``smoothing_noise(x,
    n_samples, seed=noise_seed, ids=ids)`` for every model."""
    config = SmoothMPRTSettings(**settings)
    config.check()
    signed = config.map == "signed" and get_method(method).signed is not None
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    steps = evaluated_steps(model, config.blocks, mode=config.mode, order=config.order,
                            skip_layers=config.skip_layers)
    if noise is not None and len(noise) != len(steps) + 1:
        raise MetricError(f"noise: {len(noise)} draw sets for {len(steps) + 1} models (the "
                         "original and each evaluated step)")
    shared = smoothing_noise(x, config.n_samples, seed=noise_seed, ids=ids) if noise is None \
        else None
    batch_size = config.batch_size or default_batch_size(x.device)

    def smooth(network: nn.Module, index: int) -> np.ndarray:
        draws = shared if noise is None else noise[index]
        maps = smoothed_maps(method, network, x, target, draws,
                             noise_magnitude=config.noise_magnitude, method_params=method_params,
                             batch_size=batch_size, signed=signed)
        return preprocess_maps(maps, normalise=config.normalise, abs=config.abs)

    original = smooth(model, 0)
    similarities = np.full((x.shape[0], len(steps)), np.nan)
    statuses = []
    for column, randomized in enumerate(randomized_models(model, steps, seed=config.seed)):
        other = smooth(randomized, column + 1)
        step_status = []
        for i in range(x.shape[0]):
            similarities[i, column], why = map_similarity(original[i], other[i],
                                                          config.similarity)
            step_status.append(why)
        statuses.append(tuple(step_status))
    return SmoothMPRTResult(similarities[:, -1].copy(), statuses[-1],
                            tuple(block.label for block, _, _ in steps), similarities,
                            tuple(statuses), original, config,
                            "signed" if signed else "absolute")


def _smooth_parts(settings: SmoothMPRTSettings, model: nn.Module) -> list[tuple]:
    steps = evaluated_steps(model, settings.blocks, mode=settings.mode, order=settings.order,
                            skip_layers=settings.skip_layers)
    return [(settings.similarity, block.label) for block, _, _ in steps]


def _last_step(frame):
    """``smooth_mprt``: each image's similarity after the last step (every block random in
    cascading mode); lower (more sensitive to the model) is better."""
    return value_column("smooth_mprt", "down")(frame[frame["step"] == frame["step"].max()])


def _smooth_curves(frame):
    """``smooth_mprt``: per image, the similarity after each step (x: the step)."""
    import pandas as pd

    frame = frame.assign(value=pd.to_numeric(frame["value"]))
    table = frame.pivot_table(index="image_id", columns="step", values="value",
                              aggfunc="first", dropna=False)
    return {"smooth_mprt": (table.columns.to_numpy(dtype=float),
                            table.to_numpy(dtype=float, na_value=np.nan))}


@register_metric("smooth_mprt", settings=SmoothMPRTSettings, direction="down",
                 citation="Hedström et al. 2024 (xAI, arXiv:2401.06465), Quantus SmoothMPRT",
                 needs=("method",), columns=_last_step, parts=_smooth_parts,
                 curves=_smooth_curves)
def _smooth_mprt_records(unit, settings: SmoothMPRTSettings) -> list[dict]:
    """Smooth MPRT: rank correlation between the noise-averaged maps of the model and of its
    (bottom-up) randomized copies; lower (more sensitive to the model) is better."""
    result = smooth_mprt(unit.model, unit.method, unit.x, unit.target,
                         method_params=unit.method_params, ids=list(unit.ids),
                         noise_seed=unit.seed, **vars(settings) | {"methods": None})
    common = {"measure": settings.similarity, "mode": settings.mode, "order": settings.order,
              "target_mode": "fixed", "map_normalisation": settings.normalise,
              "abs": settings.abs, "map": result.map, "n_samples": settings.n_samples,
              "noise_magnitude": settings.noise_magnitude}
    records = []
    for column, block in enumerate(result.steps):
        step = column + 1 if not settings.skip_layers else len(
            resolve_blocks(unit.model, settings.blocks))
        for i, image_id in enumerate(unit.ids):
            records.append({"image_id": image_id, "value": defined(result.similarities[i, column]),
                            "status": result.statuses[column][i], "step": step, "block": block,
                            **common})
    return records
