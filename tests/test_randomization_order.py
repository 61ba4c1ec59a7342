"""Model-parameter randomization in both layer orders (Adebayo et al. 2018 top-down; Hedström et
al. 2024 / Quantus ``layer_order="bottom_up"``) and the second-moment map normalisation (Binder
et al. 2023)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import harness
from harness.errors import MetricError
from harness.sanity import model_randomization, randomize, resolve_blocks
from harness.sanity.randomization import ORDERS, ordered_blocks, randomization_steps
from harness.sanity.similarity import (
    MEASURES,
    UndefinedSimilarity,
    compare_views,
    second_moment,
    second_moment_views,
    ssim_reference,
)


def changed_blocks(model, randomized, blocks) -> set[str]:
    """The labels of the blocks whose parameters or buffers differ from ``model``'s."""
    changed = set()
    for block in blocks:
        for path in block.modules:
            before = model.get_submodule(path).state_dict()
            after = randomized.get_submodule(path).state_dict()
            if any(not torch.equal(before[k], after[k]) for k in before
                   if before[k].is_floating_point()):
                changed.add(block.label)
    return changed


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_each_order_changes_exactly_the_intended_blocks_at_every_step(mode):
    model = harness.load_model("squeezenet1_1", weights="random", seed=0)
    blocks = resolve_blocks(model, None)  # top-down: conv10, fire9 ... fire2, conv1
    labels = [b.label for b in blocks]
    assert len(labels) == 10
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for order in ORDERS:
        sequence = labels if order == "top_down" else labels[::-1]
        steps = randomization_steps(model, blocks, mode=mode, order=order)
        assert [block.label for block, _, _ in steps] == sequence
        for step, (block, chosen, indices) in enumerate(steps, start=1):
            randomized = randomize(model, chosen, seed=7, indices=indices)
            expected = set(sequence[:step]) if mode == "cascading" else {sequence[step - 1]}
            assert changed_blocks(model, randomized, blocks) == expected, (order, step)
            # a block's random weights are the same in both orders and modes
            for path in block.modules:
                state = randomized.get_submodule(path).state_dict()
                seen = weights.setdefault(path, state)
                assert all(torch.equal(seen[k], state[k]) for k in state), (order, path)


def test_order_of_the_records_and_the_last_step(tiny_cnn):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 3])
    top = model_randomization(tiny_cnn, "vanilla", x, target, measures=("spearman_abs",),
                              target_mode="fixed")
    bottom = model_randomization(tiny_cnn, "vanilla", x, target, measures=("spearman_abs",),
                                 target_mode="fixed", order="bottom_up")
    assert top.blocks == ("classifier", "features.3", "features.0") and top.order == "top_down"
    assert bottom.blocks == ("features.0", "features.3", "classifier")
    assert bottom.order == "bottom_up"
    # after the last cascading step every block is random in both orders: the same model
    last_top = [r["value"] for r in top.records if r["step"] == 3]
    last_bottom = [r["value"] for r in bottom.records if r["step"] == 3]
    assert last_top == pytest.approx(last_bottom, abs=1e-12)
    # the first step differs: one block each, the logits' in one order, the input's in the other
    assert [r["block"] for r in bottom.records if r["step"] == 1] == ["features.0"] * 2
    with pytest.raises(MetricError, match="order 'up' is not one of: top_down, bottom_up"):
        model_randomization(tiny_cnn, "vanilla", x, target, order="up")
    assert [b.label for b in ordered_blocks(resolve_blocks(tiny_cnn, None), "bottom_up")] == [
        "features.0", "features.3", "classifier"]


# ----------------------------------------------------------------------------- second moment


def test_second_moment_by_hand():
    values = np.array([[3.0, -4.0], [0.0, 0.0]])  # mean of squares 25 / 4: root 2.5
    assert np.array_equal(second_moment(values), values / 2.5)
    assert float(np.mean(second_moment(values) ** 2)) == pytest.approx(1.0)
    views = second_moment_views(np.abs(values), values)
    assert np.array_equal(views["abs"], np.abs(values) / 2.5)
    assert np.array_equal(views["signed"], values / 2.5)
    assert np.array_equal(views["unit"], np.abs(values) / 2.5)
    assert isinstance(second_moment_views(np.zeros((4, 4)), None)["abs"], UndefinedSimilarity)
    assert isinstance(second_moment_views(values, None)["signed"], UndefinedSimilarity)


def test_second_moment_changes_ssim_not_ranks():
    rng = np.random.default_rng(0)
    a = np.abs(rng.standard_normal((24, 24)))
    b = np.abs(a + 0.5 * rng.standard_normal((24, 24)))
    by_method = {"abs": np.abs(a), "signed": a, "unit": (a - a.min()) / np.ptp(a)}
    other_method = {"abs": np.abs(b), "signed": b, "unit": (b - b.min()) / np.ptp(b)}
    moment_a, moment_b = second_moment_views(a, a), second_moment_views(b, b)
    for name in ("spearman_abs", "spearman_signed", "pearson"):
        assert compare_views(name, moment_a, moment_b, "second_moment") == pytest.approx(
            compare_views(name, by_method, other_method, "method"), abs=1e-12), name
    # SSIM on the unbounded views: the pair's joint range is the data range
    ua, ub = a / np.sqrt(np.mean(a**2)), b / np.sqrt(np.mean(b**2))
    span = max(ua.max(), ub.max()) - min(ua.min(), ub.min())
    from skimage.metrics import structural_similarity

    expected = structural_similarity(ua, ub, data_range=span, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=True)
    assert compare_views("ssim", moment_a, moment_b, "second_moment") == pytest.approx(
        expected, abs=1e-12)
    assert compare_views("ssim", moment_a, moment_b, "second_moment") != pytest.approx(
        ssim_reference(by_method["unit"], other_method["unit"]), abs=1e-3)
    assert "ssim" in MEASURES


def test_second_moment_in_the_test(tiny_cnn):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([1, 2])
    kwargs = dict(blocks=["classifier"], target_mode="fixed",
                  measures=("spearman_abs", "spearman_signed"))
    moment = model_randomization(tiny_cnn, "vanilla", x, target,
                                 map_normalisation="second_moment", **kwargs)
    method = model_randomization(tiny_cnn, "vanilla", x, target, map_normalisation="method",
                                 **kwargs)
    assert moment.map_normalisation == "second_moment"
    assert [r["value"] for r in moment.records] == pytest.approx(
        [r["value"] for r in method.records], abs=1e-12)
    randomized = randomize(tiny_cnn, resolve_blocks(tiny_cnn, ["classifier"]), seed=0,
                           indices=[0])
    before = harness.saliency("vanilla", tiny_cnn, x, target, signed=True)[0].numpy()
    after = harness.saliency("vanilla", randomized, x, target, signed=True)[0].numpy()
    expected = stats.spearmanr(before.ravel(), after.ravel()).statistic
    signed = [r for r in moment.records if r["measure"] == "spearman_signed"]
    assert signed[0]["value"] == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- transformers


def test_both_orders_on_a_vision_transformer_change_exactly_the_intended_parameters():
    """Bottom-up and top-down steps of a ViT (bare parameters such as the class token and the
    position embedding sit in the ``embedding`` block) change exactly the parameters of the
    order's first k blocks; the revisited checks run on it."""
    from tests.tiny_transformers import images, tiny_vit

    model = tiny_vit(layers=2)
    blocks = resolve_blocks(model, None)
    before = dict(model.named_parameters())

    def owned(chosen) -> set[str]:
        return {name for name in before for block in chosen for path in block.modules
                if name == path or name.startswith(path + ".")}

    for order in ORDERS:
        steps = randomization_steps(model, blocks, mode="cascading", order=order)
        assert steps[0][0].label == ("head" if order == "top_down" else "embedding")
        for block, chosen, indices in steps:
            randomized = randomize(model, chosen, seed=3, indices=indices)
            changed = {name for name, param in randomized.named_parameters()
                       if not torch.equal(param, before[name])}
            assert changed == owned(chosen), (order, block.label)
    x, target = images(2), torch.tensor([0, 1])
    smooth = harness.sanity.smooth_mprt(model, "vanilla", x, target, n_samples=2)
    assert smooth.steps[0] == "embedding" and np.isfinite(smooth.values).all()
    efficient = harness.sanity.efficient_mprt(model, "vanilla", x, target)
    assert np.isfinite(efficient.values).all()
    invariance = harness.sanity.input_invariance(model, "vanilla", x, target)
    assert invariance.values.max() < 1e-2  # the patch embedding absorbs the shift: float32
