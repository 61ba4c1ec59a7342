"""The sanity checks' similarity measures against direct computations under the reference's
settings (Adebayo et al. 2018, notebook run with scikit-image 0.15 and PAIR saliency 0.0.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.ndimage import gaussian_filter
from skimage.feature import hog

from harness.methods._core import input_gradient
from harness.sanity import model_randomization, randomize, resolve_blocks
from harness.sanity.similarity import (
    MEASURES,
    UndefinedSimilarity,
    abs_norm,
    compare_views,
    diverging_norm,
    hog_features,
    hog_similarity,
    reference_views,
    ssim_reference,
    ssim_wang,
    unit_norm,
)

# ----------------------------------------------------------------------------- direct computations


def ssim_direct(a: np.ndarray, b: np.ndarray, *, data_range: float, sample: bool) -> float:
    """skimage 0.15 ``compare_ssim(gaussian_weights=True)`` written out: Gaussian filter sigma 1.5
    truncate 3.5 (11 x 11 window, N = 121), covariance factor N / (N - 1) if ``sample``,
    C1 = (0.01 R)^2, C2 = (0.03 R)^2, mean over the map cropped by 5 pixels; channels averaged."""
    if a.ndim == 3:
        return float(np.mean([ssim_direct(a[..., c], b[..., c], data_range=data_range,
                                          sample=sample) for c in range(a.shape[2])]))

    def blur(z):
        return gaussian_filter(z, sigma=1.5, truncate=3.5)

    factor = 121 / 120 if sample else 1.0
    ux, uy = blur(a), blur(b)
    vx = factor * (blur(a * a) - ux * ux)
    vy = factor * (blur(b * b) - uy * uy)
    vxy = factor * (blur(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def hog_direct(image: np.ndarray, *, cell: int = 16, block: int = 3) -> np.ndarray:
    """skimage 0.15's ``hog(image, pixels_per_cell=(16, 16))`` written out in numpy: central
    differences (0 on the border), per pixel the channel with the largest gradient magnitude,
    orientation in [0, 180) degrees hard-binned into 9 bins [20 i, 20 (i + 1)), per-cell sums of
    magnitudes accumulated in float32 as skimage's Cython loop does (row by row), divided by the
    cell area; blocks of 3 x 3 cells normalised with L2-Hys (eps 1e-5, clip 0.2)."""
    image = image[..., None] if image.ndim == 2 else image
    g_row = np.zeros_like(image)
    g_col = np.zeros_like(image)
    g_row[1:-1] = image[2:] - image[:-2]
    g_col[:, 1:-1] = image[:, 2:] - image[:, :-2]
    pick = np.hypot(g_row, g_col).argmax(axis=2)[..., None]
    g_row = np.take_along_axis(g_row, pick, axis=2)[..., 0]
    g_col = np.take_along_axis(g_col, pick, axis=2)[..., 0]
    magnitude = np.hypot(g_col, g_row)
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    rows, cols = image.shape[0] // cell, image.shape[1] // cell
    histogram = np.zeros((rows, cols, 9))
    for index in range(9):
        in_bin = (orientation >= 20.0 * index) & (orientation < 20.0 * (index + 1))
        votes = np.where(in_bin, magnitude, 0.0)[:rows * cell, :cols * cell]
        votes = votes.reshape(rows, cell, cols, cell)
        total = np.zeros((rows, cols), dtype=np.float32)
        for r in range(cell):
            for c in range(cell):
                total = (total.astype(np.float64) + votes[:, r, :, c]).astype(np.float32)
        histogram[..., index] = total / np.float32(cell * cell)
    out = np.zeros((rows - block + 1, cols - block + 1, block, block, 9))
    for r in range(rows - block + 1):
        for c in range(cols - block + 1):
            values = histogram[r:r + block, c:c + block]
            values = values / np.sqrt(np.sum(values**2) + 1e-10)
            values = np.minimum(values, 0.2)
            out[r, c] = values / np.sqrt(np.sum(values**2) + 1e-10)
    return out.ravel()


def smooth_map(rng, shape, scale=8.0):
    return gaussian_filter(rng.standard_normal(shape), sigma=(scale, scale, 0)[:len(shape)])


# ----------------------------------------------------------------------------- the measures


@pytest.mark.parametrize("shape", [(64, 80), (64, 80, 3)])
def test_ssim_equals_the_reference_computation(shape):
    rng = np.random.default_rng(0)
    a, b = unit_norm(smooth_map(rng, shape)), unit_norm(smooth_map(rng, shape))
    a = a[..., 0] if len(shape) == 2 else a
    b = b[..., 0] if len(shape) == 2 else b
    assert ssim_reference(a, b) == pytest.approx(
        ssim_direct(a, b, data_range=2.0, sample=True), abs=1e-12)
    assert ssim_wang(a, b) == pytest.approx(
        ssim_direct(a, b, data_range=1.0, sample=False), abs=1e-12)
    # the two conventions differ: the reference's data range of 2 makes C1, C2 4x larger
    assert ssim_reference(a, b) > ssim_wang(a, b) + 0.01


@pytest.mark.parametrize("shape", [(64, 96), (112, 80, 3)])
def test_hog_equals_the_reference_descriptor(shape):
    rng = np.random.default_rng(1)
    a, b = unit_norm(smooth_map(rng, shape, 3)), unit_norm(smooth_map(rng, shape, 3))
    a = a[..., 0] if len(shape) == 2 else a
    b = b[..., 0] if len(shape) == 2 else b
    direct_a, direct_b = hog_direct(a), hog_direct(b)
    assert np.abs(hog_features(a) - direct_a).max() < 1e-12
    assert hog_features(a).size == (shape[0] // 16 - 2) * (shape[1] // 16 - 2) * 81
    expected = stats.spearmanr(direct_a, direct_b).statistic
    assert hog_similarity(a, b) == pytest.approx(expected, abs=1e-12)


def test_one_by_one_blocks_saturate_a_flat_cell_three_by_three_do_not():
    rng = np.random.default_rng(2)
    image = 1e-3 * rng.random((64, 64))
    image[20:28, 20:28] = 1.0  # one strong edge structure; the other cells are nearly flat
    single = hog(image, pixels_per_cell=(16, 16), cells_per_block=(1, 1), block_norm="L2-Hys")
    single = single.reshape(4, 4, 9)
    flat_cell = single[3, 3]  # far from the square: nothing but faint noise

    def clipped(cell):  # bins that hit L2-Hys' 0.2 clip share the cell's maximum exactly
        return int(np.sum(cell == cell.max()))

    assert clipped(flat_cell) >= 6, "L2-Hys of one faint cell clips most bins to one value"
    assert np.mean([clipped(c) >= 6 for c in single.reshape(-1, 9)]) > 0.5
    blocks = hog_features(image).reshape(2, 2, 3, 3, 9)
    # the same faint cell inside a 3 x 3 block that also holds the square: small values that keep
    # their differences (no clipping)
    inside = blocks[1, 1, 2, 2]
    assert inside.max() < 0.05 and clipped(inside) == 1 and len(np.unique(inside)) == 9


def test_small_maps_are_named_not_crashed():
    rng = np.random.default_rng(3)
    a, b = rng.random((40, 64)), rng.random((40, 64))
    with pytest.raises(UndefinedSimilarity, match="40x64 pixels hold no HOG block of 3x3 cells"):
        MEASURES["hog"](a, b)
    with pytest.raises(UndefinedSimilarity, match="smaller than the 11x11 SSIM window"):
        MEASURES["ssim"](rng.random((8, 30)), rng.random((8, 30)))
    assert MEASURES["ssim"](a, b) < 1


def test_reference_normalisation_by_hand():
    # a hand-made 3-channel attribution whose channel sums of |R| are 0, 1, ..., 99
    values = np.arange(100, dtype=np.float64).reshape(10, 10)
    raw = np.stack([values * 0.5, -values * 0.25, values * 0.25], axis=2)
    # numpy's 99th percentile of 0..99 (linear interpolation) is 98.01; min 0
    assert np.allclose(abs_norm(raw), np.clip(values / 98.01, 0, 1), atol=1e-15)
    assert abs_norm(raw)[-1, -1] == 1.0 and abs_norm(raw)[0, 0] == 0.0
    # signed channel sum = 0.5 v; span = |p99| = 49.005; (s + span) / (2 span)
    signed = 0.5 * values
    assert np.allclose(diverging_norm(raw), np.clip((signed + 49.005) / 98.01, -1, 1),
                       atol=1e-15)
    # the notebook's normalize_image: float32, min-max over pixels and channels, 3 channels kept
    unit = unit_norm(raw)
    flat32 = raw.astype(np.float32)
    expected = (flat32 - flat32.min()) / (flat32.max() - flat32.min())
    assert unit.shape == (10, 10, 3) and np.array_equal(unit, expected.astype(np.float64))
    # a 2-D map is the notebook's three_dims copy: every view equals that of the 3-channel copy
    map2d = np.random.default_rng(4).random((16, 16))
    for name, view in reference_views(map2d).items():
        copy3 = reference_views(np.repeat(map2d[:, :, None], 3, axis=2))[name]
        if name == "unit":
            assert ssim_reference(view, copy3[..., :1]) == pytest.approx(1.0)
        else:
            assert np.allclose(view, copy3, atol=1e-12)


def test_measures_of_a_map_with_itself_are_one_and_constants_are_named():
    rng = np.random.default_rng(5)
    image = gaussian_filter(rng.random((64, 64)), 3)
    views = reference_views(np.stack([image, -image, image**2], axis=2))
    for name in MEASURES:
        assert compare_views(name, views, views) == pytest.approx(1.0, abs=1e-9), name
    constant = reference_views(np.ones((64, 64, 3)))
    with pytest.raises(UndefinedSimilarity, match="randomized map has its 99th percentile equal"):
        compare_views("spearman_abs", views, constant)


# ----------------------------------------------------------------------------- in the test


def test_reference_normalisation_reads_the_raw_attribution(tiny_cnn):
    """``reference`` Spearman = Spearman of abs_norm(gradient) (channel sum of |gradient|, 99th
    percentile), not of the abs-max map; ``method`` ranks the method's own map."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 3])
    blocks = resolve_blocks(tiny_cnn, None)[:1]
    result = model_randomization(tiny_cnn, "vanilla", x, target, blocks=[blocks[0].label],
                                 target_mode="fixed", measures=("spearman_abs", "spearman_signed"))
    randomized = randomize(tiny_cnn, blocks, seed=0, indices=[0])
    with torch.enable_grad():
        before = input_gradient(tiny_cnn, x, target)
        after = input_gradient(randomized, x, target)
    for index in range(2):
        a = before[index].permute(1, 2, 0).double().numpy()
        b = after[index].permute(1, 2, 0).double().numpy()
        expected_abs = stats.spearmanr(abs_norm(a).ravel(), abs_norm(b).ravel()).statistic
        expected_signed = stats.spearmanr(diverging_norm(a).ravel(),
                                          diverging_norm(b).ravel()).statistic
        rows = {r["measure"]: r["value"] for r in result.records if r["image_id"] == f"#{index}"}
        assert rows["spearman_abs"] == pytest.approx(expected_abs, abs=1e-12)
        assert rows["spearman_signed"] == pytest.approx(expected_signed, abs=1e-12)
    method = model_randomization(tiny_cnn, "vanilla", x, target, blocks=[blocks[0].label],
                                 target_mode="fixed", measures=("spearman_abs",),
                                 map_normalisation="method")
    a = before[0].abs().amax(0).numpy()
    b = after[0].abs().amax(0).numpy()
    assert method.records[0]["value"] == pytest.approx(
        stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    assert method.map_normalisation == "method" and result.map_normalisation == "reference"
    with pytest.raises(ValueError, match="map_normalisation 'paper' is not one of: reference, "
                                         "method"):
        model_randomization(tiny_cnn, "vanilla", x, target, map_normalisation="paper")


@pytest.mark.parametrize("measure", ["spearman_abs", "spearman_signed", "hog"])
@pytest.mark.parametrize("shape", [(48, 48), (48, 48, 3)])
def test_a_prepared_original_gives_the_same_similarity_bit_for_bit(measure, shape):
    # model_randomization prepares the original map's ranks / HOG descriptor once and compares
    # it at every step: the value must be the one compare() gives, to the last bit (ties too)
    from harness.sanity.similarity import MEASURES, compare_views

    rng = np.random.default_rng(3)
    view = MEASURES[measure].view
    original = {view: np.round(rng.random(shape), 1)}  # many ties
    parts: dict = {}
    for step in range(3):
        other = {view: gaussian_filter(rng.standard_normal(shape), 1 + step)}
        if view == "unit":
            other[view] = (other[view] - other[view].min()) / np.ptp(other[view])
        plain = compare_views(measure, original, other)
        prepared = compare_views(measure, original, other, original_parts=parts)
        assert prepared == plain and np.isfinite(plain), (measure, step)
    assert len(parts) == 1  # the original was prepared once
    if view != "unit":  # spearman_* is scipy's spearmanr of the raveled maps
        expected = stats.spearmanr(original[view].ravel(), other[view].ravel()).statistic
        assert compare_views(measure, original, other, original_parts=parts) == expected


def test_a_prepared_constant_map_is_undefined_as_before():
    from harness.sanity.similarity import UndefinedSimilarity, compare_views

    flat, varied = {"abs": np.ones((20, 20))}, {"abs": np.arange(400.0).reshape(20, 20)}
    for original, other, which in ((flat, varied, "original"), (varied, flat, "randomized")):
        for parts in (None, {}):
            with pytest.raises(UndefinedSimilarity, match=f"the {which} map is constant"):
                compare_views("spearman_abs", original, other, original_parts=parts)
