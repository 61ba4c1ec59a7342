"""Infidelity, faithfulness correlation, Average Drop / Increase in Confidence, IROF and the
random-logit test: closed forms, independent computations, failing maps, seeds, bad input."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from skimage.segmentation import slic
from torch import nn

import harness
from harness import metrics
from harness.images import deprocess, normalize
from harness.metrics.correlation import pearson
from harness.metrics.infidelity import InfidelitySettings, square_count, squares
from harness.models import attach_info
from harness.sanity import MEASURES, other_classes, random_logit
from harness.seeding import image_generator
from tests.conftest import LinearModel


def described(model: nn.Module, n_classes: int, size: int) -> nn.Module:
    return harness.models.prepare(attach_info(model, num_classes=n_classes, input_size=size,
                                              cam_layer="weight"))


def linear64(n_classes: int = 4, size: int = 8, seed: int = 0) -> nn.Module:
    """LinearModel in float64: score_k = <W_k, x> + b_k exactly (to 1e-15)."""
    return described(LinearModel(n_classes, (size, size), seed).double(), n_classes, size)


class ChannelFree(nn.Module):
    """score_k = sum_hw A_khw sum_c x_chw + b_k: weights equal in every channel (float64)."""

    def __init__(self, n_classes: int = 3, size: int = 8, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(n_classes, size, size, generator=generator).double())
        self.bias = nn.Parameter(torch.randn(n_classes, generator=generator).double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nhw,khw->nk", x.sum(1), self.weight) + self.bias


def scale_of(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    info = model.harness_info
    return (torch.tensor(info.mean, dtype=torch.float64).view(1, 3, 1, 1),
            torch.tensor(info.std, dtype=torch.float64).view(1, 3, 1, 1))


def contribution_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                     fill: torch.Tensor) -> torch.Tensor:
    """sum_c W[target]_chw (x_chw - fill_c): each pixel's exact share of the score change when it
    is set to ``fill`` in a linear model."""
    return (model.weight[target] * (x - fill)).sum(1)


# ------------------------------------------------------------------------------ infidelity


@pytest.mark.parametrize("baseline", ["black", "zero", "mean"])
def test_infidelity_square_removal_of_a_linear_model_is_zero_with_its_contributions(baseline):
    model = linear64()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 3])
    mean, std = scale_of(model)
    fill = {"black": -mean / std, "zero": torch.zeros_like(mean),
            "mean": x.mean(dim=(2, 3), keepdim=True)}[baseline]
    right = contribution_map(model, x, target, fill)
    result = metrics.infidelity(model, x, right, target, perturbation="square", baseline=baseline)
    assert result.n_perturbations == square_count(8, 8) == sum((9 - s) ** 2 for s in range(1, 9))
    assert float(result.values.max()) < 1e-9
    torch.testing.assert_close(result.beta, torch.ones(2, dtype=torch.float64))
    # optimal scaling: any multiple of the right map is exact too; without scaling it is not
    tripled = metrics.infidelity(model, x, 3 * right, target, perturbation="square",
                                 baseline=baseline)
    assert float(tripled.values.max()) < 1e-9 and float(tripled.unscaled.min()) > 1
    torch.testing.assert_close(tripled.beta, torch.full((2,), 1 / 3, dtype=torch.float64))
    # it can fail: the vanilla gradient map and a random map are worse
    for wrong in (harness.saliency("vanilla", model, x, target), torch.rand(2, 8, 8)):
        worse = metrics.infidelity(model, x, wrong.double(), target, perturbation="square",
                                   baseline=baseline)
        assert bool((worse.values > 1e-3).all())


def test_infidelity_zero_baseline_right_map_is_signed_gradient_x_input():
    model = linear64()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([1, 2])
    signed = harness.saliency("grad_x_input", model, x, target, signed=True)
    result = metrics.infidelity(model, x, signed, target, perturbation="square", baseline="zero",
                                n_perturbations=40)
    assert float(result.values.max()) < 1e-9 and result.n_perturbations == 40


def test_infidelity_gaussian_is_zero_for_channel_free_linear_model_and_its_gradient():
    model = described(ChannelFree(), 3, 8)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 2])
    gradient = harness.saliency("vanilla", model, x, target, signed=True)  # channel sum = 3 A
    result = metrics.infidelity(model, x, gradient, target, n_perturbations=50)
    assert result.perturbation == "gaussian" and result.n_perturbations == 50
    assert float(result.values.max()) < 1e-9
    torch.testing.assert_close(result.beta, torch.full((2,), 1 / 3, dtype=torch.float64))
    wrong = metrics.infidelity(model, x, harness.saliency("vanilla", model, x, target).double(),
                               target, n_perturbations=50)  # |gradient|: signs lost
    assert bool((wrong.values > 1e-3).all())


def test_infidelity_reference_defaults():
    model = described(ChannelFree(size=4), 3, 4)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    result = metrics.infidelity(model, x, torch.rand(1, 4, 4, dtype=torch.float64), [0])
    assert (result.n_perturbations, result.noise, result.score, result.scaling) == (
        10_000, 0.2, "logit", True)
    assert result.square_sizes == tuple(range(1, 11)) and result.baseline == "black"


def test_infidelity_squares_follow_the_reference_enumeration():
    height, width, sizes = 5, 7, (1, 2, 3, 9)
    expected = [(s, top, left) for s in sizes for top in range(height - s + 1)
                for left in range(width - s + 1)]
    assert square_count(height, width, sizes) == len(expected)
    side, top, left = squares(torch.arange(len(expected)), height, width, sizes)
    assert list(zip(side.tolist(), top.tolist(), left.tolist(), strict=True)) == expected


def test_infidelity_square_equals_a_reference_loop(tiny_cnn):
    tiny_cnn = tiny_cnn.double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    saliency = torch.randn(2, 6, 6, dtype=torch.float64)
    target = torch.tensor([1, 4])
    ours = metrics.infidelity(tiny_cnn, x, saliency, target, perturbation="square", batch_size=7)
    mean, std = scale_of(tiny_cnn)
    black = (-mean / std)[0]
    for image in range(2):
        drops, sums = [], []
        with torch.no_grad():
            clean = float(tiny_cnn(x[image:image + 1])[0, target[image]])
            for s in range(1, 11):  # sides 7..10 do not fit a 6 x 6 image
                for top in range(6 - s + 1):
                    for left in range(6 - s + 1):
                        perturbed = x[image].clone()
                        perturbed[:, top:top + s, left:left + s] = black
                        drops.append(clean - float(tiny_cnn(perturbed[None])[0, target[image]]))
                        sums.append(float(saliency[image, top:top + s, left:left + s].sum()))
        drops, sums = np.array(drops), np.array(sums)
        beta = np.mean(drops * sums) / np.mean(sums * sums)
        assert float(ours.values[image]) == pytest.approx(np.mean((drops - beta * sums) ** 2),
                                                          rel=1e-9)
        assert float(ours.unscaled[image]) == pytest.approx(np.mean((drops - sums) ** 2),
                                                            rel=1e-9)


def test_infidelity_gaussian_equals_captum_on_the_reference_noise(tiny_cnn):
    captum_metrics = pytest.importorskip("captum.metrics")
    x = torch.randn(1, 3, 6, 6).double()
    model = tiny_cnn.double()
    saliency = torch.randn(1, 6, 6, dtype=torch.float64)
    target, count, seed = torch.tensor([2]), 25, 7
    ours = metrics.infidelity(model, x, saliency, target, n_perturbations=count, seed=seed,
                              ids=["img"])
    # the reference's draw (set_zero_infid): randd = clip(x + 0.2 z, x - 1, x) on [0, 1] pixels
    generator = image_generator(seed, "img", salt="infidelity")
    z = torch.stack([torch.randn((3, 6, 6), dtype=torch.float32, generator=generator)
                     for _ in range(count)]).double()
    mean, std = scale_of(model)
    pixels = deprocess(x, model.harness_info)
    randd = torch.minimum(pixels, torch.maximum(pixels - 1, pixels + 0.2 * z))
    assert torch.allclose(pixels - randd, (-0.2 * z).clamp(0, 1))  # noise around black, clipped
    perturbation = randd / std

    def perturb(inputs):
        return perturbation, inputs - perturbation

    attributions = saliency[:, None].expand(1, 3, 6, 6)
    for normalize_flag, ours_value in ((True, ours.scaled), (False, ours.unscaled)):
        theirs = captum_metrics.infidelity(model, perturb, x, attributions, target=target,
                                           n_perturb_samples=count, normalize=normalize_flag)
        assert float(ours_value[0]) == pytest.approx(float(theirs[0]), rel=1e-9)


@pytest.mark.parametrize("baseline", ["black", "zero", "mean"])
def test_infidelity_gaussian_baselines_equal_an_independent_loop(tiny_cnn, baseline):
    """The perturbed image is clip(b - noise z, 0, 1) in pixels, b the baseline's pixels: black
    (0), zero (the normalisation's mean colour) or the image's own channel means."""
    model = tiny_cnn.double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    saliency = torch.randn(2, 6, 6, dtype=torch.float64)
    target, count, ids = torch.tensor([0, 3]), 9, ["i", "j"]
    ours = metrics.infidelity(model, x, saliency, target, n_perturbations=count, ids=ids,
                              baseline=baseline, batch_size=4)
    info = model.harness_info
    mean, std = scale_of(model)
    pixels = deprocess(x, info)
    base = {"black": torch.zeros(2, 3, 1, 1, dtype=torch.float64),
            "zero": mean.expand(2, 3, 1, 1),
            "mean": pixels.mean(dim=(2, 3), keepdim=True)}[baseline]
    for image in range(2):
        generator = image_generator(0, ids[image], salt="infidelity")
        with torch.no_grad():
            clean = float(model(x[image:image + 1])[0, target[image]])
        drops, sums = [], []
        for _ in range(count):
            z = torch.randn((3, 6, 6), dtype=torch.float32, generator=generator).double()
            perturbed = normalize((base[image] - 0.2 * z).clamp(0, 1)[None], info)
            with torch.no_grad():
                drops.append(clean - float(model(perturbed)[0, target[image]]))
            sums.append(float(((x[image] - perturbed[0]).sum(0) * saliency[image]).sum()))
        drops, sums = np.array(drops), np.array(sums)
        beta = np.mean(drops * sums) / np.mean(sums * sums)
        assert float(ours.values[image]) == pytest.approx(np.mean((drops - beta * sums) ** 2),
                                                          rel=1e-9)
        assert float(ours.unscaled[image]) == pytest.approx(np.mean((drops - sums) ** 2),
                                                            rel=1e-9)
    # the baselines differ (the test can tell them apart)
    other = metrics.infidelity(model, x, saliency, target, n_perturbations=count, ids=ids,
                               baseline="zero" if baseline != "zero" else "mean")
    assert not torch.allclose(other.unscaled, ours.unscaled)


@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_infidelity_gaussian_zero_and_mean_baselines_keep_the_closed_form(baseline):
    model = described(ChannelFree(), 3, 8)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([1, 0])
    gradient = harness.saliency("vanilla", model, x, target, signed=True)
    result = metrics.infidelity(model, x, gradient, target, n_perturbations=30,
                                baseline=baseline)
    assert result.baseline == baseline and float(result.values.max()) < 1e-9
    wrong = metrics.infidelity(model, x, torch.rand(2, 8, 8, dtype=torch.float64), target,
                               n_perturbations=30, baseline=baseline)
    assert bool((wrong.values > 1e-3).all())


@pytest.mark.slow
def test_infidelity_memory_is_bounded_by_the_batch_not_the_images(tiny_cnn, monkeypatch):
    """Perturbed inputs are built and scored ``batch_size`` at a time, in full chunks that run
    across image boundaries; the chunking changes no value (one by one gives the same)."""
    module = importlib.import_module("harness.metrics.infidelity")  # the package's name is the
    # function
    passes, chunks = [], []
    original = module.score_stream

    def counted(model, owners, build, *args, **kwargs):
        passes.append(int(owners.shape[0]))

        def sized(begin, end):
            chunks.append(end - begin)
            return build(begin, end)
        return original(model, owners, sized, *args, **kwargs)

    monkeypatch.setattr(module, "score_stream", counted)
    x = torch.randn(5, 3, 8, 8)
    saliency = torch.randn(5, 8, 8)
    target = torch.tensor([0, 1, 2, 3, 4])
    for options, batch_size in (({"n_perturbations": 3}, 7), ({"perturbation": "square"}, 16)):
        passes.clear()
        chunks.clear()
        result = metrics.infidelity(tiny_cnn, x, saliency, target, batch_size=batch_size,
                                    **options)
        count = result.n_perturbations
        assert max(chunks) <= batch_size and sum(chunks) == 5 * count
        assert chunks[:-1] == [batch_size] * (len(chunks) - 1)  # full chunks across images
        assert passes == [5 * count]  # 5 x count pairs fit in one pass of PAIRS_PER_PASS
        one_by_one = metrics.infidelity(tiny_cnn, x, saliency, target, batch_size=1, **options)
        torch.testing.assert_close(result.values, one_by_one.values, rtol=1e-5, atol=1e-8)
    assert count == 204  # every square of an 8 x 8 image


@pytest.mark.slow
def test_infidelity_seeded_and_independent_of_the_batch(tiny_cnn):
    x = torch.randn(3, 3, 8, 8)
    saliency = torch.randn(3, 8, 8)
    target = torch.tensor([0, 1, 4])
    ids = ["a", "b", "c"]
    for options in ({"n_perturbations": 12}, {"perturbation": "square", "n_perturbations": 30}):
        batch = metrics.infidelity(tiny_cnn, x, saliency, target, ids=ids, batch_size=5,
                                   **options)
        again = metrics.infidelity(tiny_cnn, x, saliency, target, ids=ids, batch_size=5,
                                   **options)
        assert torch.equal(batch.values, again.values)
        for i in range(3):
            alone = metrics.infidelity(tiny_cnn, x[i:i + 1], saliency[i:i + 1], target[i:i + 1],
                                       ids=ids[i:i + 1], batch_size=4, **options)
            torch.testing.assert_close(alone.values, batch.values[i:i + 1], rtol=1e-5, atol=1e-8)
        other = metrics.infidelity(tiny_cnn, x, saliency, target, ids=ids, seed=1, **options)
        assert not torch.allclose(other.values, batch.values)


def test_infidelity_bad_input_is_named(tiny_cnn):
    x = torch.randn(2, 3, 8, 8)
    good = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="perturbation: 'noise' is not one of: gaussian, square"):
        metrics.infidelity(tiny_cnn, x, good, [0, 1], perturbation="noise")
    with pytest.raises(ValueError, match="baseline: 'white' is not one of: black, zero, mean"):
        metrics.infidelity(tiny_cnn, x, good, [0, 1], baseline="white")
    with pytest.raises(ValueError, match=r"n_perturbations: must be an integer in \[2, 204\]"):
        metrics.infidelity(tiny_cnn, x, good, [0, 1], perturbation="square", n_perturbations=205)
    with pytest.raises(ValueError, match="noise: must be a finite number > 0"):
        metrics.infidelity(tiny_cnn, x, good, [0, 1], noise=0)
    bad = good.clone()
    bad[1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="saliency map of image coffee contains NaN or inf"):
        metrics.infidelity(tiny_cnn, x, bad, [0, 1], ids=["chelsea", "coffee"])
    with pytest.raises(ValueError, match="target 9 of image #1 is out of range: the model has 5"):
        metrics.infidelity(tiny_cnn, x, good, [0, 9], n_perturbations=2)


# ------------------------------------------------------------------- faithfulness correlation


@pytest.mark.parametrize("baseline", ["black", "zero", "mean"])
def test_correlation_is_one_for_a_linear_model_and_its_contributions(baseline):
    model = linear64()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([2, 0])
    mean, std = scale_of(model)
    fill = {"black": -mean / std, "zero": torch.zeros_like(mean),
            "mean": x.mean(dim=(2, 3), keepdim=True)}[baseline]
    right = contribution_map(model, x, target, fill)
    result = metrics.faithfulness_correlation(model, x, right, target, subset_size=10,
                                              n_subsets=20, baseline=baseline)
    torch.testing.assert_close(result.attribution_sums, result.score_drops, rtol=0, atol=1e-12)
    assert float((result.values - 1).abs().max()) < 1e-9 and result.status == ("ok", "ok")
    # it can fail: the negated map correlates -1, a random map much less than 1
    assert float((metrics.faithfulness_correlation(
        model, x, -right, target, subset_size=10, n_subsets=20, baseline=baseline).values
        + 1).abs().max()) < 1e-9
    random = metrics.faithfulness_correlation(model, x, torch.rand(2, 8, 8, dtype=torch.float64),
                                              target, subset_size=10, n_subsets=20,
                                              baseline=baseline)
    assert bool((random.values < 0.8).all())


def test_correlation_equals_an_independent_loop(tiny_cnn):
    tiny_cnn = tiny_cnn.double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    saliency = torch.randn(2, 8, 8, dtype=torch.float64)
    target = torch.tensor([3, 1])
    ids = ["p", "q"]
    ours = metrics.faithfulness_correlation(tiny_cnn, x, saliency, target, subset_size=9,
                                            n_subsets=15, baseline="min", score="prob", ids=ids)
    assert (ours.subset_size, ours.n_subsets) == (9, 15)
    for image in range(2):
        generator = image_generator(0, ids[image], salt="faithfulness_correlation")
        with torch.no_grad():
            clean = float(tiny_cnn(x[image:image + 1]).softmax(1)[0, target[image]])
        sums, drops = [], []
        for _ in range(15):
            chosen = torch.randperm(64, generator=generator)[:9]
            perturbed = x[image].clone().view(3, 64)
            perturbed[:, chosen] = float(x[image].min())
            with torch.no_grad():
                score = tiny_cnn(perturbed.view(1, 3, 8, 8)).softmax(1)[0, target[image]]
            drops.append(clean - float(score))
            sums.append(float(saliency[image].flatten()[chosen].double().sum()))
        expected = np.corrcoef(sums, drops)[0, 1]
        assert float(ours.values[image]) == pytest.approx(expected, abs=1e-9)


def test_correlation_defaults_seed_and_batch_independence(tiny_cnn):
    x = torch.randn(3, 3, 16, 16)
    saliency = torch.randn(3, 16, 16)
    target = torch.tensor([0, 2, 4])
    batch = metrics.faithfulness_correlation(tiny_cnn, x, saliency, target, n_subsets=6,
                                             batch_size=4)
    assert (batch.subset_size, batch.baseline, batch.score) == (224, "black", "logit")
    # without ids an image's key is its index: the scoring chunks change nothing, and the first
    # image (key 0 in both calls) scores the same alone
    rechunked = metrics.faithfulness_correlation(tiny_cnn, x, saliency, target, n_subsets=6,
                                                 batch_size=1)
    torch.testing.assert_close(rechunked.values, batch.values, rtol=1e-4, atol=1e-5)
    first = metrics.faithfulness_correlation(tiny_cnn, x[:1], saliency[:1], target[:1],
                                             n_subsets=6, batch_size=5)
    torch.testing.assert_close(first.values, batch.values[:1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.score_drops, batch.score_drops[:1], rtol=1e-6, atol=1e-7)
    ids = ["u", "v", "w"]
    keyed = metrics.faithfulness_correlation(tiny_cnn, x, saliency, target, n_subsets=6, ids=ids)
    for i in range(3):
        alone = metrics.faithfulness_correlation(tiny_cnn, x[i:i + 1], saliency[i:i + 1],
                                                 target[i:i + 1], n_subsets=6, ids=ids[i:i + 1])
        torch.testing.assert_close(alone.values, keyed.values[i:i + 1], rtol=1e-6, atol=1e-9)
    again = metrics.faithfulness_correlation(tiny_cnn, x, saliency, target, n_subsets=6, ids=ids)
    assert torch.equal(again.values, keyed.values)
    other = metrics.faithfulness_correlation(tiny_cnn, x, saliency, target, n_subsets=6, ids=ids,
                                             seed=3)
    assert not torch.equal(other.score_drops, keyed.score_drops)


def test_correlation_undefined_and_bad_input(tiny_cnn):
    x = torch.randn(2, 3, 8, 8)
    constant = torch.ones(2, 8, 8)
    result = metrics.faithfulness_correlation(tiny_cnn, x, constant, [0, 1], subset_size=5,
                                              n_subsets=4)
    assert bool(result.values.isnan().all())
    assert result.status[0] == "undefined: the attribution sums are equal for every subset"
    good = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match=r"subset_size: must be an integer in \[1, 63\]"):
        metrics.faithfulness_correlation(tiny_cnn, x, good, [0, 1], subset_size=64)
    with pytest.raises(ValueError, match="baseline: 'blur' is not one of: black, zero, mean, min"):
        metrics.faithfulness_correlation(tiny_cnn, x, good, [0, 1], subset_size=5,
                                         baseline="blur")
    with pytest.raises(ValueError, match="score: 'softmax' is not one of: prob, logit"):
        metrics.faithfulness_correlation(tiny_cnn, x, good, [0, 1], subset_size=5,
                                         score="softmax")
    bad = good.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="saliency map of image #0 contains NaN or inf"):
        metrics.faithfulness_correlation(tiny_cnn, x, bad, [0, 1], subset_size=5)


# -------------------------------------------------------------- Average Drop / Increase


class RegionScore(nn.Module):
    """logit_0 = 4 * (mean pixel value of region A - mean pixel value of region B), logit_1 = 0,
    on the pixels the model's normalisation undoes (A: top-left 3x3, B: bottom-right 3x3)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std.to(x.dtype) + self.mean.to(x.dtype)
        first = 4 * (pixels[:, :, :3, :3].mean((1, 2, 3)) - pixels[:, :, -3:, -3:].mean((1, 2, 3)))
        return torch.stack([first, torch.zeros_like(first)], dim=1)


def region_model() -> nn.Module:
    info = harness.models.IMAGENET_MEAN, harness.models.IMAGENET_STD
    return described(RegionScore(*info).double(), 2, 8)


def test_average_drop_of_the_all_ones_map_is_zero(tiny_cnn):
    x = torch.randn(3, 3, 8, 8)
    for ones in (torch.ones(3, 8, 8), torch.full((3, 8, 8), 5.0)):
        result = metrics.average_drop(tiny_cnn, x, ones, [0, 1, 2])
        assert torch.equal(result.values, torch.zeros(3, dtype=torch.float64))
        assert torch.equal(result.explained, result.clean)
        assert torch.equal(result.increase, torch.zeros(3, dtype=torch.float64))


def test_masked_image_multiplies_pixels_by_the_min_max_scaled_map(tiny_cnn):
    x = torch.randn(2, 3, 8, 8)
    saliency = torch.randn(2, 8, 8)
    info = tiny_cnn.harness_info
    low = saliency.amin(dim=(1, 2), keepdim=True)
    high = saliency.amax(dim=(1, 2), keepdim=True)
    scaled = (saliency - low) / (high - low)
    expected = normalize(deprocess(x, info) * scaled[:, None], info)
    torch.testing.assert_close(metrics.masked_image(tiny_cnn, x, saliency), expected)
    zero = torch.zeros(1, 8, 8)
    zero[0, 0, 0] = 1  # every other pixel goes black (pixel 0), not to the mean colour
    black = metrics.masked_image(tiny_cnn, x[:1], zero)
    torch.testing.assert_close(deprocess(black, info)[0, :, 1:, :], torch.zeros(3, 7, 8))


def test_average_drop_and_increase_closed_form():
    model = region_model()
    pixels = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    pixels[:, :, :3, :3] = 0.9
    pixels[:, :, -3:, -3:] = 0.2
    x = normalize(pixels, model.harness_info)
    clean = torch.sigmoid(torch.tensor(4 * (0.9 - 0.2), dtype=torch.float64))
    on_a = torch.zeros(1, 8, 8, dtype=torch.float64)
    on_a[:, :3, :3] = 1  # keeps A, blacks out B: logit rises to 4 * 0.9
    on_b = torch.zeros(1, 8, 8, dtype=torch.float64)
    on_b[:, -3:, -3:] = 1  # keeps B, blacks out A: logit falls to -4 * 0.2
    right = metrics.average_drop(model, x, on_a, [0])
    assert float(right.clean[0]) == pytest.approx(float(clean), abs=1e-12)
    assert float(right.values[0]) == 0 and float(right.increase[0]) == 1
    wrong = metrics.average_drop(model, x, on_b, [0])
    expected = (clean - torch.sigmoid(torch.tensor(-0.8, dtype=torch.float64))) / clean
    assert float(wrong.values[0]) == pytest.approx(float(expected), abs=1e-12)
    increase = metrics.increase_in_confidence(model, x, on_b, [0])
    assert increase.metric == "increase_in_confidence" and float(increase.values[0]) == 0
    assert float(metrics.increase_in_confidence(model, x, on_a, [0]).values[0]) == 1
    # logit scores: the drop fraction in logit units, same closed form
    logit = metrics.average_drop(model, x, on_b, [0], score="logit")
    assert float(logit.values[0]) == pytest.approx((2.8 + 0.8) / 2.8, abs=1e-12)


def test_confidence_batch_independence_and_bad_input(tiny_cnn):
    x = torch.randn(3, 3, 8, 8)
    saliency = torch.rand(3, 8, 8)
    target = torch.tensor([0, 1, 2])
    batch = metrics.average_drop(tiny_cnn, x, saliency, target, batch_size=2)
    for i in range(3):
        alone = metrics.average_drop(tiny_cnn, x[i:i + 1], saliency[i:i + 1], target[i:i + 1])
        torch.testing.assert_close(alone.values, batch.values[i:i + 1], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="score: 'confidence' is not one of: prob, logit"):
        metrics.average_drop(tiny_cnn, x, saliency, target, score="confidence")
    model = region_model()
    pixels = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    pixels[0, :, :3, :3] = 0.9  # image a: logit 4 * (0.9 - 0.5) > 0
    pixels[1, :, :3, :3] = 0.1  # image b: logit 4 * (0.1 - 0.5) < 0
    with pytest.raises(ValueError, match="image b: the logit of class 0 is -1.6"):
        metrics.average_drop(model, normalize(pixels, model.harness_info),
                             torch.rand(2, 8, 8), [0, 0], score="logit", ids=["a", "b"])
    bad = saliency.clone()
    bad[2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="saliency map of image #2 contains NaN or inf"):
        metrics.increase_in_confidence(tiny_cnn, x, bad, target)


# --------------------------------------------------------------------------------- IROF


def blocky_images(n_images: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Pixels in [0, 1] made of 4x4 flat colour blocks plus a little noise (SLIC finds them)."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.rand(n_images, 3, size // 4, size // 4, generator=generator)
    pixels = blocks.repeat_interleave(4, 2).repeat_interleave(4, 3)
    return (pixels + 0.02 * torch.rand(pixels.shape, generator=generator)).clamp(0, 1)


def test_irof_of_a_linear_model_equals_the_closed_form():
    model = linear64(n_classes=2, size=16, seed=3)
    with torch.no_grad():
        model.bias.fill_(400.0)  # logits > 0: the ratio f(x') / f(x) is defined
    x = normalize(blocky_images(2).double(), model.harness_info)
    target = torch.tensor([0, 1])
    contributions = contribution_map(model, x, target, torch.zeros(1, 3, 1, 1, dtype=x.dtype))
    result = metrics.irof(model, x, contributions, target, baseline="zero", score="logit",
                          n_segments=12)
    for image in range(2):
        pixels = deprocess(x[image:image + 1], model.harness_info)[0].permute(1, 2, 0).numpy()
        labels = slic(pixels, n_segments=12, compactness=10.0, sigma=0, start_label=0)
        segments = sorted(np.unique(labels))
        relevance = contributions[image].numpy()
        order = sorted(segments, key=lambda s: (-relevance[labels == s].mean(), s))
        clean = float(model(x[image:image + 1])[0, target[image]])
        curve, removed = [1.0], 0.0
        for segment in order:
            removed += float(relevance[labels == segment].sum())
            curve.append((clean - removed) / clean)
        k = len(order)
        assert int(result.n_segments[image]) == k
        np.testing.assert_allclose(result.curves[image, : k + 1].numpy(), curve, rtol=0,
                                   atol=1e-12)
        expected = 1 - np.trapezoid(curve, np.linspace(0, 1, k + 1))
        assert float(result.values[image]) == pytest.approx(expected, abs=1e-12)
        quantus_form = k - np.trapezoid(curve[1:], dx=1)
        assert float(result.unnormalised[image]) == pytest.approx(quantus_form, abs=1e-9)
        assert quantus_form == pytest.approx(k * expected + (1 + curve[1]) / 2, abs=1e-9)
    # it can fail: the reversed map removes the evidence last and scores lower
    reversed_ = metrics.irof(model, x, -contributions, target, baseline="zero", score="logit",
                             n_segments=12)
    assert bool((reversed_.values < result.values).all())


def test_irof_defaults_batch_independence_and_bad_input(tiny_cnn):
    x = normalize(blocky_images(3), tiny_cnn.harness_info)
    saliency = torch.rand(3, 16, 16)
    target = torch.tensor([0, 3, 4])
    batch = metrics.irof(tiny_cnn, x, saliency, target, batch_size=6)
    assert (batch.baseline, batch.score, batch.slic["n_segments"]) == ("mean", "prob", 100)
    for i in range(3):
        alone = metrics.irof(tiny_cnn, x[i:i + 1], saliency[i:i + 1], target[i:i + 1],
                             batch_size=4)
        torch.testing.assert_close(alone.values, batch.values[i:i + 1], rtol=1e-5, atol=1e-7)
        assert torch.equal(alone.segments[0], batch.segments[i])
    with pytest.raises(ValueError, match="baseline: 'blur' is not one of: mean, zero, black"):
        metrics.irof(tiny_cnn, x, saliency, target, baseline="blur")
    with pytest.raises(ValueError, match=r"n_segments: must be an integer >= 1, got 0"):
        metrics.irof(tiny_cnn, x, saliency, target, n_segments=0)
    bad = saliency.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="saliency map of image y contains NaN or inf"):
        metrics.irof(tiny_cnn, x, bad, target, ids=["x", "y", "z"])
    model = linear64(n_classes=2, size=16)
    with torch.no_grad():
        model.bias.fill_(-1000.0)
    with pytest.raises(ValueError, match=r"image #0: the logit of class 0 is -\d+"):
        metrics.irof(model, x.double(), saliency, [0, 1, 0], score="logit")


# -------------------------------------------------------------------------- random logit


def test_random_logit_of_a_class_independent_method_is_one(tiny_cnn):
    x = torch.randn(3, 3, 16, 16)
    result = random_logit(tiny_cnn, "sobel", x, [0, 1, 2])
    assert result.status == ("ok",) * 3 and result.measure == "ssim"
    torch.testing.assert_close(result.values, torch.ones(3, dtype=torch.float64))
    assert bool((result.other_target != torch.tensor([0, 1, 2])).all())


def test_random_logit_of_the_gradient_of_a_linear_model_closed_form():
    model = described(LinearModel(n_classes=6, size=(16, 16)), 6, 16)
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([1, 4])
    result = random_logit(model, "vanilla", x, target, ids=["m", "n"], seed=5)
    other = other_classes(target, 6, seed=5, ids=["m", "n"])
    assert torch.equal(result.other_target, other)
    for i in range(2):  # the vanilla map of a linear model is max_c |W[class]|
        expected = MEASURES["ssim"](model.weight[target[i]].abs().amax(0).numpy(),
                                    model.weight[other[i]].abs().amax(0).numpy())
        assert float(result.values[i]) == pytest.approx(expected, abs=1e-6)
    # it can fail: a class-dependent method scores below the class-independent control
    assert bool((result.values < 0.5).all())
    signed = random_logit(model, "vanilla", x, target, measure="spearman_signed")
    assert bool((signed.values.abs() < 0.5).all())


def test_random_logit_other_class_is_uniform_seeded_and_batch_free():
    target = torch.zeros(600, dtype=torch.long)
    drawn = other_classes(target, 4, seed=0)
    counts = torch.bincount(drawn, minlength=4)
    assert int(counts[0]) == 0 and bool((counts[1:] > 150).all())
    ids = [f"img{i}" for i in range(5)]
    keyed = other_classes(torch.tensor([0, 1, 2, 3, 0]), 4, seed=2, ids=ids)
    assert torch.equal(other_classes(torch.tensor([3]), 4, seed=2, ids=ids[3:4]), keyed[3:4])
    model = described(LinearModel(n_classes=6, size=(16, 16)), 6, 16)
    x = torch.randn(3, 3, 16, 16)
    batch = random_logit(model, "vanilla", x, [0, 1, 2], ids=ids[:3], batch_size=2)
    for i in range(3):
        alone = random_logit(model, "vanilla", x[i:i + 1], [i], ids=ids[i:i + 1])
        assert float(alone.values[0]) == pytest.approx(float(batch.values[i]), abs=1e-9)


def test_random_logit_of_smoothgrad_does_not_depend_on_the_batch(tiny_cnn):
    """SmoothGrad's noise is seeded by the image's values, not its batch position: an image's
    value is the same in a batch of 3 and alone (with position seeding it was not)."""
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 3, 1])
    ids = ["r", "s", "t"]
    params = {"n": 3}
    batch = random_logit(tiny_cnn, "smoothgrad", x, target, method_params=params, ids=ids,
                         batch_size=3)
    assert batch.status == ("ok",) * 3
    for i in range(3):
        alone = random_logit(tiny_cnn, "smoothgrad", x[i:i + 1], target[i:i + 1],
                             method_params=params, ids=ids[i:i + 1], batch_size=1)
        torch.testing.assert_close(alone.maps[0], batch.maps[i], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(alone.other_maps[0], batch.other_maps[i], rtol=1e-5,
                                   atol=1e-7)
        assert float(alone.values[0]) == pytest.approx(float(batch.values[i]), abs=1e-6)
    # the noise matters: another smoothing seed gives other maps
    reseeded = random_logit(tiny_cnn, "smoothgrad", x, target, method_params={**params, "seed": 1},
                            ids=ids, batch_size=3)
    assert not torch.allclose(reseeded.maps, batch.maps)


def test_random_logit_reuses_given_maps(tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([2, 4])
    computed = random_logit(tiny_cnn, "vanilla", x, target)
    given = random_logit(tiny_cnn, "vanilla", x, target, maps=computed.maps)
    assert torch.equal(given.values, computed.values)
    with pytest.raises(ValueError, match=r"maps has shape \(2, 8, 8\)"):
        random_logit(tiny_cnn, "vanilla", x, target, maps=torch.rand(2, 8, 8))


def test_random_logit_undefined_and_bad_input(tiny_cnn):
    model = described(LinearModel(n_classes=3, size=(8, 8)), 3, 8)
    with torch.no_grad():
        model.weight.zero_()  # every gradient map is constant 0
    result = random_logit(model, "vanilla", torch.randn(1, 3, 8, 8), [0])
    assert bool(result.values.isnan().all())
    assert result.status[0].startswith("undefined: the original map is constant")
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="measure 'mse' is not one of: spearman_abs"):
        random_logit(tiny_cnn, "vanilla", x, [0, 1], measure="mse")
    with pytest.raises(harness.UnknownNameError, match="unknown method 'gradients'"):
        random_logit(tiny_cnn, "gradients", x, [0, 1])
    with pytest.raises(ValueError, match="target 5 of image cat is out of range"):
        random_logit(tiny_cnn, "vanilla", x, [0, 5], ids=["dog", "cat"])


# ---------------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(tiny_cnn):
    x = normalize(blocky_images(2), tiny_cnn.harness_info)
    saliency = torch.randn(2, 16, 16)
    target = torch.tensor([1, 3])
    runs = {
        "infidelity": lambda m, *a: metrics.infidelity(m, *a, n_perturbations=20),
        "square": lambda m, *a: metrics.infidelity(m, *a, perturbation="square",
                                                   n_perturbations=40),
        "correlation": lambda m, *a: metrics.faithfulness_correlation(m, *a, subset_size=20,
                                                                      n_subsets=10),
        "average_drop": metrics.average_drop,
        "irof": lambda m, *a: metrics.irof(m, *a, n_segments=12),
    }
    cpu = {name: run(tiny_cnn, x, saliency, target).values for name, run in runs.items()}
    model = tiny_cnn.to("cuda")
    for name, run in runs.items():
        gpu = run(model, x.cuda(), saliency.cuda(), target.cuda()).values
        torch.testing.assert_close(gpu, cpu[name], rtol=1e-3, atol=1e-5, msg=name)
    logit = random_logit(model, "vanilla", x.cuda(), target.cuda())
    torch.testing.assert_close(logit.values, random_logit(tiny_cnn.cpu(), "vanilla", x,
                                                          target).values, rtol=1e-3, atol=1e-4)


def test_a_constant_map_leaves_the_image_exactly_unchanged(tiny_cnn):
    # M = 1 everywhere: E must be x itself, not x up to the rounding of the round trip through
    # pixels, or 1[O > Y] counts rounding noise as an increase (it did on 4 of these 64 images)
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    target = torch.arange(64) % 5
    for constant in (torch.zeros(64, 8, 8), torch.full((64, 8, 8), 0.3)):
        assert torch.equal(metrics.masked_image(tiny_cnn, x, constant), x)
        result = metrics.increase_in_confidence(tiny_cnn, x, constant, target)
        assert torch.equal(result.explained, result.clean)
        assert torch.equal(result.increase, torch.zeros(64, dtype=torch.float64))
        assert torch.equal(result.drop, torch.zeros(64, dtype=torch.float64))
    # M = 0 is exactly black (pixel 0), M = 1 exactly the image, in one map
    half = torch.zeros(2, 8, 8)
    half[:, :4] = 1
    masked = metrics.masked_image(tiny_cnn, x[:2], half)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (tiny_cnn.harness_info.mean,
                                                             tiny_cnn.harness_info.std))
    assert torch.equal(masked[:, :, :4], x[:2, :, :4])
    assert torch.equal(masked[:, :, 4:], (-mean / std).expand(2, 3, 4, 8))


def test_correlation_of_a_constant_float64_map_is_undefined_not_zero(tiny_cnn):
    # the subsets' sums of a constant map are all equal, but their float64 mean is not exactly
    # that value, so centring left rounding noise and r came out ~1e-16 with status "ok"
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    constant = torch.full((2, 16, 16), 1 / 3, dtype=torch.float64)
    result = metrics.faithfulness_correlation(tiny_cnn, x, constant, [0, 1], subset_size=100,
                                              n_subsets=100)
    assert bool(result.values.isnan().all())
    assert result.status == ("undefined: the attribution sums are equal for every subset",) * 2
    values, status = pearson(torch.full((1, 100), 0.1 * 224, dtype=torch.float64),
                             torch.randn(1, 100, dtype=torch.float64))
    assert bool(values.isnan().all()) and status[0].startswith("undefined")
    values, status = pearson(torch.randn(1, 100, dtype=torch.float64),
                             torch.full((1, 100), 0.1 * 224, dtype=torch.float64))
    assert bool(values.isnan().all()) and status == ["undefined: the score drops are equal for "
                                                     "every subset"]


class Counting(nn.Module):
    """Counts the forward passes of the wrapped model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


def test_a_bad_target_is_named_before_the_perturbed_passes(tiny_cnn, monkeypatch):
    # the last image's target is out of range: the clean pass (one forward for 3 images) must
    # find it before any perturbed input is scored or any image is segmented
    model = described(Counting(tiny_cnn), 5, 16)
    x = normalize(blocky_images(3), tiny_cnn.harness_info)
    saliency = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match="target 7 of image #2 is out of range"):
        metrics.faithfulness_correlation(model, x, saliency, [0, 1, 7], subset_size=5,
                                         n_subsets=4, batch_size=4)
    assert model.calls == 1
    irof_module = importlib.import_module("harness.metrics.irof")
    segmented = []
    original = irof_module.slic
    monkeypatch.setattr(irof_module, "slic", lambda *a, **k: segmented.append(1) or original(
        *a, **k))
    model.calls = 0
    with pytest.raises(ValueError, match="target 7 of image #2 is out of range"):
        metrics.irof(model, x, saliency, [0, 1, 7], batch_size=4)
    assert model.calls == 1 and not segmented


def test_scaled_infidelity_needs_two_perturbations(tiny_cnn):
    # with one perturbation beta = d / e fits it exactly: every map scored 0 (the best value)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1))
    for perturbation in ("gaussian", "square"):
        with pytest.raises(ValueError,
                           match=r"n_perturbations: must be an integer (in \[2, |>= 2)"):
            metrics.infidelity(tiny_cnn, x, noise, [0, 1], perturbation=perturbation,
                               n_perturbations=1)
        unscaled = metrics.infidelity(tiny_cnn, x, noise, [0, 1], perturbation=perturbation,
                                      n_perturbations=1, scaling=False)
        assert bool((unscaled.values > 0).all())
    with pytest.raises(ValueError, match="n_perturbations: must be an integer >= 2 with scaling"):
        InfidelitySettings(n_perturbations=1).check()
    InfidelitySettings(n_perturbations=1, scaling=False).check()


def test_a_target_probability_of_zero_is_named_without_a_wrong_hint():
    # softmax underflows to 0 in float32 for a logit gap of 500: dividing by Y is undefined, and
    # the error must not advise score='prob', which is the score already in use
    model = described(LinearModel(2, (8, 8)), 2, 8)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([0.0, 500.0]))
    x = 0.01 * torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for metric in (metrics.average_drop, metrics.irof):
        with pytest.raises(ValueError, match=r"image #0: the prob of class 0 is 0\.0") as error:
            metric(model, x, torch.rand(1, 8, 8), [0])
        assert "use score='prob'" not in str(error.value)
