"""Robustness of explanations: does the map change when the input barely does?

Each metric re-runs the saliency method on ``n_samples`` perturbed copies x' = x + delta of every
image and reduces a per-sample quotient to one value per image (lower is more robust):

- Max-Sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the (In)fidelity and
  Sensitivity of Explanations", NeurIPS; reference ``chihkuanyeh/saliency_evaluation``,
  ``infid_sen_utils.py`` ``get_exp_sens`` / ``sample_eps_Inf``): max over samples of
  ||phi(x') - phi(x)|| / ||phi(x)||, delta uniform in the L-infinity ball of radius r.
  Reference defaults, ours: r = 0.2 (``config.py`` ``sen_r``), 50 samples (``sen_N``, "50 for the
  experiments used in the paper"), the Frobenius norm of the whole explanation
  (``np.linalg.norm``), target = the class explained on the clean image, no clipping of x'.
- Avg-Sensitivity (Bhatt, Weller & Moura 2020, "Evaluating and Aggregating Feature-based Model
  Explanations", IJCAI; Quantus ``AvgSensitivity``): the mean of the same quotient.
- Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018, "On the Robustness of Interpretability
  Methods", arXiv:1806.08049): max over samples of ||phi(x') - phi(x)||_2 / ||x' - x||_2. The
  paper maximises over the ball with an optimiser; this is the Monte-Carlo estimate (a lower bound
  of that maximum), as in Quantus ``LocalLipschitzEstimate``.
- Relative Input Stability (Agarwal, Johnson, Pawelczyk, Krishna, Saxena, Zitnik & Lakkaraju 2022,
  "Rethinking Stability for Attribution-based Explanations", arXiv:2203.06877; Quantus
  ``RelativeInputStability``): max over samples x' with the same top-1 prediction as x of
  ||(e_x - e_x') / e_x||_p / max(||(x - x') / x||_p, eps_min); elementwise divisions, where
  e_x = 0 (or x = 0) the divisor is eps_min (Quantus' guard), p = 2 over all elements.

Shared conventions (the reference's unless said):

- phi is the map ``harness.methods.saliency(method, ...)`` returns ``[H, W]`` (non-negative by
  default; ``method_params={"signed": True}`` for the signed variant). The reference measures the
  raw signed attribution of all channels of its MNIST inputs; ours measures the map being scored.
- The perturbation is drawn in the model's input space (x as given, i.e. normalised), like
  Captum and Quantus. The reference's MNIST inputs were unnormalised pixels in [0, 1], so its
  r = 0.2 is 20% of the pixel range: pass ``pixel_std=model.harness_info.std`` to read ``radius``
  in [0, 1] pixel units (channel c then gets radius / std_c in input space). ``noise="gaussian"``
  draws N(0, radius^2) instead (Quantus' Local Lipschitz default: sigma 0.1, 200 samples).
- Randomness: image i's deltas ``[n_samples, C, H, W]`` come from
  ``harness.seeding.image_generator(seed, ids[i] or i, salt="robustness")`` on the CPU, so the
  four metrics see the same deltas for the same settings, and an image's value does not depend on
  the batch it is in, ``batch_size`` or the device (for deterministic methods; a stochastic method
  such as SmoothGrad seeds its own noise by its position in a call).
- Batched: the (image, sample) pairs are taken image-major, ``batch_size`` perturbed inputs per
  ``saliency`` call (several images' samples stacked in one call), memory bounded by
  ``batch_size``. Statistics are computed in float64.
- ||phi(x)|| = 0 (an all-zero map) gives inf (or NaN for 0/0), as the reference's division does;
  Captum replaces a zero denominator by 1.

Peer settings (not ours): Captum ``sensitivity_max``: radius 0.02, 10 samples, Frobenius norm,
uniform L-inf ball. Quantus ``MaxSensitivity`` / ``AvgSensitivity``: uniform noise with
``lower_bound`` 0.2 (the same ball as ours), 200 samples, Frobenius norms, no normalisation of the
maps; ``return_nan_when_prediction_changes`` off. Quantus ``LocalLipschitzEstimate``: Gaussian
noise sigma 0.1, 200 samples, maps normalised by their max |value| (``normalise=True``; ours:
``normalise=False``, the paper's quotient). Quantus ``RelativeInputStability``: 200 samples;
its default perturbation is ``batch_uniform_noise`` with ``upper_bound=0.2`` and the default
``lower_bound=0.02``, i.e. a one-sided shift drawn from U[0.02, 0.2], not a ball; a sample that
changes the prediction is NaN and ``np.max`` then makes the whole image NaN, where the paper (and
ours) takes the max over the samples that keep the prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.methods import saliency
from harness.methods._core import check_inputs
from harness.seeding import image_generator

NOISES = ("uniform", "gaussian")
NORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "fro": lambda flat: flat.norm(dim=1),
    "l1": lambda flat: flat.abs().sum(dim=1),
    "linf": lambda flat: flat.abs().amax(dim=1),
}


@dataclass(frozen=True)
class RobustnessResult:
    """Per-image robustness values of one metric.

    ``values`` ``[N]`` float64 (the number the paper reports per image), ``samples``
    ``[N, n_samples]`` the per-sample quotients, ``included`` ``[N, n_samples]`` which samples
    entered the value (all, except where Relative Input Stability drops samples that changed the
    prediction), ``kept`` ``[N]`` their count, and the method and settings that produced them.
    """

    metric: str
    values: torch.Tensor
    samples: torch.Tensor
    included: torch.Tensor
    kept: torch.Tensor
    method: str
    settings: dict = field(default_factory=dict)


def default_batch_size(device: torch.device) -> int:
    """Perturbed inputs per method call when none is given: 16 on the CPU, 128 on accelerators."""
    return 16 if device.type == "cpu" else 128


def draw_perturbations(image: torch.Tensor, n_samples: int, *, radius: float,
                       noise: str = "uniform", pixel_std: Sequence[float] | None = None,
                       seed: int = 0, key: int | str = 0) -> torch.Tensor:
    """Deltas ``[n_samples, C, H, W]`` for one image ``[C, H, W]``: U(-r, r) per element
    (``uniform``: the L-infinity ball of radius r) or N(0, r^2) (``gaussian``), r = ``radius``
    (divided by ``pixel_std[c]`` per channel when given). Drawn on the CPU from
    ``image_generator(seed, key, salt="robustness")`` and moved to the image's device."""
    if noise not in NOISES:
        raise ValueError(f"noise {noise!r} is not one of: {', '.join(NOISES)}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
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
            raise ValueError(f"pixel_std must hold {image.shape[0]} positive values (one per "
                             f"channel), got {list(std.tolist())}")
        scale = scale / std
    draws *= scale.view(1, -1, 1, 1)
    return draws.to(device=image.device, dtype=image.dtype)


def _check(x: torch.Tensor, target, n_samples: int, ids: Sequence | None,
           batch_size: int | None) -> tuple[torch.Tensor, int]:
    target = check_inputs(x, target)
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples}")
    if ids is not None and len(ids) != x.shape[0]:
        raise ValueError(f"ids has {len(ids)} entries for {x.shape[0]} images")
    batch_size = batch_size or default_batch_size(x.device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return target, batch_size


def _name(ids: Sequence | None, index: int) -> str:
    return str(ids[index]) if ids is not None else f"#{index}"


def _original_maps(model, method, x, target, params, batch_size, ids) -> torch.Tensor:
    maps = torch.cat([saliency(method, model, x[s:s + batch_size], target[s:s + batch_size],
                               **params) for s in range(0, x.shape[0], batch_size)]).double()
    finite = torch.isfinite(maps.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0, 0])
        raise ValueError(f"method {method!r} gave a NaN/inf map for image {_name(ids, index)}")
    return maps


def perturbed_runs(model: nn.Module, method: str, x: torch.Tensor, target: torch.Tensor, *,
                   method_params: dict | None, n_samples: int, radius: float, noise: str,
                   pixel_std: Sequence[float] | None, seed: int, ids: Sequence | None,
                   batch_size: int, predictions: bool = False):
    """Yield ``(images, samples, deltas, maps, predicted)`` per chunk of ``batch_size`` (image,
    sample) pairs taken image-major: ``images``/``samples`` long ``[b]``, ``deltas``
    ``[b, C, H, W]``, ``maps`` = phi(x_i + delta) float64 ``[b, H, W]`` from ONE ``saliency`` call,
    ``predicted`` the top-1 class on the perturbed inputs (``None`` unless asked)."""
    params = dict(method_params or {})
    n_images = x.shape[0]
    total = n_images * n_samples
    cache: dict[int, torch.Tensor] = {}
    for start in range(0, total, batch_size):
        pairs = range(start, min(start + batch_size, total))
        images = torch.tensor([p // n_samples for p in pairs], device=x.device)
        samples = torch.tensor([p % n_samples for p in pairs], device=x.device)
        for image in sorted(set(images.tolist()) - set(cache)):
            key = ids[image] if ids is not None else image
            cache[image] = draw_perturbations(x[image], n_samples, radius=radius, noise=noise,
                                              pixel_std=pixel_std, seed=seed, key=key)
        deltas = torch.stack([cache[int(i)][int(j)] for i, j in zip(images, samples, strict=True)])
        inputs = x[images] + deltas
        maps = saliency(method, model, inputs, target[images], **params).double()
        predicted = None
        if predictions:
            with torch.inference_mode():
                predicted = model(inputs).argmax(dim=1)
        yield images, samples, deltas, maps, predicted
        last = (pairs[-1] + 1) // n_samples  # images before this one are finished
        for image in [i for i in cache if i < last]:
            del cache[image]


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(tensor.shape[0], -1).double()


def _run(metric: str, model, method, x, target, *, method_params, n_samples, radius, noise,
         pixel_std, seed, ids, batch_size, quotient, predictions=False, reduce="max",
         settings=None) -> RobustnessResult:
    target, batch_size = _check(x, target, n_samples, ids, batch_size)
    x = x.detach()
    originals = _original_maps(model, method, x, target, dict(method_params or {}), batch_size,
                               ids)
    clean = None
    if predictions:
        with torch.inference_mode():
            clean = torch.cat([model(x[s:s + batch_size]).argmax(dim=1)
                               for s in range(0, x.shape[0], batch_size)])
    values = torch.empty((x.shape[0], n_samples), dtype=torch.float64, device=x.device)
    included = torch.ones((x.shape[0], n_samples), dtype=torch.bool, device=x.device)
    for images, samples, deltas, maps, predicted in perturbed_runs(
            model, method, x, target, method_params=method_params, n_samples=n_samples,
            radius=radius, noise=noise, pixel_std=pixel_std, seed=seed, ids=ids,
            batch_size=batch_size, predictions=predictions):
        values[images, samples] = quotient(originals[images], maps, x[images], deltas)
        if predictions:
            included[images, samples] = predicted == clean[images]
    kept = included.sum(dim=1)
    if reduce == "max":  # NaN (0/0) propagates; no kept sample -> NaN
        reduced = torch.where(included, values, -torch.inf).amax(dim=1)
    else:
        reduced = torch.where(included, values, 0.0).sum(dim=1) / kept
    reduced = torch.where(kept > 0, reduced, torch.nan)
    all_settings = {"n_samples": n_samples, "radius": radius, "noise": noise,
                    "pixel_std": None if pixel_std is None else tuple(map(float, pixel_std)),
                    "seed": seed, "method_params": dict(method_params or {}), **(settings or {})}
    return RobustnessResult(metric, reduced.cpu(), values.cpu(), included.cpu(), kept.cpu(),
                            method, all_settings)


def _sensitivity_quotient(norm: str):
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is not one of: {', '.join(NORMS)}")
    measure = NORMS[norm]

    def quotient(original, perturbed, _inputs, _deltas):
        return measure(_flat(perturbed - original)) / measure(_flat(original))

    return quotient


def max_sensitivity(model: nn.Module, method: str, x: torch.Tensor, target, *,
                    method_params: dict | None = None, radius: float = 0.2,
                    n_samples: int = 50, noise: str = "uniform", norm: str = "fro",
                    pixel_std: Sequence[float] | None = None, seed: int = 0,
                    ids: Sequence | None = None,
                    batch_size: int | None = None) -> RobustnessResult:
    """Max-Sensitivity (Yeh et al. 2019): max over ``n_samples`` deltas in the L-inf ball of
    ``radius`` of ||phi(x + delta) - phi(x)|| / ||phi(x)||, ``[N]``. Defaults: the reference's
    r = 0.2, 50 samples, Frobenius norm (``norm`` also ``"l1"``, ``"linf"``, applied to both).
    See the module docstring for the input space, Captum's and Quantus' settings."""
    return _run("max_sensitivity", model, method, x, target, method_params=method_params,
                n_samples=n_samples, radius=radius, noise=noise, pixel_std=pixel_std, seed=seed,
                ids=ids, batch_size=batch_size, quotient=_sensitivity_quotient(norm),
                reduce="max", settings={"norm": norm})


def avg_sensitivity(model: nn.Module, method: str, x: torch.Tensor, target, *,
                    method_params: dict | None = None, radius: float = 0.2,
                    n_samples: int = 50, noise: str = "uniform", norm: str = "fro",
                    pixel_std: Sequence[float] | None = None, seed: int = 0,
                    ids: Sequence | None = None,
                    batch_size: int | None = None) -> RobustnessResult:
    """Avg-Sensitivity (Bhatt et al. 2020; Quantus ``AvgSensitivity``): the mean over samples of
    the Max-Sensitivity quotient, same defaults and the same deltas as ``max_sensitivity``."""
    return _run("avg_sensitivity", model, method, x, target, method_params=method_params,
                n_samples=n_samples, radius=radius, noise=noise, pixel_std=pixel_std, seed=seed,
                ids=ids, batch_size=batch_size, quotient=_sensitivity_quotient(norm),
                reduce="mean", settings={"norm": norm})


def _max_normalised(maps: torch.Tensor) -> torch.Tensor:
    return maps / maps.flatten(1).abs().amax(dim=1).view(-1, 1, 1)


def local_lipschitz_estimate(model: nn.Module, method: str, x: torch.Tensor, target, *,
                             method_params: dict | None = None, radius: float = 0.2,
                             n_samples: int = 50, noise: str = "uniform",
                             normalise: bool = False,
                             pixel_std: Sequence[float] | None = None, seed: int = 0,
                             ids: Sequence | None = None,
                             batch_size: int | None = None) -> RobustnessResult:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018): max over samples of
    ||phi(x + delta) - phi(x)||_2 / ||delta||_2 (delta over all C*H*W elements), ``[N]``.

    Defaults: the same neighbourhood as Max-Sensitivity (uniform L-inf ball, r = 0.2, 50 samples),
    so the robustness family shares its samples; Quantus' is ``noise="gaussian", radius=0.1,
    n_samples=200, normalise=True`` (maps divided by their max |value| before the difference).
    """

    def quotient(original, perturbed, _inputs, deltas):
        if normalise:
            original, perturbed = _max_normalised(original), _max_normalised(perturbed)
        return _flat(perturbed - original).norm(dim=1) / _flat(deltas).norm(dim=1)

    return _run("local_lipschitz_estimate", model, method, x, target,
                method_params=method_params, n_samples=n_samples, radius=radius, noise=noise,
                pixel_std=pixel_std, seed=seed, ids=ids, batch_size=batch_size,
                quotient=quotient, reduce="max", settings={"normalise": normalise})


def _relative(change: torch.Tensor, base: torch.Tensor, eps_min: float) -> torch.Tensor:
    return change / torch.where(base == 0, torch.full_like(base, eps_min), base)


def relative_input_stability(model: nn.Module, method: str, x: torch.Tensor, target, *,
                             method_params: dict | None = None, radius: float = 0.2,
                             n_samples: int = 50, noise: str = "uniform", p: float = 2.0,
                             eps_min: float = 1e-6, pixel_std: Sequence[float] | None = None,
                             seed: int = 0, ids: Sequence | None = None,
                             batch_size: int | None = None) -> RobustnessResult:
    """Relative Input Stability (Agarwal et al. 2022): max over the samples whose top-1 prediction
    equals the clean image's of ||(e_x - e_x') / e_x||_p / max(||(x - x') / x||_p, eps_min),
    ``[N]`` (NaN when every sample changed the prediction; ``kept`` says how many entered).

    Zero divisors are replaced by ``eps_min`` elementwise (Quantus' guard), so maps with exact
    zeros (e.g. Grad-CAM's ReLU) give very large values. ``x`` is the model input (normalised):
    relative changes depend on that space. Defaults: the same neighbourhood as Max-Sensitivity.
    """
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p}")

    def lp(flat: torch.Tensor) -> torch.Tensor:
        return flat.norm(p=p, dim=1)

    def quotient(original, perturbed, inputs, deltas):
        explanation = lp(_flat(_relative(original - perturbed, original, eps_min)))
        change = lp(_flat(_relative(-deltas.double(), inputs.double(), eps_min)))
        return explanation / change.clamp(min=eps_min)

    return _run("relative_input_stability", model, method, x, target,
                method_params=method_params, n_samples=n_samples, radius=radius, noise=noise,
                pixel_std=pixel_std, seed=seed, ids=ids, batch_size=batch_size,
                quotient=quotient, predictions=True, reduce="max",
                settings={"p": p, "eps_min": eps_min})
