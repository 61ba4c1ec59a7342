"""ROAD and its imputers: against a direct sparse solve, closed forms, a model with a known answer,
bookkeeping, determinism and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sparse
import torch
from scipy.sparse.linalg import spsolve
from torch import nn

from harness import metrics
from harness.metrics import imputation
from harness.metrics.road import ranking_scores, removal_mask, tie_break_map
from harness.seeding import image_generator


def oracle(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Direct solve of the definition, written from it: for each removed pixel i of ``image``
    ``[C, H, W]``, D_i u_i - sum_{removed in-image j} w_ij u_j = sum_{kept in-image j} w_ij x_j,
    w = 1/6 (edge) or 1/12 (diagonal), D_i = sum of w over i's in-image neighbours."""
    channels, height, width = image.shape
    where = np.argwhere(removed)
    index = -np.ones((height, width), dtype=int)
    index[removed] = np.arange(len(where))
    rows, cols, vals = [], [], []
    rhs = np.zeros((len(where), channels))
    for row, (y, x) in enumerate(where):
        diagonal = 0.0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy, dx) == (0, 0):
                    continue
                ny, nx = y + dy, x + dx
                if not (0 <= ny < height and 0 <= nx < width):
                    continue
                weight = 1 / 12 if dy and dx else 1 / 6
                diagonal += weight
                if removed[ny, nx]:
                    rows.append(row)
                    cols.append(index[ny, nx])
                    vals.append(-weight)
                else:
                    rhs[row] += weight * image[:, ny, nx]
        rows.append(row)
        cols.append(row)
        vals.append(diagonal)
    matrix = sparse.csc_matrix((vals, (rows, cols)), shape=(len(where), len(where)))
    solution = spsolve(matrix, rhs).reshape(len(where), channels)
    out = image.astype(np.float64).copy()
    out[:, removed] = solution.T
    return out


def blob_mask(height: int, width: int, fraction: float, seed: int) -> torch.Tensor:
    """A smooth random map's top ``fraction`` of pixels (connected blobs, like CAM maps)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 1, height, width, generator=generator)
    smooth = nn.functional.avg_pool2d(noise, 7, stride=1, padding=3, count_include_pad=False)
    flat = smooth.flatten()
    count = int(fraction * flat.numel())
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.argsort(descending=True)[:count]] = True
    return mask.view(height, width)


def masks_for(height: int, width: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    borders = torch.zeros(height, width, dtype=torch.bool)
    borders[0, :] = borders[:, -1] = True  # a full edge, two corners
    borders[-1, 0] = True  # another corner
    borders[height // 2, width // 2] = True
    all_but_one = torch.ones(height, width, dtype=torch.bool)
    all_but_one[height // 3, width - 1] = False
    return [torch.rand(height, width, generator=generator) < 0.3,
            torch.rand(height, width, generator=generator) < 0.9,
            blob_mask(height, width, 0.6, seed), borders, all_but_one]


@pytest.mark.parametrize("channels, height, width", [(1, 7, 11), (3, 9, 5), (3, 24, 40),
                                                    (1, 33, 47), (3, 36, 52)])
def test_linear_imputation_equals_a_direct_sparse_solve(channels, height, width):
    generator = torch.Generator().manual_seed(channels * 1000 + height)
    masks = masks_for(height, width, seed=height)
    x = torch.randn(len(masks), channels, height, width, generator=generator) * 2
    removed = torch.stack(masks)
    ours = metrics.linear_impute(x, removed, noise=0.0)
    assert ours.dtype == x.dtype and ours.shape == x.shape
    for i, mask in enumerate(masks):
        expected = oracle(x[i].double().numpy(), mask.numpy())
        np.testing.assert_allclose(ours[i].double().numpy(), expected, rtol=0, atol=1e-5)
    # kept pixels are untouched, bit for bit
    assert torch.equal(ours[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])
    # float64 in: the solver's own accuracy, far below 1e-5
    ours64 = metrics.linear_impute(x.double(), removed, noise=0.0)
    worst = max(float(np.abs(ours64[i].numpy() - oracle(x[i].double().numpy(), m.numpy())).max())
                for i, m in enumerate(masks))
    assert worst < 1e-6


def test_a_96_by_96_image_with_90_percent_removed_equals_a_direct_sparse_solve():
    # the largest systems ROAD builds (LeRF at p = 0.1, MoRF at 0.9): one connected region of 90%
    # of the pixels (a smooth map's top, as CAM maps give) and 90% scattered pixels
    generator = torch.Generator().manual_seed(96)
    x = torch.randn(2, 3, 96, 96, generator=generator)
    removed = torch.stack([blob_mask(96, 96, 0.9, 96), torch.rand(96, 96, generator=generator)
                           < 0.9])
    assert abs(float(removed.float().mean()) - 0.9) < 0.01
    ours = metrics.linear_impute(x, removed, noise=0.0)
    for i in range(2):
        expected = oracle(x[i].double().numpy(), removed[i].numpy())
        np.testing.assert_allclose(ours[i].double().numpy(), expected, rtol=0, atol=1e-5)


def test_warm_start_and_nothing_removed_keep_the_solution():
    x = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    removed = torch.stack([blob_mask(30, 30, 0.5, 1), blob_mask(30, 30, 0.8, 2)])
    cold = imputation.solve_linear(x, removed)
    warm = imputation.solve_linear(x, removed, initial=torch.randn(2, 3, 30, 30) * 10)
    torch.testing.assert_close(warm, cold, rtol=0, atol=1e-6)
    nothing = torch.zeros(2, 30, 30, dtype=torch.bool)
    assert torch.equal(metrics.linear_impute(x, nothing), x)


def test_closed_forms_constant_harmonic_polynomials_and_one_kept_pixel():
    height, width = 20, 26
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                            torch.arange(width, dtype=torch.float64), indexing="ij")
    removed = blob_mask(height, width, 0.5, 3)
    removed[0, :] = removed[-1, :] = removed[:, 0] = removed[:, -1] = False  # interior only
    # the stencil's weights are symmetric with sum_o w_o dx^2 = sum_o w_o dy^2 = 2/3 and
    # sum_o w_o dx dy = 0, so 1, x, y, x^2 - y^2 and x y equal their neighbours' weighted mean
    # wherever all 8 neighbours exist: removed interior pixels are reproduced exactly
    fields = [torch.full_like(ys, 1.7), 0.3 * xs - 0.2 * ys + 1, (xs - 13) ** 2 - (ys - 10) ** 2,
              (xs - 13) * (ys - 10) / 10]
    x = torch.stack(fields)[None]  # [1, 4, H, W]
    imputed = metrics.linear_impute(x, removed[None], noise=0.0)
    torch.testing.assert_close(imputed, x, rtol=0, atol=1e-5)
    # the ramp is not reproduced where removed pixels touch the border (D_i < 1, one-sided)
    border = torch.zeros(height, width, dtype=torch.bool)
    border[0, 5:9] = True
    ramp = x[:, 1:2]
    assert (metrics.linear_impute(ramp, border[None], noise=0.0) - ramp).abs().max() > 1e-3
    # constant image with removed borders and corners: still the constant
    constant = torch.full((1, 3, 9, 7), -0.4, dtype=torch.float64)
    everything_but = torch.ones(1, 9, 7, dtype=torch.bool)
    everything_but[0, 4, 3] = False
    torch.testing.assert_close(metrics.linear_impute(constant, everything_but, noise=0.0),
                               constant, rtol=0, atol=1e-10)
    # one kept pixel: every removed pixel equals it
    image = torch.randn(1, 2, 9, 7, dtype=torch.float64)
    imputed = metrics.linear_impute(image, everything_but, noise=0.0)
    expected = image[:, :, 4, 3][..., None, None].expand_as(image)
    torch.testing.assert_close(imputed, expected, rtol=0, atol=1e-8)


def test_noise_only_on_removed_pixels_with_the_requested_std_per_channel():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    removed = torch.stack([blob_mask(64, 64, 0.5, 4), torch.rand(64, 64) < 0.5])
    clean = metrics.linear_impute(x, removed, noise=0.0)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    noisy = metrics.linear_impute(x, removed, noise=(0.1, 0.2, 0.4), generator=generators)
    difference = noisy - clean
    assert torch.equal(difference[~removed[:, None].expand_as(x)],
                       torch.zeros(int((~removed).sum()) * 3))
    for channel, std in enumerate((0.1, 0.2, 0.4)):
        values = difference[:, channel][removed]
        assert abs(float(values.std()) / std - 1) < 0.05
        assert abs(float(values.mean())) < 0.05 * std


def test_imputing_normalised_input_equals_normalising_the_imputed_pixels():
    # the reference imputes [0, 1] pixels (noise 0.01) and normalises after; we impute the
    # normalised input with noise 0.01 / std: the same numbers
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    pixels = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(5)).double()
    removed = torch.stack([blob_mask(20, 24, 0.4, 6), blob_mask(20, 24, 0.7, 7)])

    def generators():
        return [image_generator(0, i, salt="test") for i in range(2)]

    reference = (metrics.linear_impute(pixels, removed, noise=0.01, generator=generators())
                 - mean_t) / std_t
    ours = metrics.linear_impute((pixels - mean_t) / std_t, removed,
                                 noise=[0.01 / s for s in std], generator=generators())
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    # the mean and zero imputers too
    torch.testing.assert_close(metrics.mean_impute((pixels - mean_t) / std_t, removed),
                               (metrics.mean_impute(pixels, removed) - mean_t) / std_t)
    torch.testing.assert_close(
        metrics.zero_impute((pixels - mean_t) / std_t, removed,
                            fill=[-m / s for m, s in zip(mean, std, strict=True)]),
        (metrics.zero_impute(pixels, removed) - mean_t) / std_t)


def test_mean_and_zero_imputers_follow_the_reference():
    x = torch.randn(2, 3, 5, 6)
    removed = torch.rand(2, 5, 6) < 0.5
    means = x.mean(dim=(2, 3), keepdim=True).expand_as(x)  # over all pixels, removed included
    mask = removed[:, None].expand_as(x)
    torch.testing.assert_close(metrics.mean_impute(x, removed), torch.where(mask, means, x))
    assert torch.equal(metrics.zero_impute(x, removed), torch.where(mask, 0.0, x))


def test_singular_system_and_non_convergence_are_named():
    x = torch.randn(2, 3, 8, 8)
    removed = torch.zeros(2, 8, 8, dtype=torch.bool)
    removed[1] = True
    with pytest.raises(metrics.SingularImputationError, match="image cat: every pixel"):
        metrics.linear_impute(x, removed, ids=["dog", "cat"])
    y = torch.randn(1, 3, 64, 64)
    with pytest.raises(metrics.ImputationNotConvergedError, match=r"image #0, channel \d"):
        metrics.linear_impute(y, blob_mask(64, 64, 0.8, 8)[None], rtol=1e-14, max_iter=1)
    with pytest.raises(ValueError, match="removed must be a bool"):
        metrics.linear_impute(x, removed.float())
    with pytest.raises(ValueError, match="noise has 2 values for 3 channels"):
        metrics.linear_impute(x, torch.zeros(2, 8, 8, dtype=torch.bool), noise=(0.1, 0.2))


def test_per_image_generators_make_imputation_independent_of_the_batch():
    x = torch.randn(3, 3, 32, 40, generator=torch.Generator().manual_seed(2))
    removed = torch.stack([blob_mask(32, 40, f, 10 + i) for i, f in enumerate((0.2, 0.5, 0.9))])

    def generators(indices):
        return [image_generator(0, i, salt="batch") for i in indices]

    together = metrics.linear_impute(x, removed, generator=generators(range(3)))
    for i in range(3):
        alone = metrics.linear_impute(x[i:i + 1], removed[i:i + 1], generator=generators([i]))
        torch.testing.assert_close(alone, together[i:i + 1], rtol=0, atol=1e-6)


class RegionModel(nn.Module):
    """logits = [gain * (sum over channels of x's mean over a square), 4]: class 0 wins exactly
    while the bright square is present."""

    def __init__(self, square: tuple[slice, slice], gain: float = 2.0):
        super().__init__()
        self.square = square
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = x[:, :, self.square[0], self.square[1]].mean(dim=(2, 3)).sum(dim=1)
        return torch.stack([self.gain * evidence, torch.full_like(evidence, 4.0)], dim=1)


def region_setup(n_images: int = 3, size: int = 16):
    square = (slice(4, 8), slice(6, 10))
    model = RegionModel(square).eval()
    generator = torch.Generator().manual_seed(3)
    x = 0.1 * torch.randn(n_images, 3, size, size, generator=generator)
    x[:, :, square[0], square[1]] += 3.0
    truth = 0.01 * torch.rand(n_images, size, size, generator=generator)
    truth[:, square[0], square[1]] += 1.0
    return model, x, truth, torch.zeros(n_images, dtype=torch.long)


@pytest.mark.slow
@pytest.mark.parametrize("imputer", ["linear", "mean", "zero"])
def test_right_map_beats_wrong_map_on_a_model_with_a_known_answer(imputer):
    model, x, truth, target = region_setup()
    wrong = truth.amax() - truth  # the square last
    kwargs = {"imputer": imputer, "seed": 1, "pixel_mean": 0.5, "pixel_std": 0.5}
    morf_truth = metrics.road(model, x, truth, target, order="morf", **kwargs)
    morf_wrong = metrics.road(model, x, wrong, target, order="morf", **kwargs)
    lerf_truth = metrics.road(model, x, truth, target, order="lerf", **kwargs)
    lerf_wrong = metrics.road(model, x, wrong, target, order="lerf", **kwargs)
    # MoRF with the right map removes the square at p = 0.1 (16 of 256 pixels): class 0 is lost
    assert morf_truth.score == "accuracy"  # the paper's value: the mean correctness
    assert torch.equal(morf_truth.values, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(morf_wrong.values, torch.ones(3, dtype=torch.float64))
    assert not morf_truth.correct.any() and morf_wrong.correct.all()
    assert torch.equal(lerf_truth.values, torch.ones(3, dtype=torch.float64))
    assert torch.equal(lerf_wrong.values, torch.zeros(3, dtype=torch.float64))
    combined_truth = metrics.road_combined(morf_truth, lerf_truth)
    combined_wrong = metrics.road_combined(morf_wrong, lerf_wrong)
    assert torch.equal(combined_truth, torch.full((3,), 0.5, dtype=torch.float64))
    assert torch.equal(combined_wrong, torch.full((3,), -0.5, dtype=torch.float64))
    # the same ranking by the mean probability
    prob = {"score": "prob", **kwargs}
    morf_truth_p = metrics.road(model, x, truth, target, order="morf", **prob)
    morf_wrong_p = metrics.road(model, x, wrong, target, order="morf", **prob)
    assert (morf_truth_p.values < 0.1).all() and (morf_wrong_p.values > 0.9).all()
    torch.testing.assert_close(morf_truth_p.values, morf_truth_p.probs.mean(dim=1))
    torch.testing.assert_close(morf_truth_p.probs, morf_truth.probs)
    assert torch.equal(morf_truth.accuracy, torch.zeros(7, dtype=torch.float64))
    torch.testing.assert_close(morf_truth.mean_probs, morf_truth.probs.mean(dim=0))
    assert (morf_truth.clean_probs > 0.99).all()


class Recorder(nn.Module):
    """Keeps every input; two classes, logits from the mean of channel 0."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        score = x[:, 0].mean(dim=(1, 2))
        return torch.stack([score, -score], dim=1)


def test_removed_pixels_and_fractions_follow_the_reference_for_both_orders():
    height = width = 10
    percentages = (0.1, 0.25, 0.29, 0.5, 0.9)
    saliency = torch.randperm(100, generator=torch.Generator().manual_seed(0)).float()
    saliency = saliency.view(1, height, width)
    x = torch.ones(1, 3, height, width)
    fill = 123.0  # (0 - mean) / std with mean = -123, std = 1
    expected_counts = [int(100 * p) for p in percentages]
    assert expected_counts[2] == 28  # int(100 * 0.29) = int(28.999999999999996), the reference's
    for order in ("morf", "lerf"):
        model = Recorder()
        result = metrics.road(model, x, saliency, [0], order=order, percentages=percentages,
                              imputer="zero", pixel_mean=-123.0, pixel_std=1.0)
        top_first = saliency.flatten().argsort(descending=True)
        for k, count in enumerate(expected_counts):
            seen = model.seen[k + 1][0, 0].flatten()  # the first input is the clean image
            removed = seen == fill
            expected = torch.zeros(100, dtype=torch.bool)
            expected[top_first[:count]] = True
            assert torch.equal(removed, expected if order == "morf" else ~expected), (order, k)
        fractions = torch.tensor(expected_counts, dtype=torch.float64) / 100
        if order == "lerf":
            fractions = 1 - fractions
        torch.testing.assert_close(result.removed_fraction, fractions)
        assert result.percentages == percentages


def test_tie_break_map_is_shared_by_images_seeded_and_fresh_per_percentage():
    constant = torch.zeros(2, 12, 12)  # all ties: the tie-break map alone orders the pixels
    first = tie_break_map(12, 12, seed=0, order="morf", percentage=0.3)
    masks = removal_mask(ranking_scores(constant, first), 0.3, "morf")
    assert torch.equal(masks[0], masks[1]) and int(masks[0].sum()) == int(144 * 0.3)
    again = tie_break_map(12, 12, seed=0, order="morf", percentage=0.3)
    assert torch.equal(first, again)
    assert not torch.equal(first, tie_break_map(12, 12, seed=1, order="morf",
                                                            percentage=0.3))
    assert not torch.equal(first, tie_break_map(12, 12, seed=0, order="morf",
                                                            percentage=0.4))
    assert 0.5e-4 < float(first.std()) < 2e-4
    # min-max scaling with the reference's epsilon
    saliency = torch.tensor([[[2.0, 4.0], [6.0, 10.0]]])
    scores = ranking_scores(saliency, torch.zeros(2, 2, dtype=torch.float64))
    torch.testing.assert_close(scores, (saliency.double() - 2) / (8 + 1e-5))


def test_road_is_deterministic_and_independent_of_the_batch(tiny_cnn):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, 16, 16, generator=generator)
    saliency = torch.rand(3, 16, 16, generator=generator)
    target = torch.tensor([0, 3, 1])
    ids = ["a", "b", "c"]
    options = {"percentages": (0.2, 0.5, 0.8), "ids": ids, "seed": 7}
    together = metrics.road(tiny_cnn, x, saliency, target, **options)
    again = metrics.road(tiny_cnn, x, saliency, target, batch_size=2, **options)
    torch.testing.assert_close(again.probs, together.probs, rtol=0, atol=1e-6)
    for i in range(3):
        alone = metrics.road(tiny_cnn, x[i:i + 1], saliency[i:i + 1], target[i:i + 1],
                             percentages=(0.2, 0.5, 0.8), ids=ids[i:i + 1], seed=7)
        torch.testing.assert_close(alone.probs, together.probs[i:i + 1], rtol=0, atol=1e-6)
        assert torch.equal(alone.correct, together.correct[i:i + 1])
    other_seed = metrics.road(tiny_cnn, x, saliency, target, **{**options, "seed": 8})
    assert not torch.allclose(other_seed.probs, together.probs, rtol=0, atol=1e-7)
    assert together.noise == tuple(0.01 / s for s in tiny_cnn.harness_info.std)
    assert together.values.dtype == torch.float64 and together.values.shape == (3,)


def test_labels_decide_correctness_and_target_the_probability(tiny_cnn):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    saliency = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        logits = tiny_cnn(x)
    top1 = logits.argmax(1)
    target = (top1 + 1) % 5  # not the prediction: correctness must not follow the target
    options = {"percentages": (0.3, 0.5), "seed": 2}
    unlabelled = metrics.road(tiny_cnn, x, saliency, target, **options)
    labels = torch.tensor([3, 4])
    labelled = metrics.road(tiny_cnn, x, saliency, target, labels=labels, **options)
    torch.testing.assert_close(unlabelled.probs, labelled.probs)  # probs: of the target
    torch.testing.assert_close(unlabelled.clean_probs,
                               logits.softmax(1).gather(1, target[:, None])[:, 0].double())
    # without labels: agreement with the clean image's top-1 prediction
    assert torch.equal(unlabelled.labels, top1) and torch.equal(labelled.labels, labels)
    recorder_inputs = []
    handle = tiny_cnn.register_forward_hook(lambda m, i, o: recorder_inputs.append(o.argmax(1)))
    try:
        metrics.road(tiny_cnn, x, saliency, target, labels=labels, **options)
    finally:
        handle.remove()
    predicted = torch.stack(recorder_inputs[1:], dim=1)  # after the clean pass: one per p
    assert torch.equal(labelled.correct, predicted == labels[:, None])
    assert torch.equal(unlabelled.correct, predicted == top1[:, None])
    torch.testing.assert_close(labelled.values, labelled.correct.double().mean(dim=1))


def road_result(order: str, percentages, probs, correct, score="accuracy") -> metrics.RoadResult:
    probs = torch.as_tensor(probs, dtype=torch.float64)
    correct = torch.as_tensor(correct, dtype=torch.bool)
    scores = correct.double() if score == "accuracy" else probs
    return metrics.RoadResult(
        order=order, imputer="linear", score=score, percentages=tuple(percentages),
        removed_fraction=torch.tensor([p if order == "morf" else 1 - p for p in percentages]),
        probs=probs, correct=correct, labels=torch.zeros(len(probs), dtype=torch.long),
        values=scores.mean(dim=1), clean_probs=torch.ones(len(probs)), noise=(), seed=0)


def test_road_combined_pairs_equal_removed_fractions():
    generator = torch.Generator().manual_seed(13)
    # pytorch-grad-cam's grid: every fraction is shared, and combined = (mean LeRF - mean MoRF)/2,
    # its ROADCombined, whatever the order of the points
    grid = [k / 10 for k in range(1, 10)]
    morf_p = torch.rand(4, 9, generator=generator, dtype=torch.float64)
    lerf_p = torch.rand(4, 9, generator=generator, dtype=torch.float64)
    morf = road_result("morf", grid, morf_p, morf_p > 0.5, score="prob")
    lerf = road_result("lerf", grid, lerf_p, lerf_p > 0.5, score="prob")
    torch.testing.assert_close(metrics.road_combined(morf, lerf),
                               (lerf_p.mean(1) - morf_p.mean(1)) / 2, rtol=0, atol=1e-12)
    # the reference's percentages: MoRF removes {.1 .2 .3 .4 .5 .7 .9}, LeRF {.9 .8 .7 .6 .5 .3
    # .1}: only {.1, .3, .5, .7, .9} are compared, MoRF at p with LeRF at 1 - p
    reference = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)
    morf_c = torch.rand(4, 7, generator=generator) > 0.5
    lerf_c = torch.rand(4, 7, generator=generator) > 0.5
    morf = road_result("morf", reference, torch.rand(4, 7), morf_c)
    lerf = road_result("lerf", reference, torch.rand(4, 7), lerf_c)
    pairs = [(0, 6), (2, 5), (4, 4), (5, 2), (6, 0)]  # (MoRF at p, LeRF at 1 - p)
    expected = sum(lerf_c[:, j].double() - morf_c[:, i].double() for i, j in pairs) / 10
    torch.testing.assert_close(metrics.road_combined(morf, lerf), expected, rtol=0, atol=1e-12)
    assert (metrics.road_combined(morf, lerf) != (lerf.values - morf.values) / 2).any()
    # nothing in common: named
    morf = road_result("morf", (0.2, 0.4), torch.rand(4, 2), torch.rand(4, 2) > 0.5)
    lerf = road_result("lerf", (0.2, 0.4), torch.rand(4, 2), torch.rand(4, 2) > 0.5)
    with pytest.raises(metrics.RoadAlignmentError, match=r"MoRF removes the fractions "
                                                         r"\{0.2, 0.4\} and LeRF .* \{0.6, 0.8\}"):
        metrics.road_combined(morf, lerf)
    with pytest.raises(ValueError, match="scores differ"):
        metrics.road_combined(road_result("morf", grid, morf_p, morf_p > 0.5),
                              road_result("lerf", grid, lerf_p, lerf_p > 0.5, score="prob"))


def test_numpy_scalars_are_numbers(tiny_cnn):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(14))
    saliency = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(15))
    result = metrics.road(tiny_cnn, x, saliency, [0, 1], noise=np.float32(0.25),
                          percentages=(np.float64(0.5), np.float32(0.25)))
    assert all(type(s) is float for s in result.noise)
    assert all(type(p) is float for p in result.percentages)
    plain = metrics.road(tiny_cnn, x, saliency, [0, 1], noise=0.25, percentages=(0.5, 0.25))
    torch.testing.assert_close(result.probs, plain.probs)  # 0.25 and 0.5 are exact in float32
    imputed = metrics.linear_impute(x, torch.rand(2, 16, 16) < 0.5, noise=np.float32(0.0))
    assert imputed.shape == x.shape
    assert imputation.per_channel(np.float32(0.5), 3, "noise") == (0.5, 0.5, 0.5)
    assert imputation.per_channel(np.array([1, 2, 3]), 3, "noise") == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="noise must be a number or one number per channel"):
        imputation.per_channel("0.1", 3, "noise")
    with pytest.raises(ValueError, match="noise must be a number or one number per channel"):
        imputation.per_channel(True, 3, "noise")


@pytest.mark.parametrize("bad, match", [
    ({"percentages": (0.1, 1.0)}, r"percentage 1\.0 is outside \(0, 1\)"),
    ({"percentages": (0.0,)}, r"percentage 0\.0 is outside \(0, 1\)"),
    ({"percentages": (10, 20)}, r"percentage 10 is outside \(0, 1\)"),
    ({"percentages": ()}, "non-empty"),
    ({"imputer": "gain"}, r"imputer: 'gain' is not one of: linear, mean, zero"),
    ({"order": "random"}, r"order: 'random' is not one of: morf, lerf"),
    ({"noise": -0.1}, "noise: must be a finite number >= 0"),
    ({"order": "lerf", "percentages": (0.001,)}, r"percentage 0\.001: LeRF keeps"),
    ({"batch_size": 0}, "batch_size: must be an integer >= 1"),
    ({"score": "auc"}, r"score: 'auc' is not one of: accuracy, prob"),
    ({"percentages": (0.5, 0.5)}, r"percentage 0\.5 is given twice"),
    ({"percentages": 0.5}, "non-empty sequence"),
    ({"noise": True}, "noise: must be a finite number >= 0, got True"),
])
def test_bad_input_is_named(tiny_cnn, bad, match):
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=match):
        metrics.road(tiny_cnn, x, torch.rand(2, 16, 16), [0, 1], **bad)


def test_bad_maps_targets_and_missing_normalisation_are_named(tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    maps = torch.rand(2, 16, 16)
    maps[1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="image b contains NaN"):
        metrics.road(tiny_cnn, x, maps, [0, 1], ids=["a", "b"])
    with pytest.raises(ValueError, match="saliency has shape"):
        metrics.road(tiny_cnn, x, torch.rand(2, 8, 8), [0, 1])
    with pytest.raises(ValueError, match="target 9 of image #1 is out of range"):
        metrics.road(tiny_cnn, x, torch.rand(2, 16, 16), [0, 9])
    bare = RegionModel((slice(0, 2), slice(0, 2)))
    with pytest.raises(ValueError, match="pass pixel_std"):
        metrics.road(bare, x, torch.rand(2, 16, 16), [0, 1])
    with pytest.raises(ValueError, match="pass pixel_mean and pixel_std"):
        metrics.road(bare, x, torch.rand(2, 16, 16), [0, 1], imputer="zero")
    morf = metrics.road(bare, x, torch.rand(2, 16, 16), [0, 1], pixel_std=0.5,
                        percentages=(0.5,))
    with pytest.raises(ValueError, match="needs a morf and a lerf result"):
        metrics.road_combined(morf, morf)
