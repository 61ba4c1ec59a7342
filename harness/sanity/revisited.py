"""Model-parameter randomization revisited: Smooth MPRT and Efficient MPRT (Hedström, Weber,
Lapuschkin & Höhne, "A Fresh Look at Sanity Checks for Saliency Maps", xAI 2024; code
``annahedstroem/sanity-checks-revisited``, which runs Quantus 0.6
``metrics/randomisation/smooth_mprt.py`` and ``efficient_mprt.py``).

Both randomize the model's blocks with ``harness.sanity.randomization`` (each layer's own
initialiser, block k seeded by ``seed * 1000 + k``, the caller's model untouched), in the
reference's default order, **bottom-up** (from the input up), cascading. The class explained is
the original target for every model (Quantus' ``y_batch``).

**Smooth MPRT** (``smooth_mprt``, lower is better). Per model, each map is the mean of the
method's maps over ``n_samples`` inputs ``x + eps_s`` with ``eps_s ~ N(0, sigma^2)``,
``sigma = noise_magnitude * (max(x) - min(x))`` per image in the model's input space, and the
last sample noise-free (``eps = 0``, as Quantus and zennit's SmoothGrad: one sample is the plain
map). Each smoothed map is then normalised (``normalise="second_moment"``: divided by the square
root of its mean square, Binder et al. 2023), its absolute value taken (``abs``), and compared
with the smoothed original map by Spearman's rank correlation of the flattened maps (or
Pearson). The value per image is the similarity after the last step (every block random:
Quantus' ``return_last_correlation``, the reference's benchmark setting); the similarity after
every step is recorded (``skip_layers=False``, Quantus' default) unless ``skip_layers``.
Defaults are Quantus 0.6 ``SmoothMPRT``'s: 50 samples, noise magnitude 0.1, bottom-up, abs,
second-moment normalisation, Spearman, every layer.

**Efficient MPRT** (``efficient_mprt``, higher is better): the relative rise in explanation
complexity from the original to the fully randomized model, ``(H(e_rand) - H(e)) / H(e)``, with
``H`` the discrete entropy (natural log, ``scipy.stats.entropy``) of a histogram of the map's
values with ``n_bins`` equal-width bins over [min, max] (``numpy.histogram``). Defaults are
Quantus 0.6 ``EfficientMPRT``'s: 100 bins, no abs, no normalisation, only the original and the
fully randomized model (``skip_layers``). A bin ``rule`` (``freedman_diaconis``, ``scott``,
``square_root``, ``sturges``, ``rice``) sets the bins per map from its ``n = H * W`` values,
clamped to [``min_bins``, ``max_bins``] (Quantus' 10 and 200).

Intended differences from Quantus 0.6, each tested:

- Noise: Quantus draws from numpy's global generator, new draws for every model; here every
  image draws its noise from ``image_generator(seed, id, salt="smooth_mprt")`` once and every
  model sees the same draws (common random numbers: the difference between two models' maps is
  the models', not the noise's; an image's value does not depend on its batch). The ``noise``
  argument replays any other draws (the test replays Quantus').
- Normalisation: Quantus divides a whole batch of maps by one batch-wide second moment (its
  default normalise axes include the batch axis); here each map is divided by its own (Binder et
  al.'s definition). Rank correlations and equal-width histograms are unchanged by a positive
  scale, so the values agree.
- Bin rules: Quantus 0.6 computes them over the whole batch with ``n = a_batch[0].ndim`` (the
  number of axes of one map, 3, not the number of values); here per map with ``n = H * W``.
- Quantus' "original" entry of Smooth MPRT compares two smoothings of the original model with
  different noise (the smoothing's own noise); with common draws it would be 1 and is left out.
- Layers: Quantus randomizes every module that has ``reset_parameters`` (a BatchNorm apart from
  its conv), each after ``torch.manual_seed(seed + 1)`` (so layers of equal shape get equal
  weights); here the model's blocks (``model.harness_info.blocks``: a conv and its BatchNorm
  together), each seeded by its own index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn

from harness.methods import get_method, saliency, saliency_batched
from harness.metrics._common import (
    MAPS,
    defined,
    setting_choice,
    setting_int,
    setting_number,
    unit_map,
)
from harness.metrics.causal import default_batch_size
from harness.metrics.registry import register_metric, value_column
from harness.models import Block
from harness.sanity.randomization import (
    MODES,
    ORDERS,
    randomization_steps,
    randomize,
    resolve_blocks,
)
from harness.seeding import image_generator

NORMALISES = ("second_moment", "none")
SIMILARITIES = ("spearman", "pearson")
BIN_RULES = ("freedman_diaconis", "scott", "square_root", "sturges", "rice")


# ----------------------------------------------------------------------------- map preprocessing


def preprocess_maps(maps: np.ndarray, *, normalise: str, abs: bool) -> np.ndarray:
    """``[N, H, W]`` maps, each divided by the square root of its average second moment
    (``normalise="second_moment"``; a map that is zero everywhere is left as it is, as Quantus
    does), then their absolute values (``abs``): Quantus' order, normalise then abs."""
    maps = np.asarray(maps, dtype=np.float64)
    if normalise == "second_moment":
        root = np.sqrt(np.mean(maps.reshape(maps.shape[0], -1) ** 2, axis=1))
        root = np.where(root == 0, 1.0, root)
        maps = maps / root[:, None, None]
    elif normalise != "none":
        raise ValueError(f"normalise {normalise!r} is not one of: {', '.join(NORMALISES)}")
    return np.abs(maps) if abs else maps


def map_similarity(a: np.ndarray, b: np.ndarray, similarity: str) -> tuple[float, str]:
    """Spearman or Pearson correlation of two flattened maps, with ``"ok"``; NaN and the reason
    where a map is constant (no ranks, no variance)."""
    a, b = np.ravel(a), np.ravel(b)
    for which, values in (("original", a), ("randomized", b)):
        if np.ptp(values) == 0:
            return math.nan, f"undefined: the {which} map is constant ({float(values[0])!r})"
    if similarity == "spearman":
        return float(stats.spearmanr(a, b).statistic), "ok"
    return float(stats.pearsonr(a, b).statistic), "ok"


def discrete_entropy(values: np.ndarray, n_bins: int) -> float:
    """Entropy (natural log) of the histogram of ``values`` with ``n_bins`` equal-width bins over
    [min, max] (``numpy.histogram``; ``scipy.stats.entropy`` normalises the counts): Quantus'
    ``discrete_entropy``."""
    histogram, _ = np.histogram(np.ravel(values), bins=n_bins)
    return float(stats.entropy(histogram))


def bins_by_rule(values: np.ndarray, rule: str) -> int:
    """The number of bins of one map's ``n`` values by ``rule`` (textbook forms, ``n`` the number
    of values): Freedman-Diaconis ``range / (2 IQR n^(-1/3))`` (bin width at least 1e-6, as
    Quantus), Scott ``range / (3.5 std n^(-1/3))``, square root ``sqrt(n)``, Sturges
    ``log2(n) + 1``, Rice ``2 n^(1/3)``; truncated to an integer."""
    values = np.ravel(np.asarray(values, dtype=np.float64))
    n = values.size
    span = float(values.max() - values.min())
    if rule == "freedman_diaconis":
        iqr = float(np.percentile(values, 75) - np.percentile(values, 25))
        return int(span / max(2 * iqr / n ** (1 / 3), 1e-6))
    if rule == "scott":
        width = 3.5 * float(np.std(values)) / n ** (1 / 3)
        return int(span / width) if width > 0 else 1
    if rule == "square_root":
        return int(np.sqrt(n))
    if rule == "sturges":
        return int(np.log2(n) + 1)
    if rule == "rice":
        return int(2 * n ** (1 / 3))
    raise ValueError(f"rule {rule!r} is not one of: {', '.join(BIN_RULES)}")


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
    stream, evaluated ``batch_size`` at a time."""
    n_samples = draws[0].shape[0] + 1
    spread = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))) * noise_magnitude  # x's dtype
    pairs = [(i, s) for i in range(x.shape[0]) for s in range(n_samples)]
    total = None
    params = dict(method_params or {})
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
        setting_int("n_samples", self.n_samples, 1)
        setting_number("noise_magnitude", self.noise_magnitude, low=0, inclusive=True)
        setting_choice("mode", self.mode, MODES)
        setting_choice("order", self.order, ORDERS)
        setting_choice("normalise", self.normalise, NORMALISES)
        setting_choice("similarity", self.similarity, SIMILARITIES)
        setting_choice("map", self.map, MAPS)
        setting_int("seed", self.seed, 0)
        setting_int("batch_size", self.batch_size, 1, optional=True)
        _check_blocks(self.blocks)


def _check_blocks(blocks) -> None:
    if blocks is not None:
        if not blocks:
            raise ValueError("blocks: an empty list; omit the key for every block")
        twice = sorted({b for b in blocks if list(blocks).count(b) > 1}, key=str)
        if twice:
            raise ValueError(f"blocks: {twice[0]!r} is named twice")


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


def evaluated_steps(model: nn.Module, blocks: Sequence[str | Block] | None, *, mode: str,
                    order: str, skip_layers: bool) -> list[tuple[Block, list[Block], list[int]]]:
    """The randomization steps a revisited test evaluates: every step, or only the last
    (``skip_layers``)."""
    steps = randomization_steps(model, resolve_blocks(model, blocks), mode=mode, order=order)
    return steps[-1:] if skip_layers else steps


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
        raise ValueError(f"noise: {len(noise)} draw sets for {len(steps) + 1} models (the "
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
    for column, (_, chosen, indices) in enumerate(steps):
        randomized = randomize(model, chosen, seed=config.seed, indices=indices)
        other = smooth(randomized, column + 1)
        del randomized
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


# ----------------------------------------------------------------------------- Efficient MPRT


@dataclass(frozen=True)
class EfficientMPRTSettings:
    """Settings of ``efficient_mprt`` (defaults: Quantus 0.6 ``EfficientMPRT``)."""

    n_bins: int = 100
    rule: str | None = None  # a bin rule per map instead of n_bins
    min_bins: int = 10
    max_bins: int = 200
    abs: bool = False
    normalise: str = "none"
    map: str = "absolute"  # or the method's signed variant (where it has one)
    order: str = "bottom_up"
    blocks: list | None = None
    skip_layers: bool = True  # False: also record the complexity after every step
    seed: int = 0
    methods: list | None = None

    def check(self) -> None:
        setting_int("n_bins", self.n_bins, 1)
        if self.rule is not None:
            setting_choice("rule", self.rule, BIN_RULES)
        setting_int("min_bins", self.min_bins, 1)
        setting_int("max_bins", self.max_bins, self.min_bins)
        setting_choice("normalise", self.normalise, NORMALISES)
        setting_choice("map", self.map, MAPS)
        setting_choice("order", self.order, ORDERS)
        setting_int("seed", self.seed, 0)
        _check_blocks(self.blocks)

    def bins(self, values: np.ndarray) -> int:
        """The number of bins for one map's values."""
        if self.rule is None:
            return self.n_bins
        return max(min(bins_by_rule(values, self.rule), self.max_bins), self.min_bins)


@dataclass(frozen=True)
class EfficientMPRTResult:
    """``values`` ``[N]`` = (H_random - H_original) / H_original (NaN where H_original = 0,
    ``status`` says why); the complexities ``[N, 1 + steps]`` (the original first; with
    ``skip_layers`` only the fully randomized model after it), the blocks of the steps, the
    number of bins per image and map, and the entropy of the models' softmax outputs
    ``[N, 1 + steps]`` (Quantus' extra scores)."""

    values: np.ndarray
    status: tuple[str, ...]
    complexities: np.ndarray
    steps: tuple[str, ...]
    bins: np.ndarray
    model_entropies: np.ndarray
    settings: EfficientMPRTSettings
    map: str = "absolute"  # the maps used: "signed" only where the method has a signed variant


def _complexities(maps: torch.Tensor, config: EfficientMPRTSettings
                  ) -> tuple[np.ndarray, np.ndarray]:
    values = preprocess_maps(maps.detach().double().cpu().numpy(), normalise=config.normalise,
                             abs=config.abs)
    bins = np.array([config.bins(v) for v in values])
    return np.array([discrete_entropy(v, b) for v, b in zip(values, bins, strict=True)]), bins


def _output_entropy(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.inference_mode():
        probs = torch.cat([model(x[i:i + batch_size]).softmax(dim=1)
                           for i in range(0, x.shape[0], batch_size)]).double().cpu()
    return stats.entropy(probs.numpy(), axis=1)


def efficient_mprt(model: nn.Module, method: str, x: torch.Tensor, target, *,
                   method_params: dict | None = None, maps: torch.Tensor | None = None,
                   batch_size: int = 16, **settings) -> EfficientMPRTResult:
    """Efficient MPRT of ``method`` on ``x`` ``[N, C, H, W]`` explaining ``target`` ``[N]`` (see
    the module docstring); ``settings`` are the fields of ``EfficientMPRTSettings``. ``maps``:
    the method's maps ``[N, H, W]`` on the original model (its signed maps under
    ``map="signed"`` where it has them) when already computed."""
    config = EfficientMPRTSettings(**settings)
    config.check()
    signed = config.map == "signed" and get_method(method).signed is not None
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    params = dict(method_params or {})
    if maps is None:
        maps = saliency_batched(method, model, x, target, batch_size=batch_size,
                                method_params=params, signed=signed)
    steps = evaluated_steps(model, config.blocks, mode="cascading", order=config.order,
                            skip_layers=config.skip_layers)
    complexities, bins = [], []
    entropies = [_output_entropy(model, x, batch_size)]
    values, used = _complexities(maps, config)
    complexities.append(values)
    bins.append(used)
    for _, chosen, indices in steps:
        randomized = randomize(model, chosen, seed=config.seed, indices=indices)
        other = saliency_batched(method, randomized, x, target, batch_size=batch_size,
                                 method_params=params, signed=signed)
        values, used = _complexities(other, config)
        complexities.append(values)
        bins.append(used)
        entropies.append(_output_entropy(randomized, x, batch_size))
        del randomized
    complexities = np.stack(complexities, axis=1)
    first, last = complexities[:, 0], complexities[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.where(first != 0, (last - first) / np.where(first != 0, first, 1.0), np.nan)
    status = tuple("ok" if c != 0 else "undefined: the original map's entropy is 0 (all its "
                   "values in one bin)" for c in first)
    return EfficientMPRTResult(rise, status, complexities,
                               tuple(block.label for block, _, _ in steps),
                               np.stack(bins, axis=1), np.stack(entropies, axis=1), config,
                               "signed" if signed else "absolute")


@register_metric("efficient_mprt", settings=EfficientMPRTSettings, direction="up",
                 citation="Hedström et al. 2024 (xAI, arXiv:2401.06465), Quantus EfficientMPRT",
                 needs=("maps", "method"), curves=lambda frame: {})
def _efficient_mprt_records(unit, settings: EfficientMPRTSettings) -> list[dict]:
    """Efficient MPRT: the relative rise of the map's histogram entropy from the model to its
    fully randomized copy; higher (more sensitive to the model) is better."""
    maps, _ = unit_map(unit, settings.map)
    result = efficient_mprt(unit.model, unit.method, unit.x, unit.target,
                            method_params=unit.method_params, maps=maps,
                            batch_size=unit.batch_size, **vars(settings) | {"methods": None})
    records = []
    for i, image_id in enumerate(unit.ids):
        record = {"image_id": image_id, "value": defined(result.values[i]),
                  "status": result.status[i],
                  "complexity_original": float(result.complexities[i, 0]),
                  "complexity_randomized": float(result.complexities[i, -1]),
                  "model_entropy_original": float(result.model_entropies[i, 0]),
                  "model_entropy_randomized": float(result.model_entropies[i, -1]),
                  "n_bins": int(result.bins[i, 0]), "order": settings.order,
                  "abs": settings.abs, "map": result.map,
                  "map_normalisation": settings.normalise}
        if not settings.skip_layers:
            record["complexity_curve"] = [float(c) for c in result.complexities[i]]
        records.append(record)
    return records
