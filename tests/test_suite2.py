"""Robustness, localisation and complexity metrics; ground-truth masks (boxes, pasted_objects)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import entropy as scipy_entropy
from torch import nn

import harness
from harness import metrics
from harness.datasets import load_masks
from harness.datasets import pasted as ground_truth
from harness.images import preprocess, preprocess_masks
from harness.metrics.robustness import draw_perturbations, max_normalised
from harness.models import attach_info, prepare
from tests.conftest import LinearModel, TinyCNN

ROBUSTNESS = [metrics.max_sensitivity, metrics.avg_sensitivity, metrics.local_lipschitz_estimate,
              metrics.relative_input_stability]


@pytest.fixture
def linear():
    return prepare(attach_info(LinearModel(), num_classes=4, input_size=8, cam_layer="weight"))


@pytest.fixture
def cnn():
    return prepare(attach_info(TinyCNN(), num_classes=5, input_size=16))


def inputs(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- robustness


def test_input_independent_map_has_zero_sensitivity(linear, cnn):
    x, target = inputs(3, 8), torch.tensor([0, 1, 3])
    for metric in ROBUSTNESS:  # the linear model's gradient does not depend on the input
        result = metric(linear, "vanilla", x, target, n_samples=4)
        assert torch.equal(result.values, torch.zeros(3, dtype=torch.float64)), metric.__name__
    result = metrics.max_sensitivity(cnn, "center", inputs(2, 16), [0, 1], n_samples=3)
    assert torch.equal(result.values, torch.zeros(2, dtype=torch.float64))


def expected_quotients(model, x, target, *, n_samples, radius, seed, pixel_std):
    """Independent per-sample quotients for the signed gradient x input of the linear model:
    phi(x) = sum_c W[t, c] * x_c, so phi(x + d) - phi(x) = sum_c W[t, c] * d_c."""
    rows = []
    for i in range(x.shape[0]):
        weight = model.weight[target[i]].double()
        deltas = draw_perturbations(x[i], n_samples, radius=radius, seed=seed, key=i,
                                    pixel_std=pixel_std).double()
        base = (weight * x[i].double()).sum(0)
        change = (weight * deltas).sum(1)  # [n, H, W]
        sens = change.flatten(1).norm(dim=1) / base.norm()
        lipschitz = change.flatten(1).norm(dim=1) / deltas.flatten(1).norm(dim=1)
        guard = torch.where(base == 0, 1e-6, base)
        xguard = torch.where(x[i] == 0, 1e-6, x[i].double())
        ris = ((change / guard).flatten(1).norm(dim=1)
               / (deltas / xguard).flatten(1).norm(dim=1).clamp(min=1e-6))
        rows.append((sens, lipschitz, ris))
    return [torch.stack(column) for column in zip(*rows, strict=True)]


@pytest.mark.parametrize("units", ["pixel", "input"])
def test_robustness_closed_forms_on_a_linear_model(linear, units):
    x, target = inputs(2, 8), torch.tensor([2, 0])
    params = {"signed": True}
    std = linear.harness_info.std if units == "pixel" else None
    sens, lipschitz, _ = expected_quotients(linear, x, target, n_samples=5, radius=0.2, seed=3,
                                            pixel_std=std)
    common = dict(method_params=params, n_samples=5, seed=3, batch_size=3, radius_units=units)
    result = metrics.max_sensitivity(linear, "grad_x_input", x, target, **common)
    torch.testing.assert_close(result.samples, sens, rtol=1e-5, atol=0)
    torch.testing.assert_close(result.values, sens.amax(1), rtol=1e-5, atol=0)
    average = metrics.avg_sensitivity(linear, "grad_x_input", x, target, **common)
    torch.testing.assert_close(average.values, sens.mean(1), rtol=1e-5, atol=0)
    estimate = metrics.local_lipschitz_estimate(linear, "grad_x_input", x, target, **common)
    torch.testing.assert_close(estimate.values, lipschitz.amax(1), rtol=1e-5, atol=0)
    stability = metrics.relative_input_stability(linear, "grad_x_input", x, target,
                                                 **{**common, "radius": 0.002})
    _, _, ris_small = expected_quotients(linear, x, target, n_samples=5, radius=0.002, seed=3,
                                         pixel_std=std)
    assert bool(stability.included.all())  # a radius this small keeps the predictions
    torch.testing.assert_close(stability.values, ris_small.amax(1), rtol=1e-5, atol=0)
    assert result.values.dtype == torch.float64 and result.settings["norm"] == "fro"
    assert result.settings["radius_units"] == units
    assert result.settings["pixel_std"] == (None if std is None else tuple(std))


def test_the_default_radius_is_in_pixel_units_as_the_reference(linear):
    """The reference perturbs [0, 1] pixels (ToTensor only): r = 0.2 there is r / std_c in the
    normalised input, about 4.4 times the input-space ball for ImageNet's std."""
    x, target = inputs(1, 8), torch.tensor([1])
    common = dict(method_params={"signed": True}, n_samples=3)
    pixel = metrics.local_lipschitz_estimate(linear, "grad_x_input", x, target, **common)
    scaled = metrics.max_sensitivity(linear, "grad_x_input", x, target, **common)
    std = torch.tensor(linear.harness_info.std)
    inside = metrics.max_sensitivity(linear, "grad_x_input", x, target, radius_units="input",
                                     **common)
    # the same uniform draws, scaled per channel: the linear map's change scales likewise
    deltas = draw_perturbations(x[0], 3, radius=0.2, seed=0, key=0)
    weight = linear.weight[1].double()
    base = (weight * x[0].double()).sum(0).norm()
    expected = ((weight * deltas.double() / std.view(1, 3, 1, 1).double()).sum(1)
                .flatten(1).norm(dim=1) / base)
    torch.testing.assert_close(scaled.samples[0], expected, rtol=1e-5, atol=0)
    assert float(scaled.values[0]) > 3 * float(inside.values[0])
    assert pixel.settings["radius_units"] == "pixel"
    with pytest.raises(ValueError, match="radius_units: 'pixels' is not one of: pixel, input"):
        metrics.max_sensitivity(linear, "vanilla", x, target, radius_units="pixels", n_samples=1)


def test_perturbations_fill_the_linf_ball_in_input_or_pixel_units():
    image = torch.zeros(3, 6, 6)
    deltas = draw_perturbations(image, 400, radius=0.2, seed=0, key="a")
    assert deltas.shape == (400, 3, 6, 6)
    assert float(deltas.abs().max()) <= 0.2 and float(deltas.abs().max()) > 0.199
    assert abs(float(deltas.mean())) < 0.005  # U(-r, r)
    std = (0.5, 0.25, 0.1)
    scaled = draw_perturbations(image, 400, radius=0.2, seed=0, key="a", pixel_std=std)
    for channel, value in enumerate(std):  # radius 0.2 in [0, 1] pixels = 0.2 / std per channel
        torch.testing.assert_close(scaled[:, channel], deltas[:, channel] / value)
    gaussian = draw_perturbations(image, 400, radius=0.1, noise="gaussian", seed=0, key="a")
    assert 0.095 < float(gaussian.std()) < 0.105


def test_robustness_can_fail(cnn):
    """A map that ignores the input (centre prior) is perfectly stable, a random map is not, and
    the gradient lies between."""
    x, target = inputs(2, 16), torch.tensor([1, 4])
    values = {name: metrics.max_sensitivity(cnn, name, x, target, n_samples=4).values
              for name in ("center", "vanilla", "random")}
    assert bool((values["center"] == 0).all())
    assert bool((values["vanilla"] > 0).all())
    assert bool((values["random"] > values["vanilla"]).all())


@pytest.mark.parametrize("metric", ROBUSTNESS)
def test_robustness_is_seeded_and_independent_of_batch(linear, metric):
    x, target, ids = inputs(3, 8), torch.tensor([0, 1, 2]), ["a", "b", "c"]
    common = dict(n_samples=5, method_params={"signed": True})
    batch = metric(linear, "grad_x_input", x, target, ids=ids, batch_size=4, **common)
    again = metric(linear, "grad_x_input", x, target, ids=ids, batch_size=4, **common)
    assert torch.equal(batch.values, again.values)
    for i in range(3):
        alone = metric(linear, "grad_x_input", x[i:i + 1], target[i:i + 1], ids=ids[i:i + 1],
                       batch_size=2, **common)
        assert torch.equal(alone.samples[0], batch.samples[i]), (metric.__name__, i)
    other = metric(linear, "grad_x_input", x, target, ids=ids, seed=1, **common)
    assert not torch.equal(other.samples, batch.samples)


@pytest.mark.parametrize("method, params", [("random", {}),
                                            ("smoothgrad", {"n": 3, "batch_size": 4})])
def test_stochastic_methods_give_the_same_values_at_any_batch_size(cnn, method, params):
    """The review's finding: the random map had Max-Sensitivity 0 at batch_size 1 and 0.80 at 16
    when its noise was seeded by batch position (sample 0 reused the clean map's noise). Seeded by
    the image's values, every perturbed input gets noise of its own, at any batch size."""
    x, target, ids = inputs(3, 16), torch.tensor([1, 4, 0]), ["a", "b", "c"]
    common = dict(method_params=params, n_samples=4, ids=ids)
    for metric in (metrics.max_sensitivity, metrics.avg_sensitivity):
        one = metric(cnn, method, x, target, batch_size=1, **common)
        many = metric(cnn, method, x, target, batch_size=16, **common)
        torch.testing.assert_close(one.samples, many.samples, rtol=1e-6, atol=0)
        torch.testing.assert_close(one.values, many.values, rtol=1e-6, atol=0)
        assert bool((one.samples > 0).all())  # no sample reuses the clean map's noise
    if method == "random":  # two independent U[0, 1) maps: ||r1 - r2|| / ||r1|| ~ sqrt(1/2)
        assert bool((one.values > 0.6).all())


def test_relative_input_stability_drops_samples_that_change_the_prediction(linear):
    x = inputs(3, 8)
    with torch.no_grad():
        target = linear(x).argmax(1)
    result = metrics.relative_input_stability(linear, "grad_x_input", x, target, radius=0.5,
                                              n_samples=8)
    assert 0 < int(result.kept.sum()) < 24  # a large ball changes some predictions
    for i in range(3):
        kept = result.samples[i][result.included[i]]
        expected = kept.max() if len(kept) else torch.tensor(float("nan"), dtype=torch.float64)
        torch.testing.assert_close(result.values[i], expected, equal_nan=True)
    same = metrics.avg_sensitivity(linear, "grad_x_input", x, target, radius=0.5, n_samples=8,
                                   same_prediction=True)  # Bhatt et al.'s neighbourhood N_r
    assert torch.equal(same.included, result.included)
    every = metrics.avg_sensitivity(linear, "grad_x_input", x, target, radius=0.5, n_samples=8)
    assert bool(every.included.all()) and torch.equal(every.samples, same.samples)


class SqrtBarrier(nn.Module):
    """A linear model plus sqrt(x[:, 0, 0, 0] - 1): its gradient is NaN where that pixel < 1."""

    def __init__(self):
        super().__init__()
        self.linear = LinearModel()

    def forward(self, x):
        return self.linear(x) + torch.sqrt(x[:, 0, 0, 0] - 1).unsqueeze(1)


def test_nan_maps_name_the_image_and_sample():
    model = prepare(attach_info(SqrtBarrier(), num_classes=4, input_size=8, cam_layer="linear"))
    x = inputs(2, 8)
    x[:, 0, 0, 0] = torch.tensor([3.0, 1.05])  # the clean maps are finite
    with pytest.raises(ValueError, match=r"NaN/inf map for image b perturbed by sample \d"):
        metrics.max_sensitivity(model, "vanilla", x, [0, 1], ids=["a", "b"], n_samples=8,
                                radius_units="input")
    x[1, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="NaN/inf map for image b$"):
        metrics.max_sensitivity(model, "vanilla", x, [0, 1], ids=["a", "b"], n_samples=2)


def test_max_normalisation_leaves_an_all_zero_map_unchanged():
    maps = torch.zeros(2, 3, 3, dtype=torch.float64)
    maps[1, 0, 0] = -4.0
    normalised = max_normalised(maps)
    assert torch.equal(normalised[0], maps[0])  # no 0 / 0 = NaN
    assert float(normalised[1, 0, 0]) == -1.0 and torch.isfinite(normalised).all()


def test_robustness_bad_input_is_named(linear):
    x, target = inputs(2, 8), [0, 1]
    with pytest.raises(ValueError, match="n_samples"):
        metrics.max_sensitivity(linear, "vanilla", x, target, n_samples=0)
    with pytest.raises(ValueError, match="noise: 'salt'"):
        metrics.max_sensitivity(linear, "vanilla", x, target, noise="salt", n_samples=2)
    with pytest.raises(ValueError, match="norm: 'l3'.*fro"):
        metrics.max_sensitivity(linear, "vanilla", x, target, norm="l3", n_samples=2)
    with pytest.raises(ValueError, match="pixel_std must hold 3"):
        draw_perturbations(x[0], 2, radius=0.2, pixel_std=(0.2, 0.2))
    with pytest.raises(ValueError, match="ids has 1 entries"):
        metrics.avg_sensitivity(linear, "vanilla", x, target, ids=["a"], n_samples=2)
    with pytest.raises(ValueError, match="radius"):
        metrics.local_lipschitz_estimate(linear, "vanilla", x, target, radius=0, n_samples=2)
    for eps_min in (0.0, -1.0, float("nan")):  # a guard <= 0 gave 0 or NaN values silently
        with pytest.raises(ValueError, match="eps_min: must be a finite number > 0"):
            metrics.relative_input_stability(linear, "vanilla", x, target, eps_min=eps_min,
                                             n_samples=2)
    with pytest.raises(ValueError, match="p: must be a finite number > 0"):
        metrics.relative_input_stability(linear, "vanilla", x, target, p=0, n_samples=2)


# ----------------------------------------------------------------------------- localisation


def block_mask(n: int = 2, size: int = 32) -> torch.Tensor:
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    mask[0, 4:12, 20:30] = True
    mask[1, 16:30, 2:9] = True
    return mask


def test_a_map_equal_to_the_mask_scores_perfectly():
    mask = block_mask()
    saliency = mask.float()
    sizes = mask.flatten(1).sum(1).double()
    assert torch.equal(metrics.pointing_game(saliency, mask).values, torch.ones(2).double())
    for metric in (metrics.relevance_mass_accuracy, metrics.relevance_rank_accuracy,
                   metrics.attribution_localisation):
        assert torch.equal(metric(saliency, mask).values, torch.ones(2).double()), metric
    weighted = metrics.attribution_localisation(saliency, mask, weighted=True).values
    torch.testing.assert_close(weighted, 32 * 32 / sizes)
    top = metrics.top_k_intersection(saliency, mask, k=int(sizes.min()))
    assert torch.equal(top.values, torch.ones(2).double())
    influence = metrics.top_k_intersection(saliency, mask, k=50, concept_influence=True).values
    torch.testing.assert_close(influence, 32 * 32 / sizes)


def test_localisation_can_fail():
    mask = block_mask()
    wrong = (~mask).float()  # all relevance outside the object
    assert torch.equal(metrics.pointing_game(wrong, mask, tolerance=0).values,
                       torch.zeros(2).double())
    for metric in (metrics.relevance_mass_accuracy, metrics.relevance_rank_accuracy,
                   metrics.attribution_localisation, partial(metrics.top_k_intersection, k=900)):
        assert torch.equal(metric(wrong, mask).values, torch.zeros(2).double()), metric
    uniform = torch.ones(2, 32, 32)
    sizes = mask.flatten(1).sum(1).double()
    torch.testing.assert_close(metrics.relevance_mass_accuracy(uniform, mask).values,
                               sizes / 1024)
    torch.testing.assert_close(
        metrics.attribution_localisation(uniform, mask, weighted=True).values,
        torch.ones(2).double())
    # ties go to the lower flat index: the first K pixels in row-major order are ranked first
    expected = torch.stack([mask[i].flatten()[: int(sizes[i])].sum() for i in range(2)]) / sizes
    torch.testing.assert_close(metrics.relevance_rank_accuracy(uniform, mask).values,
                               expected.double())


def test_mass_and_rank_against_an_independent_computation():
    generator = torch.Generator().manual_seed(0)
    saliency = torch.randn(2, 16, 16, generator=generator)
    mask = torch.rand(2, 16, 16, generator=generator) < 0.3
    for i in range(2):
        positive = saliency[i].double().clamp(min=0).numpy()
        inside = positive[mask[i].numpy()].sum() / positive.sum()
        mass = metrics.relevance_mass_accuracy(saliency, mask).values[i]
        assert float(mass) == pytest.approx(inside, rel=1e-12)
        k = int(mask[i].sum())
        order = np.argsort(-saliency[i].numpy().ravel(), kind="stable")[:k]
        rank = mask[i].numpy().ravel()[order].mean()
        assert float(metrics.relevance_rank_accuracy(saliency, mask).values[i]) == rank
        top = mask[i].numpy().ravel()[order[:20]].mean()
        assert float(metrics.top_k_intersection(saliency, mask, k=20).values[i]) == top


def test_pointing_game_tolerance_as_torchray():
    mask = torch.zeros(5, 64, 64, dtype=torch.bool)
    mask[:, 20, 20] = True
    saliency = torch.zeros(5, 64, 64)
    for i, (row, col) in enumerate([(20, 35), (20, 34), (29, 32), (28, 32), (20, 20)]):
        saliency[i, row, col] = 1.0
    result = metrics.pointing_game(saliency, mask)  # hit iff distance^2 < 15^2 (strict)
    assert result.values.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert result.points[2].tolist() == [29, 32] and result.tolerance == 15
    exact = metrics.pointing_game(saliency, mask, tolerance=0).values
    assert exact.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    ties = torch.zeros(1, 64, 64)
    ties[0, 50, 50] = ties[0, 20, 21] = 1.0  # the first maximum in row-major order wins
    assert metrics.pointing_game(ties, mask[:1], tolerance=2).points.tolist() == [[20, 21]]


def test_pointing_game_summary_averages_over_classes():
    summary = metrics.pointing_game_summary([1, 0, 1, 1], [7, 7, 3, 5])
    assert summary.class_accuracies == {3: 1.0, 5: 1.0, 7: 0.5}
    assert summary.class_counts == {3: 1, 5: 1, 7: 2}
    assert summary.accuracy == pytest.approx(2.5 / 3) and summary.overall == 0.75
    with pytest.raises(ValueError, match="hits has 2 entries but classes 3"):
        metrics.pointing_game_summary([1, 0], [1, 2, 3])


def test_pointing_game_summary_takes_object_names_as_classes():
    """The README's advice for pasted_objects: the object (from the sample id) as the class."""
    ids = ["0000-cat-on-brick", "0001-espresso-on-grass", "0005-cat-on-page"]
    summary = metrics.pointing_game_summary([1.0, 1.0, 0.0], [i.split("-")[1] for i in ids])
    assert summary.class_accuracies == {"cat": 0.5, "espresso": 1.0}
    assert summary.class_counts == {"cat": 2, "espresso": 1}
    assert summary.accuracy == 0.75
    tensor = metrics.pointing_game_summary(torch.tensor([1.0, 0.0]), torch.tensor([4, 4]))
    assert tensor.class_accuracies == {4: 0.5}  # tensor classes still give int keys


def test_localisation_bad_input_is_named():
    mask, saliency = block_mask(), torch.rand(2, 32, 32)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 16, 16\); the maps are"):
        metrics.relevance_mass_accuracy(saliency, mask[:, :16, :16])
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match="mask of image dog.png is empty"):
        metrics.pointing_game(saliency, empty, ids=["cat.png", "dog.png"])
    nan = saliency.clone()
    nan[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="image #0 contains NaN"):
        metrics.relevance_rank_accuracy(nan, mask)
    with pytest.raises(ValueError, match="boolean"):
        metrics.top_k_intersection(saliency, mask.float() * 2)
    with pytest.raises(ValueError, match=r"k: must be an integer in \[1, 1024\]"):
        metrics.top_k_intersection(saliency, mask, k=2000)
    with pytest.raises(ValueError, match="tolerance"):
        metrics.pointing_game(saliency, mask, tolerance=-1)
    assert torch.equal(metrics.relevance_mass_accuracy(saliency, mask.int()).values,
                       metrics.relevance_mass_accuracy(saliency, mask).values)  # 0/1 accepted


# ----------------------------------------------------------------------------- complexity


def test_complexity_closed_forms():
    n = 8 * 8
    one_hot = torch.zeros(1, 8, 8)
    one_hot[0, 3, 5] = -2.0  # absolute values are read
    constant = torch.full((1, 8, 8), 0.3)
    zeros = torch.zeros(1, 8, 8)
    assert float(metrics.sparseness(one_hot).values) == pytest.approx((n - 1) / n, abs=1e-15)
    assert float(metrics.sparseness(constant).values) == pytest.approx(0.0, abs=1e-15)
    assert float(metrics.sparseness(zeros).values) == 0.0
    assert float(metrics.complexity(one_hot).values) == 0.0
    assert float(metrics.complexity(constant).values) == pytest.approx(math.log(n))
    assert math.isnan(float(metrics.complexity(zeros).values))
    assert metrics.effective_complexity(one_hot).values.tolist() == [1.0]
    assert metrics.effective_complexity(constant).values.tolist() == [64.0]
    assert metrics.effective_complexity(zeros).values.tolist() == [0.0]
    assert metrics.effective_complexity(constant, eps=0.5, normalise=False).values.tolist() == [0.0]


def test_gini_and_entropy_against_independent_formulas():
    maps = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(4)) - 0.2
    gini = metrics.sparseness(maps).values
    entropy = metrics.complexity(maps).values
    for i in range(3):
        values = maps[i].abs().double().flatten().numpy()
        # mean absolute difference over twice the mean: sum_ij |a_i - a_j| / (2 n sum a)
        differences = np.abs(values[:, None] - values[None, :]).sum()
        expected = differences / (2 * values.size * values.sum())
        assert float(gini[i]) == pytest.approx(expected, rel=1e-12)
        assert float(entropy[i]) == pytest.approx(scipy_entropy(values), rel=1e-12)


def test_complexity_can_fail():
    """A compact blob is sparser and simpler than noise spread over the image."""
    blob = torch.zeros(1, 16, 16)
    blob[0, 6:9, 6:9] = 1.0
    noise = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(metrics.sparseness(blob).values) > float(metrics.sparseness(noise).values)
    assert float(metrics.complexity(blob).values) < float(metrics.complexity(noise).values)
    assert float(metrics.effective_complexity(blob).values) < float(
        metrics.effective_complexity(noise).values)


def test_complexity_bad_input_is_named():
    maps = torch.rand(2, 4, 4)
    maps[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="image b contains NaN or inf"):
        metrics.sparseness(maps, ids=["a", "b"])
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        metrics.complexity(torch.rand(4, 4))
    with pytest.raises(ValueError, match="eps"):
        metrics.effective_complexity(maps[:1], eps=-1)


# ----------------------------------------------------------------------------- ground truth


def test_pasted_objects_are_deterministic_with_masks_known_by_construction():
    first = harness.load_dataset("pasted_objects", size=5, model=None, canvas=64)
    again = harness.load_dataset("pasted_objects", size=5, model=None, canvas=64)
    shorter = harness.load_dataset("pasted_objects", size=3, model=None, canvas=64)
    other = harness.load_dataset("pasted_objects", size=5, model=None, canvas=64, paste_seed=1)
    assert first.ids == again.ids and first.ids[:3] == shorter.ids
    assert first.fingerprint() == again.fingerprint() != other.fingerprint()
    assert [s.label for s in first] == [ground_truth.OBJECTS[i.split("-")[1]].label
                                        for i in first.ids]
    margin = (64 - round(64 * ground_truth.VISIBLE)) // 2
    for sample, repeat in zip(first, again, strict=True):
        image, mask = sample.load(), sample.mask()
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.dtype == bool
        assert np.array_equal(mask, repeat.mask()) and mask.any()
        inside = np.zeros_like(mask)
        inside[margin:64 - margin, margin:64 - margin] = True
        assert not (mask & ~inside).any()  # the object stays in the central 87.5%
    with pytest.raises(ValueError, match="objects.*choose from: cat"):
        harness.load_dataset("pasted_objects", size=2, model=None, objects=["unicorn"])


def test_pasted_objects_keep_what_the_model_recognises(lite0):
    data = harness.load_dataset("pasted_objects", size=2, model=lite0)
    x = preprocess([s.load() for s in data], lite0.harness_info)
    with torch.no_grad():
        predicted = lite0(x).argmax(1).tolist()
    assert predicted == [s.label for s in data]
    for sample in data:
        assert sample.label in ground_truth.OBJECTS[sample.id.split("-")[1]].classes
    masks = load_masks(data.samples, lite0.harness_info)
    assert masks.shape == (2, 224, 224) and masks.dtype == torch.bool


def test_masks_follow_the_image_geometry():
    """A block drawn in the image and given as its mask lands on the same pixels after the
    resize (shorter side 20) and centre crop (16) of a non-square image."""
    model = attach_info(LinearModel(size=(16, 16)), num_classes=4, input_size=16, resize_size=20,
                        cam_layer="weight")
    image = np.zeros((30, 50, 3), dtype=np.uint8)
    mask = np.zeros((30, 50), dtype=bool)
    mask[6:24, 15:33] = True
    image[mask] = 255
    pixels = preprocess([image], model.harness_info)[0, 0]
    crop = preprocess_masks([mask], model.harness_info)[0]
    seen = pixels > pixels.min() + (pixels.max() - pixels.min()) / 2
    assert crop.shape == (16, 16) and crop.dtype == torch.bool
    assert int((seen ^ crop).sum()) <= 16  # bilinear vs nearest differ on the rim only
    assert int(crop.sum()) > 60


def write_box_xml(path, width, height, boxes):
    objects = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in boxes)
    path.write_text(f"<annotation><filename>{path.stem}</filename><size><width>{width}</width>"
                    f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>")


def test_imagefolder_boxes_give_masks(tmp_path):
    root, boxes = tmp_path / "val", tmp_path / "boxes"
    for wnid in ("n01", "n02"):
        (root / wnid).mkdir(parents=True)
    boxes.mkdir()
    Image.new("RGB", (40, 30)).save(root / "n01" / "val_1.png")
    Image.new("RGB", (40, 30)).save(root / "n02" / "val_2.png")
    write_box_xml(boxes / "val_1.xml", 40, 30, [("n01", 1, 1, 10, 5), ("n02", 20, 20, 40, 30),
                                                 ("n01", 31, 2, 33, 3)])
    write_box_xml(boxes / "val_2.xml", 40, 30, [("n02", 5, 6, 5, 6)])
    data = harness.load_dataset("imagefolder", root=root, boxes=boxes)
    mask = data[0].mask()
    expected = np.zeros((30, 40), dtype=bool)
    expected[0:5, 0:10] = expected[1:3, 30:33] = True  # 1-based inclusive, class n01 only
    assert np.array_equal(mask, expected)
    single = np.zeros((30, 40), dtype=bool)
    single[5, 4] = True
    assert np.array_equal(data[1].mask(), single)
    everything = harness.load_dataset("imagefolder", root=root, boxes=boxes, box_classes="all")
    expected[19:30, 19:40] = True
    assert np.array_equal(everything[0].mask(), expected)
    write_box_xml(boxes / "val_2.xml", 41, 30, [("n02", 5, 6, 5, 6)])
    with pytest.raises(ValueError, match="boxes of image 'n02/val_2.png'.*41x30.*40x30"):
        data[1].mask()
    (boxes / "val_2.xml").unlink()
    with pytest.raises(ValueError, match="no box file val_2.xml for image 'n02/val_2.png'"):
        harness.load_dataset("imagefolder", root=root, boxes=boxes)


def test_a_dataset_without_ground_truth_is_refused_before_compute(lite0):
    data = harness.load_dataset("samples", names=["chelsea", "coffee"])
    assert data[0].mask() is None
    with pytest.raises(ValueError, match="image 'chelsea' .2 of 2. has no ground-truth mask"):
        load_masks(data.samples, lite0.harness_info)
