"""Deletion / insertion / MoRF / LeRF: closed forms, the RISE reference loop, a trained model."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

import harness
from harness import metrics
from harness.metrics.substrates import gkern


class PixelSum(nn.Module):
    """logit_0(x) = sum_p w_p * x[0, p] (channel 0), logit_1 = 0: every curve is a closed form."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.register_buffer("weights", weights.double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = (x[:, 0].double() * self.weights).sum(dim=(1, 2))
        return torch.stack([first, torch.zeros_like(first)], dim=1)


def rise_reference(model, image, saliency, target, step, finish, start):
    """RISE's single_run written out pixel by pixel (with the stable lower-index tie rule)."""
    _, height, width = image.shape
    n_pixels = height * width
    flat = saliency.flatten().tolist()
    order = sorted(range(n_pixels), key=lambda p: (-flat[p], p))
    n_steps = (n_pixels + step - 1) // step
    current = start.clone()
    scores = []
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores.append(float(model(current[None]).softmax(1)[0, target]))
        for pixel in order[step * i: step * (i + 1)]:
            row, col = divmod(pixel, width)
            current[:, row, col] = finish[:, row, col]
    return torch.tensor(scores, dtype=torch.float64)


def test_auc_on_known_curves():
    assert float(metrics.auc(torch.tensor([0.7, 0.7, 0.7]))) == pytest.approx(0.7)
    assert float(metrics.auc(torch.linspace(1, 0, 11))) == pytest.approx(0.5)
    assert float(metrics.auc(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(0.25)
    # RISE's formula; np.trapz(dx=1) would give 0.5 for the last curve
    curve = torch.tensor([0.9, 0.4, 0.2, 0.1, 0.0])
    expected = (curve.sum() - curve[0] / 2 - curve[-1] / 2) / 4
    assert float(metrics.auc(curve)) == pytest.approx(float(expected))
    assert float(metrics.auc(curve)) == pytest.approx(np.trapezoid(curve.numpy(), dx=0.25))


def test_deletion_logit_curve_closed_form_non_square():
    """Deleting pixel p to 0 removes w_p x_p from the logit: curve_k = sum of the rest."""
    height, width, step = 5, 7, 4
    weights = torch.arange(1, height * width + 1, dtype=torch.float64).view(height, width)
    model = PixelSum(weights)
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    saliency = weights.float()[None]  # remove heaviest first
    result = metrics.deletion(model, x, saliency, [0], step=step, score="logit")
    n_steps = math.ceil(height * width / step)
    assert result.curves.shape == (1, n_steps + 1) and result.n_steps == n_steps == 9
    contributions = (weights * x[0, 0].double()).flatten()
    order = torch.argsort(-weights.flatten())
    expected = [float(contributions.sum() - contributions[order[:min(k * step, 35)]].sum())
                for k in range(n_steps + 1)]
    np.testing.assert_allclose(result.curves[0].numpy(), expected, rtol=1e-6, atol=1e-5)
    assert result.curves[0, -1].abs() < 1e-6  # everything deleted
    np.testing.assert_allclose(result.fractions.numpy(),
                               [min(k * step, 35) / 35 for k in range(n_steps + 1)])
    assert float(result.auc[0]) == pytest.approx(float(metrics.auc(result.curves[0])))


def test_probability_score_is_softmax_of_target():
    weights = torch.ones(4, 4, dtype=torch.float64)
    model = PixelSum(weights)
    x = torch.full((1, 3, 4, 4), 0.25)
    result = metrics.deletion(model, x, torch.rand(1, 4, 4), [0], step=4)
    removed = torch.tensor([0, 4, 8, 12, 16], dtype=torch.float64)
    expected = torch.sigmoid((16 - removed) * 0.25)  # softmax([f, 0])[0]
    np.testing.assert_allclose(result.curves[0].numpy(), expected.numpy(), rtol=1e-6)
    other = metrics.deletion(model, x, torch.rand(1, 4, 4), [1], step=4)
    np.testing.assert_allclose(other.curves[0].numpy(), 1 - expected.numpy(), rtol=1e-5)


def test_ties_go_to_the_lower_flat_index_first():
    ranks = metrics.pixel_ranks(torch.tensor([[[1.0, 2.0, 2.0], [0.0, 2.0, 1.0]]]))
    # order: 1, 2, 4 (value 2) then 0, 5 (value 1) then 3
    assert ranks[0].tolist() == [3, 0, 1, 5, 2, 4]
    lerf_ranks = metrics.pixel_ranks(torch.zeros(1, 2, 3), descending=False)
    assert lerf_ranks[0].tolist() == [0, 1, 2, 3, 4, 5]
    weights = torch.arange(6, dtype=torch.float64).view(2, 3)
    result = metrics.deletion(PixelSum(weights), torch.ones(1, 3, 2, 3), torch.zeros(1, 2, 3),
                              [0], step=1, score="logit")
    assert result.curves[0].tolist() == [15, 15, 14, 12, 9, 5, 0]


def test_matches_rise_reference_loop_with_real_substrates(tiny_cnn):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 13)
    saliency = torch.rand(2, 9, 13).round(decimals=1)  # many ties
    target = torch.tensor([1, 3])
    deletion = metrics.deletion(tiny_cnn, x, saliency, target, step=10, batch_size=5)
    insertion = metrics.insertion(tiny_cnn, x, saliency, target, step=10, batch_size=7)
    blurred = torch.nn.functional.conv2d(x, gkern(11, 5), padding=5)
    for i in range(2):
        ref_del = rise_reference(tiny_cnn, x[i], saliency[i], target[i], 10,
                                 torch.zeros_like(x[i]), x[i])
        ref_ins = rise_reference(tiny_cnn, x[i], saliency[i], target[i], 10, x[i], blurred[i])
        np.testing.assert_allclose(deletion.curves[i].numpy(), ref_del.numpy(), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(insertion.curves[i].numpy(), ref_ins.numpy(), rtol=1e-5,
                                   atol=1e-6)
    assert deletion.curves.shape == (2, math.ceil(117 / 10) + 1)


def test_gkern_is_scipy_gaussian_of_a_delta_not_torchvision_blur():
    kernel = gkern(11, 5)
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    np.testing.assert_allclose(kernel[1, 1].numpy(), gaussian_filter(delta, 5), rtol=1e-6)
    assert float(kernel[0, 1].abs().max()) == 0.0  # channels blurred separately
    assert float(kernel[0, 0].min()) / float(kernel[0, 0].max()) > 0.3  # nearly flat
    import torchvision.transforms.functional as TF

    image = torch.rand(1, 3, 32, 32)
    ours = metrics.make_substrate("rise_blur")[0](image)
    torchvision_blur = TF.gaussian_blur(image, [11, 11], [5.0, 5.0])
    assert float((ours - torchvision_blur).abs().max()) > 0.05


def test_substrates():
    x = torch.randn(2, 3, 8, 10)
    for name in metrics.list_substrates():
        replacement = metrics.make_substrate(name)[0](x)
        assert replacement.shape == x.shape and torch.isfinite(replacement).all()
    mean = metrics.make_substrate("mean")[0](x)
    torch.testing.assert_close(mean[:, :, 3, 4], x.mean(dim=(2, 3)))
    blur, label = metrics.make_substrate({"name": "blur", "sigma": 1.0})
    expected = gaussian_filter(x.double().numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror",
                               truncate=4.0)
    np.testing.assert_allclose(blur(x).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert label == "blur(sigma=1.0)"
    uniform = metrics.make_substrate({"name": "uniform", "seed": 3})[0]
    assert torch.equal(uniform(x), uniform(x))
    assert uniform(x)[0].min() >= x[0].min() and uniform(x)[0].max() <= x[0].max()
    assert metrics.make_substrate(lambda t: t * 0)[1] == "<lambda>"
    with pytest.raises(harness.UnknownNameError, match="Valid substrates"):
        metrics.make_substrate("gray")


def test_morf_lerf_abpc_closed_form():
    weights = torch.arange(1, 10, dtype=torch.float64).view(3, 3)
    model = PixelSum(weights)
    x = torch.ones(1, 3, 3, 3)
    result = metrics.abpc(model, x, weights.float()[None], [0], step=3, score="logit")
    assert result.morf.curves[0].tolist() == [45, 21, 6, 0]   # remove 9,8,7 then 6,5,4 ...
    assert result.lerf.curves[0].tolist() == [45, 39, 24, 0]  # remove 1,2,3 then 4,5,6 ...
    expected = float(metrics.auc(result.lerf.curves[0]) - metrics.auc(result.morf.curves[0]))
    assert float(result.abpc[0]) == pytest.approx(expected) and expected > 0


def _train_patch_model(seed: int = 0):
    """Class = sign of a bright/dark 6x6 patch at rows 2..7, cols 2..7 of 16x16 noise images."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (512,), generator=generator)
    images = torch.randn(512, 3, 16, 16, generator=generator) * 0.5
    images[:, :, 2:8, 2:8] += (labels.float() * 2 - 1).view(-1, 1, 1, 1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                          nn.Flatten(), nn.Linear(128, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    model = harness.models.prepare(model)
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.95
    return model, images[:16], labels[:16]


@pytest.mark.slow
def test_true_importance_beats_random_ranking_on_trained_model():
    model, x, labels = _train_patch_model()
    truth = torch.zeros(16, 16, 16)
    truth[:, 2:8, 2:8] = 1.0
    random = torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(1))
    options = {"step": 8, "substrate": "zero"}
    del_truth = metrics.deletion(model, x, truth, labels, **options).auc.mean()
    del_random = metrics.deletion(model, x, random, labels, **options).auc.mean()
    ins_truth = metrics.insertion(model, x, truth, labels, **options).auc.mean()
    ins_random = metrics.insertion(model, x, random, labels, **options).auc.mean()
    assert del_truth < del_random - 0.1
    assert ins_truth > ins_random + 0.05
    assert metrics.abpc(model, x, truth, labels, **options).abpc.mean() > 0.1


def test_batch_size_and_memory_format_do_not_change_numbers(tiny_cnn):
    x = torch.randn(3, 3, 12, 12)
    saliency = torch.rand(3, 12, 12)
    target = torch.tensor([0, 1, 2])
    reference = metrics.deletion(tiny_cnn, x, saliency, target, step=7, batch_size=1)
    for batch_size, layout in [(4, "contiguous"), (64, "channels_last"), (None, "auto")]:
        other = metrics.deletion(tiny_cnn, x, saliency, target, step=7, batch_size=batch_size,
                                 memory_format=layout)
        torch.testing.assert_close(other.curves, reference.curves, rtol=1e-5, atol=1e-6)


class InputRecorder(torch.nn.Module):
    """Keeps a copy of every input it scores; returns zero logits for 3 classes."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 3)


@pytest.mark.parametrize("channels, height, width, step", [(3, 7, 9, 5), (1, 6, 6, 36),
                                                           (3, 5, 11, 1), (2, 8, 3, 7)])
def test_every_scored_input_is_exactly_the_masked_image(channels, height, width, step):
    # both ways of building a chunk (full masks; the first point masked and the next ones
    # incremental) must give where(rank < min(k * step, H * W), finish, start) bit for bit
    generator = torch.Generator().manual_seed(channels * 100 + step)
    start = torch.randn(3, channels, height, width, generator=generator)
    finish = torch.randn(3, channels, height, width, generator=generator)
    saliency = torch.randint(0, 4, (3, height, width), generator=generator).float()  # ties
    ranks = metrics.pixel_ranks(saliency)
    n_points = metrics.causal.n_steps_for(height, width, step) + 1
    expected = torch.stack([
        torch.where((ranks[i] < min(k * step, height * width)).view(1, height, width),
                    finish[i], start[i])
        for i in range(3) for k in range(n_points)])
    for batch_size, layout, build in itertools.product(
            (1, 3, 8, 1000), ("contiguous", "channels_last"), ("mask", "incremental")):
        recorder = InputRecorder()
        metrics.perturbation_curves(recorder, start, finish, ranks, torch.zeros(3).long(),
                                    step=step, batch_size=batch_size, memory_format=layout,
                                    build=build)
        seen = torch.cat(recorder.seen)
        assert seen.shape == expected.shape
        assert torch.equal(seen.contiguous(), expected), (batch_size, layout, build)


@pytest.mark.slow
def test_bf16_autocast_bounds_auc_difference(lite0, sample_batch):
    x, target = sample_batch
    saliency = harness.saliency("vanilla", lite0, x, target)
    fp32 = metrics.deletion(lite0, x, saliency, target, step=224 * 32)
    bf16 = metrics.deletion(lite0, x, saliency, target, step=224 * 32, amp_dtype="bf16")
    assert float((fp32.auc - bf16.auc).abs().max()) < 0.03


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    saliency = torch.rand(2, 16, 16)
    target = torch.tensor([0, 4])
    cpu = metrics.insertion(tiny_cnn, x, saliency, target, step=16)
    cuda_model = tiny_cnn.to("cuda")
    gpu = metrics.insertion(cuda_model, x.cuda(), saliency.cuda(), target.cuda(), step=16)
    torch.testing.assert_close(gpu.curves, cpu.curves, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_named(tiny_cnn):
    x = torch.randn(2, 3, 8, 8)
    good = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match=r"saliency has shape \(2, 8, 7\)"):
        metrics.deletion(tiny_cnn, x, torch.rand(2, 8, 7), [0, 1])
    bad = good.clone()
    bad[1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="saliency map of image coffee contains NaN or inf"):
        metrics.insertion(tiny_cnn, x, bad, [0, 1], ids=["chelsea", "coffee"])
    for step in (0, 65):
        with pytest.raises(ValueError, match=r"step: must be an integer (>= 1|in \[1, 64\])"):
            metrics.deletion(tiny_cnn, x, good, [0, 1], step=step)
    with pytest.raises(ValueError,
                       match="target 7 of image #1 is out of range: the model has 5 classes"):
        metrics.deletion(tiny_cnn, x, good, [0, 7], step=8)
    with pytest.raises(ValueError, match="score: 'softmax' is not one of: prob, logit"):
        metrics.deletion(tiny_cnn, x, good, [0, 1], step=8, score="softmax")
    with pytest.raises(ValueError, match="build: 'fast' is not one of: auto, mask, incremental"):
        metrics.perturbation_curves(tiny_cnn, x, x, metrics.pixel_ranks(good),
                                    torch.tensor([0, 1]), step=8, build="fast")


def test_rise_blur_equals_the_reference_dense_convolution():
    x = torch.randn(2, 3, 20, 17)
    dense = torch.nn.functional.conv2d(x, gkern(11, 5), padding=5)
    ours = metrics.make_substrate("rise_blur")[0](x)
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-6)
