"""The peers of ``benchmarks/metrics_limit.py``: Quantus 0.6 and Captum on the same work as the
harness's metrics (same model, images, maps, method, sample counts and batching).

Where a peer takes a perturbation function (Quantus' ``perturb_func``, Captum's ``perturb_func``)
it is handed the harness's own perturbations (the same deltas, the same Gaussian draws, the same
pixel subsets), so the values must agree with the harness's; such a peer is ``exact``. Where it
cannot be (IROF: Quantus segments the normalised tensor and fills with its batch's drifting
mean), only the time is comparable and the note says why. Every explanation is the harness's
vanilla gradient (``harness.saliency``), so the method costs the same everywhere.

Tuned: every peer runs the model on channels_last inputs, as the harness does (the faster
layout on CPUs, measured by the limit sweep; ``model_layout``), and its batching is set to the
harness's chunk where it has a knob (Captum's ``max_examples_per_batch``; Quantus explains all
4 images per sample step). A peer missing from this environment (``pip install -e '.[bench]'``
for Quantus) is left out.
"""

from __future__ import annotations

import contextlib
import importlib.util

import numpy as np
import torch

import harness
from harness.metrics._common import baseline_fill, image_key, pixel_scale
from harness.metrics.causal import resolve_memory_format
from harness.metrics.neighbourhood import default_batch_size, draw_perturbations, model_layout
from harness.metrics.neighbourhood import pixel_scale as radius_scale
from harness.seeding import image_generator


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _explain(setup):
    """Quantus' ``explain_func``: the harness's vanilla map, ``[N, 1, H, W]`` numpy."""

    def explain(model, inputs, targets, **_):
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=setup.device)
        y = torch.as_tensor(np.asarray(targets), device=setup.device).long()
        return _numpy(harness.saliency(setup.method, setup.model, x, y)[:, None])

    return explain


def _deltas(setup, settings) -> torch.Tensor:
    """The harness's deltas ``[N, S, C, H, W]`` (``sample_statistics``' draws, same keys)."""
    neighbourhood = settings.neighbourhood(setup.seed)
    pixel_std = radius_scale(setup.model, neighbourhood.radius_units)
    return torch.stack([draw_perturbations(
        setup.x[i], neighbourhood.n_samples, radius=neighbourhood.radius,
        noise=neighbourhood.noise, pixel_std=pixel_std, seed=neighbourhood.seed,
        key=setup.ids[i]) for i in range(setup.x.shape[0])])


def _quantus_robustness(class_name: str, setup, settings, **options):
    """Quantus' robustness metric with the harness's deltas: sample ``step`` adds ``deltas[:,
    step]`` to the whole batch (Quantus perturbs all images at each step)."""
    import quantus

    deltas = _numpy(_deltas(setup, settings))
    n_images = deltas.shape[0]
    step = {"next": 0}

    def perturb(arr, indices=None, indexed_axes=None, **_):
        out = arr + deltas[:, step["next"]].reshape(n_images, -1)
        step["next"] += 1
        return out

    def run():
        step["next"] = 0
        metric = getattr(quantus, class_name)(
            nr_samples=settings.n_samples, perturb_func=perturb, normalise=False, abs=False,
            disable_warnings=True, display_progressbar=False, **options)
        explain = _explain(setup)  # the clean maps too, as the harness's metric computes them
        values = metric(model=setup.model, x_batch=_numpy(setup.x), y_batch=_numpy(setup.target),
                        a_batch=explain(setup.model, _numpy(setup.x), _numpy(setup.target)),
                        explain_func=explain,
                        channel_first=True, softmax=False, device=str(setup.device),
                        batch_size=n_images)
        return np.asarray(values, dtype=float)

    return run


def _captum_sensitivity(setup, settings):
    """Captum's ``sensitivity_max`` with the harness's deltas: Captum repeats each image
    ``k`` times per chunk (image-major) and perturbs the chunk; chunks of
    ``max_examples_per_batch`` = the harness's default method batch."""
    from captum.metrics import sensitivity_max

    deltas = _deltas(setup, settings)
    n_images, n_samples = deltas.shape[:2]
    offset = {"next": 0}

    def perturb(inputs, radius):
        per_image = inputs.shape[0] // n_images
        begin = offset["next"]
        offset["next"] += per_image
        return inputs + deltas[:, begin:begin + per_image].reshape(inputs.shape)

    def explanation(inputs, target=None):
        # Captum hands a tuple of inputs on its first call and expects a tuple back
        given = inputs[0] if isinstance(inputs, tuple) else inputs
        maps = harness.saliency(setup.method, setup.model, given, target)[:, None]
        return (maps,) if isinstance(inputs, tuple) else maps

    per_call = settings.batch_size or default_batch_size(setup.device)

    def run():
        offset["next"] = 0
        values = sensitivity_max(explanation, setup.x, perturb_func=perturb,
                                 n_perturb_samples=n_samples, target=setup.target,
                                 max_examples_per_batch=max(n_images, per_call))
        return _numpy(values).astype(float)

    return run


def _gaussian_perturbations(setup, settings):
    """The harness's Gaussian infidelity perturbations, drawn in order per image: ``draw(i, k)``
    returns image i's next k perturbations I ``[k, C, H, W]`` (model units)."""
    mean, std = pixel_scale(setup.model, setup.x)
    fill = baseline_fill(settings.baseline, setup.x, mean, std, ("black", "zero", "mean"))
    generators: list = []

    def reset():
        generators[:] = [image_generator(setup.seed, image_key(list(setup.ids), i),
                                         salt="infidelity") for i in range(setup.x.shape[0])]

    def draw(image: int, count: int) -> torch.Tensor:
        channels, height, width = setup.x.shape[1:]
        z = torch.stack([torch.randn((channels, height, width), dtype=torch.float32,
                                     generator=generators[image]) for _ in range(count)])
        z = z.to(setup.x.device, setup.x.dtype)
        pixels = setup.x[image] * std + mean
        base = fill[image] * std + mean
        removed = torch.minimum(pixels, torch.maximum(pixels - 1, pixels - base
                                                      + settings.noise * z))
        return removed / std

    return draw, reset


def _captum_infidelity(setup, settings):
    """Captum's ``infidelity`` with the harness's Gaussian perturbations (I and x - I), the
    map broadcast over channels, ``normalize`` = the reference's optimal scaling, the logit."""
    from captum.metrics import infidelity

    draw, reset = _gaussian_perturbations(setup, settings)
    n_images = setup.x.shape[0]
    count = settings.n_perturbations or 10_000
    per_call = settings.batch_size or 8

    def perturb(inputs):
        per_image = inputs.shape[0] // n_images
        perturbations = torch.cat([draw(i, per_image) for i in range(n_images)])
        return perturbations, inputs - perturbations

    def forward(inputs):
        return setup.model(inputs)

    def run():
        reset()
        values = infidelity(forward, perturb, setup.x,
                            setup.signed_maps[:, None].expand_as(setup.x),
                            target=setup.target, n_perturb_samples=count,
                            max_examples_per_batch=max(n_images, per_call),
                            normalize=settings.scaling)
        return _numpy(values).astype(float)

    return run


@contextlib.contextmanager
def _choices(subsets: np.ndarray):
    """``np.random.choice`` answering Quantus' draws (run-major, then image) with the harness's
    pixel subsets ``[N, runs, size]``; restored on exit."""
    original = np.random.choice
    calls = {"next": 0}
    n_images, runs = subsets.shape[:2]

    def choice(*args, **kwargs):
        index = calls["next"]
        calls["next"] += 1
        return subsets[index % n_images, (index // n_images) % runs]

    np.random.choice = choice
    try:
        yield
    finally:
        np.random.choice = original


def _quantus_correlation(setup, settings):
    """Quantus' ``FaithfulnessCorrelation`` on the harness's pixel subsets: its draws of feature
    indices are answered with the harness's pixels (the first channel's block of the broadcast
    map, so its attribution sums are the harness's), and its perturbation sets every channel of
    those pixels to the harness's baseline."""
    import quantus

    height, width = setup.x.shape[2:]
    n_pixels = height * width
    generators = [image_generator(setup.seed, image_key(list(setup.ids), i),
                                  salt="faithfulness_correlation")
                  for i in range(setup.x.shape[0])]
    subsets = np.stack([np.stack([_numpy(torch.randperm(n_pixels, generator=g)
                                         [:settings.subset_size])
                                  for _ in range(settings.n_subsets)]) for g in generators])
    mean, std = pixel_scale(setup.model, setup.x)
    fill = _numpy(baseline_fill(settings.baseline, setup.x, mean, std,
                                ("black", "zero", "mean", "min")))[:, :, 0, 0]  # [N, C]
    calls = {"next": 0}
    n_images, channels = fill.shape

    def perturb(arr, indices, **_):
        out = arr.reshape(n_images, channels, n_pixels).copy()
        for image in range(n_images):
            out[image][:, indices[image]] = fill[image][:, None]
        calls["next"] += 1
        return out.reshape(arr.shape)

    def run():
        calls["next"] = 0
        metric = quantus.FaithfulnessCorrelation(
            nr_runs=settings.n_subsets, subset_size=settings.subset_size, perturb_func=perturb,
            abs=False, normalise=False, return_aggregate=False, disable_warnings=True,
            display_progressbar=False)
        with _choices(subsets):
            values = metric(model=setup.model, x_batch=_numpy(setup.x),
                            y_batch=_numpy(setup.target),
                            a_batch=_numpy(setup.signed_maps[:, None]), channel_first=True,
                            softmax=settings.score == "prob", device=str(setup.device),
                            batch_size=n_images)
        return np.asarray(values, dtype=float)

    return run


def _quantus_irof(setup, settings):
    import quantus
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    def rgb_mask_replacement(arr, mask, **options):
        # Quantus 0.6's IROF builds [B, 1, H, W] segment masks but its default perturbation
        # asserts that the mask has the array's shape, so IROF stops on RGB input as shipped;
        # broadcasting the mask over the channels is what it means to do.
        return baseline_replacement_by_mask(arr=arr, mask=np.broadcast_to(mask, arr.shape),
                                            **options)

    def run():
        metric = quantus.IROF(segmentation_method="slic", perturb_baseline="mean",
                              perturb_func=rgb_mask_replacement, return_aggregate=False,
                              abs=False, normalise=False,
                              disable_warnings=True, display_progressbar=False)
        with _numpy_trapz():
            values = metric(model=setup.model, x_batch=_numpy(setup.x),
                        y_batch=_numpy(setup.target),
                            a_batch=_numpy(setup.maps[:, None].expand_as(setup.x)),
                            channel_first=True, softmax=settings.score == "prob",
                            device=str(setup.device), batch_size=setup.x.shape[0])
        return np.asarray(values, dtype=float)

    return run


@contextlib.contextmanager
def _numpy_trapz():
    """Quantus 0.6's AUC (``calculate_auc``) calls ``np.trapz``, which numpy 2.4 removed; within
    the block it is numpy's ``trapezoid`` (the same function, renamed in numpy 2.0)."""
    if hasattr(np, "trapz"):
        yield
        return
    setattr(np, "trapz", np.trapezoid)  # noqa: B010  (the old name, for Quantus)
    try:
        yield
    finally:
        delattr(np, "trapz")


def _quantus_pixel_flipping(setup, settings):
    """Quantus' ``PixelFlipping`` on our deletion's work (``step`` whole pixels per step into
    zeros, the probability): its curve is our curve without point 0 where both orders changed
    the same pixels (ties aside). Its check that the step divides H * W features is lifted for
    the call (``benchmarks/causal_metrics.py`` explains why)."""
    import quantus
    from quantus.metrics.faithfulness import pixel_flipping as module

    channels = setup.x.shape[1]

    def run():
        metric = quantus.PixelFlipping(features_in_step=settings.step * channels,
                                       perturb_baseline=0.0, normalise=False, abs=False,
                                       disable_warnings=True, display_progressbar=False)
        check = module.asserts.assert_features_in_step
        module.asserts.assert_features_in_step = lambda **_: None
        try:
            curves = metric(model=setup.model, x_batch=_numpy(setup.x),
                            y_batch=_numpy(setup.target), a_batch=_numpy(setup.maps[:, None]),
                            channel_first=True, softmax=settings.score == "prob",
                            device=str(setup.device), batch_size=settings.batch_size or 8)
        finally:
            module.asserts.assert_features_in_step = check
        return np.asarray(curves, dtype=float).reshape(-1)

    return run


def _deletion_curves(records) -> np.ndarray:
    return np.concatenate([np.asarray(r["curve"][1:], dtype=float) for r in records])


def _tuned(setup, run):
    """``run`` with the model on channels_last inputs (the harness's layout)."""

    def tuned():
        with model_layout(setup.model, resolve_memory_format("auto", setup.device)):
            return run()

    return tuned


def peers(name: str, setup, settings, peer_class) -> list:
    """The peers of metric ``name`` that are installed here (each run tuned: ``_tuned``)."""
    out = _peers(name, setup, settings, peer_class)
    for peer in out:
        peer.run = _tuned(setup, peer.run)
    return out


def _peers(name: str, setup, settings, peer_class) -> list:
    out = []
    quantus, captum = _installed("quantus"), _installed("captum")
    samples = f"{getattr(settings, 'n_samples', '')} samples, the harness's deltas"
    if quantus and name in ("max_sensitivity", "avg_sensitivity"):
        class_name = "MaxSensitivity" if name == "max_sensitivity" else "AvgSensitivity"
        out.append(peer_class(f"Quantus {class_name}", _quantus_robustness(
            class_name, setup, settings,
            return_nan_when_prediction_changes=settings.same_prediction),
            f"{samples}; Quantus explains the 4 images per sample"))
    if captum and name == "max_sensitivity":
        out.append(peer_class("Captum sensitivity_max", _captum_sensitivity(setup, settings),
                              f"{samples}; max_examples_per_batch = the harness's chunk"))
    if quantus and name == "local_lipschitz_estimate":
        out.append(peer_class("Quantus LocalLipschitzEstimate", _quantus_robustness(
            "LocalLipschitzEstimate", setup, settings, return_nan_when_prediction_changes=False),
            f"{samples}; 1e-10 added to its denominator"))
    if quantus and name == "relative_input_stability":
        out.append(peer_class("Quantus RelativeInputStability", _quantus_robustness(
            "RelativeInputStability", setup, settings, eps_min=settings.eps_min),
            f"{samples}; an image with any sample changing the prediction is NaN in Quantus"))
    if captum and name == "infidelity" and settings.perturbation == "gaussian":
        out.append(peer_class("Captum infidelity", _captum_infidelity(setup, settings),
                              "the harness's Gaussian draws; normalize = optimal scaling"))
    if quantus and name == "faithfulness_correlation":
        out.append(peer_class("Quantus FaithfulnessCorrelation",
                              _quantus_correlation(setup, settings),
                              "the harness's pixel subsets and baseline"))
    if quantus and name == "irof":
        out.append(peer_class("Quantus IROF", _quantus_irof(setup, settings),
                              "its own SLIC segments and drifting batch-mean fill",
                              exact=False))
    if quantus and name == "deletion":
        out.append(peer_class("Quantus PixelFlipping", _quantus_pixel_flipping(setup, settings),
                              "curves without point 0; tie order aside",
                              compare=_deletion_curves))
    return out
