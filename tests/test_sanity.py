"""Sanity checks: similarity measures, model-parameter and data randomization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import harness
from harness.models import weights_fingerprint
from harness.sanity import (
    MEASURES,
    UndefinedSimilarity,
    data_randomization,
    model_randomization,
    randomize,
    render_digits,
    resolve_blocks,
    train_pair,
)
from harness.sanity.randomization import randomization_steps, randomized_models
from harness.sanity.similarity import hog_features, spearman_abs, ssim


def test_measures_of_a_map_with_itself_are_one():
    rng = np.random.default_rng(0)
    image = gaussian_blob(64) + 0.1 * rng.random((64, 64))
    for name, measure in MEASURES.items():
        assert measure(image, image) == pytest.approx(1.0, abs=1e-9), name


def gaussian_blob(size: int) -> np.ndarray:
    grid = np.arange(size) - size / 2
    return np.exp(-(grid[:, None] ** 2 + grid[None] ** 2) / (2 * (size / 6) ** 2))


def test_measures_closed_forms():
    rng = np.random.default_rng(1)
    a = rng.random((32, 32))
    # Spearman is rank-based: any increasing transform of |a| gives 1; reversing gives -1
    assert spearman_abs(a, a**3 + 5) == pytest.approx(1.0)
    assert MEASURES["spearman_signed"](a, -a) == pytest.approx(-1.0)
    assert spearman_abs(a, -a) == pytest.approx(1.0)  # absolute values agree
    # SSIM works on [0, 1]-scaled maps: invariant to affine rescaling of either map
    b = rng.random((32, 32))
    assert ssim(a, b) == pytest.approx(ssim(3 * a + 1, b))
    assert ssim(a, b) < 0.3
    # 64/16 = 4 cells per side: 2 x 2 blocks of 3 x 3 cells, 9 orientations each
    assert hog_features(rng.random((64, 64))).shape == (2 * 2 * 3 * 3 * 9,)


def test_constant_map_is_reported_not_nan():
    with pytest.raises(UndefinedSimilarity, match="randomized map is constant"):
        spearman_abs(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8)))
    model = harness.load_model("squeezenet1_1", weights="random")
    flat = torch.zeros(2, 3, 64, 64)  # Sobel of a flat image is constant
    for normalisation, reason in (
            ("method", "is constant (0.0)"),
            ("reference", "has its 99th percentile equal to its minimum (0.0): no grayscale "
                          "normalisation")):
        with pytest.warns(UserWarning, match="undefined"):
            result = model_randomization(model, "sobel", flat, [0, 1], blocks=["conv10"],
                                         measures=("spearman_abs", "ssim"),
                                         map_normalisation=normalisation)
        assert all(r["value"] is None for r in result.records), normalisation
        assert {r["status"] for r in result.records if r["measure"] == "spearman_abs"} == {
            f"undefined: the original map {reason}"}, normalisation
        assert {r["status"] for r in result.records if r["measure"] == "ssim"} == {
            "undefined: the original map is constant (0.0)"}


@pytest.fixture(scope="module")
def lite0_pair():
    model = harness.load_model("efficientnet_lite0")
    data = harness.load_dataset("samples", names=["chelsea", "coffee"])
    x = harness.preprocess([s.load() for s in data], model.harness_info)
    target = harness.resolve_targets(model, x, [None, None], data.ids)
    return model, x, target, data.ids


@pytest.mark.slow
def test_cascading_randomization_fails_gradient_and_passes_edge_detector(lite0_pair):
    model, x, target, ids = lite0_pair
    before = weights_fingerprint(model)
    blocks = ["fc", "head", "block15", "block10", "block5", "block0", "stem"]
    vanilla = model_randomization(model, "vanilla", x, target, blocks=blocks, ids=ids,
                                  measures=("spearman_abs", "ssim"))
    sobel = model_randomization(model, "sobel", x, target, blocks=blocks, ids=ids,
                                measures=("spearman_abs", "ssim"))
    assert weights_fingerprint(model) == before, "the caller's model must not change"
    table = vanilla.table()
    spearman = table[table["measure"] == "spearman_abs"].groupby("step")["value"].mean()
    assert spearman.iloc[-1] < 0.25 and spearman.iloc[-1] < spearman.iloc[0] - 0.2
    assert all(abs(r["value"] - 1.0) < 1e-9 for r in sobel.records)
    assert {r["block"] for r in vanilla.records} == set(blocks)
    assert vanilla.mode == "cascading" and vanilla.target_mode == "own_top1"
    again = model_randomization(model, "vanilla", x, target, blocks=blocks, ids=ids,
                                measures=("spearman_abs", "ssim"))
    assert again.records == vanilla.records, "same seed, same numbers"


def test_randomize_cascading_and_independent_weights(tiny_cnn):
    model = tiny_cnn
    blocks = resolve_blocks(model, None)
    assert [b.label for b in blocks] == ["classifier", "features.3", "features.0"]
    assert blocks[-1].modules == ("features.0", "features.1")  # conv + its BN
    before = weights_fingerprint(model)
    top = randomize(model, blocks[:1], seed=3, indices=[0])
    both = randomize(model, blocks[:2], seed=3, indices=[0, 1])
    only_second = randomize(model, blocks[1:2], seed=3, indices=[1])
    assert weights_fingerprint(model) == before
    assert not torch.equal(top.classifier.weight, model.classifier.weight)
    assert torch.equal(top.features[3].weight, model.features[3].weight)
    # block k gets the same weights whether randomized alone or in the cascade
    assert torch.equal(both.classifier.weight, top.classifier.weight)
    assert torch.equal(both.features[3].weight, only_second.features[3].weight)
    assert torch.equal(only_second.classifier.weight, model.classifier.weight)
    assert not any(p.requires_grad for p in both.parameters()) and not both.training
    reset = randomize(model, blocks[2:], seed=0, indices=[2])
    assert torch.equal(reset.features[1].running_var, torch.ones(8))  # BN statistics reset


@pytest.mark.parametrize("mode,order", [("cascading", "top_down"), ("cascading", "bottom_up"),
                                        ("independent", "top_down")])
def test_randomized_models_equal_a_fresh_randomize_at_every_step(tiny_cnn, mode, order):
    # the incremental copy (one deep copy, one block initialised per cascading step) must give
    # the weights and buffers of a fresh copy with all of the step's blocks re-initialised
    model = tiny_cnn
    before = weights_fingerprint(model)
    steps = randomization_steps(model, resolve_blocks(model, None), mode=mode, order=order)
    fingerprints = []
    for (_, blocks, indices), reused in zip(
            steps, randomized_models(model, steps, seed=4), strict=True):
        fresh = randomize(model, blocks, seed=4, indices=indices)
        assert reused.state_dict().keys() == fresh.state_dict().keys()
        for name, tensor in fresh.state_dict().items():
            assert torch.equal(reused.state_dict()[name], tensor), (mode, order, indices, name)
        assert not reused.training and not any(p.requires_grad for p in reused.parameters())
        fingerprints.append(weights_fingerprint(reused))
    assert weights_fingerprint(model) == before
    assert len(set(fingerprints)) == len(steps)  # every step changed the weights


def test_randomized_models_reuse_a_copy_only_for_the_same_blocks(tiny_cnn):
    # a block given by the user gets its position in the user's list as seed index, which can
    # equal another block's: reuse must compare the blocks, not only the indices
    from harness.models import Block

    model = tiny_cnn
    blocks = resolve_blocks(model, [Block("mine", ("features.0",)), "classifier"])
    steps = randomization_steps(model, blocks, mode="independent", order="top_down")
    assert [indices for _, _, indices in steps] == [[0], [0]]  # the collision
    for (_, chosen, indices), reused in zip(
            steps, randomized_models(model, steps, seed=1), strict=True):
        fresh = randomize(model, chosen, seed=1, indices=indices)
        for name, tensor in fresh.state_dict().items():
            assert torch.equal(reused.state_dict()[name], tensor), (chosen[0].label, name)


def test_squeezenet_reinitialises_with_its_own_initialisers():
    model = harness.load_model("squeezenet1_1", weights="random", seed=0)
    blocks = resolve_blocks(model, ["conv10", "conv1"])
    randomized = randomize(model, blocks, seed=0)
    final = randomized.get_submodule("classifier.1").weight
    assert abs(float(final.std()) - 0.01) < 0.001  # N(0, 0.01), not kaiming
    assert float(randomized.get_submodule("classifier.1").bias.abs().max()) == 0.0


def test_independent_mode_and_fixed_targets(tiny_cnn):
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 1, 2])
    result = model_randomization(tiny_cnn, "vanilla", x, target, mode="independent",
                                 target_mode="fixed", measures=("spearman_abs",))
    assert [r["target"] for r in result.records if r["step"] == 1] == [0, 1, 2]
    assert len(result.records) == 3 * 3  # images x blocks x measures
    own = model_randomization(tiny_cnn, "vanilla", x, target, measures=("spearman_abs",))
    assert own.target_mode == "own_top1"


def test_bad_options_name_the_choices(tiny_cnn):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown block 'fire9'; valid blocks.*classifier"):
        model_randomization(tiny_cnn, "vanilla", x, [0], blocks=["fire9"])
    with pytest.raises(ValueError, match="mode 'cascade' is not one of: cascading, independent"):
        model_randomization(tiny_cnn, "vanilla", x, [0], mode="cascade")
    with pytest.raises(ValueError, match="unknown measure 'mse'"):
        model_randomization(tiny_cnn, "vanilla", x, [0], measures=("mse",))


@pytest.mark.slow
def test_data_randomization_tiny():
    true_model, permuted_model, x, labels = train_pair(n_train=128, seed=0, max_epochs=120)
    assert true_model.train_accuracy >= 0.95 and permuted_model.train_accuracy >= 0.95
    assert true_model.labels == "true" and permuted_model.labels == "permuted"
    evaluation, _ = render_digits(8, seed=42)
    vanilla = data_randomization("vanilla", true_model, permuted_model, evaluation,
                                 measures=("spearman_abs", "ssim"))
    sobel = data_randomization("sobel", true_model, permuted_model, evaluation,
                               measures=("spearman_abs", "ssim"))
    vanilla_mean = vanilla.table()["value"].mean()
    assert vanilla_mean < 0.8
    assert sobel.table()["value"].min() == pytest.approx(1.0)
    again, _ = render_digits(8, seed=42)
    assert torch.equal(again, evaluation)
