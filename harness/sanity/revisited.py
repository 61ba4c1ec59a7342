"""Model-parameter randomization revisited: Smooth MPRT and Efficient MPRT (Hedström, Weber,
Lapuschkin & Höhne, "A Fresh Look at Sanity Checks for Saliency Maps", xAI 2024; code
``annahedstroem/sanity-checks-revisited``, which runs Quantus 0.6
``metrics/randomisation/smooth_mprt.py`` and ``efficient_mprt.py``). Their definitions and the
pieces both use are here; the metrics are ``harness.sanity.smooth_mprt`` and
``harness.sanity.efficient_mprt``.

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

import numpy as np
from scipy import stats
from torch import nn

from harness.errors import ConfigError, MetricError
from harness.models import Block
from harness.sanity.randomization import randomization_steps, resolve_blocks

NORMALISES = ("second_moment", "none")
SIMILARITIES = ("spearman", "pearson")


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
        raise MetricError(f"normalise {normalise!r} is not one of: {', '.join(NORMALISES)}")
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


def check_blocks(blocks) -> None:
    """``ConfigError("blocks: ...")`` for an empty list or a label named twice."""
    if blocks is not None:
        if not blocks:
            raise ConfigError("blocks: an empty list; omit the key for every block")
        twice = sorted({b for b in blocks if list(blocks).count(b) > 1}, key=str)
        if twice:
            raise ConfigError(f"blocks: {twice[0]!r} is named twice")


def evaluated_steps(model: nn.Module, blocks: Sequence[str | Block] | None, *, mode: str,
                    order: str, skip_layers: bool) -> list[tuple[Block, list[Block], list[int]]]:
    """The randomization steps a revisited test evaluates: every step, or only the last
    (``skip_layers``)."""
    steps = randomization_steps(model, resolve_blocks(model, blocks), mode=mode, order=order)
    return steps[-1:] if skip_layers else steps
