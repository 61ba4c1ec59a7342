"""Smooth MPRT and Efficient MPRT (Hedström et al. 2024) against Quantus 0.6 ``SmoothMPRT`` and
``EfficientMPRT`` on the same model, inputs, maps, randomized models and noise draws, and their
definitions on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import harness
from harness.errors import ConfigError
from harness.models import attach_info, prepare
from harness.sanity import efficient_mprt, smooth_mprt
from harness.sanity.efficient_mprt import EfficientMPRTSettings, bins_by_rule, discrete_entropy
from harness.sanity.randomization import randomization_steps, randomize, resolve_blocks
from harness.sanity.revisited import preprocess_maps
from harness.sanity.smooth_mprt import SmoothMPRTSettings, smoothed_maps, smoothing_noise


class SmallNet(nn.Module):
    """conv-ReLU-conv-ReLU-pool-linear: three parameterised modules, so Quantus' layers (modules
    with ``reset_parameters``) and the harness's blocks are the same three."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3),
                                      nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def small():
    model = prepare(attach_info(SmallNet(), num_classes=4, input_size=12))
    x = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([0, 1, 2, 3, 1])
    return model, x, target


def quantus_explain(method: str, signed: bool = False):
    """Quantus' explain_func computing the harness method's maps ``[N, 1, H, W]``."""

    def explain(model, inputs, targets, **kwargs):
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        maps = harness.saliency(method, model, x, torch.as_tensor(np.asarray(targets)).long(),
                                signed=signed)
        return maps[:, None].detach().numpy()

    return explain


@pytest.fixture
def our_layers(monkeypatch):
    """Quantus' layer generator yielding the harness's randomized copies (same blocks, same
    weights) in Quantus' order of names, so both tools randomize identically."""
    quantus = pytest.importorskip("quantus")
    from quantus.helpers.model.pytorch_model import PyTorchModel

    def generator(self, order="top_down", seed=42):
        model = self.model
        mode = "independent" if order == "independent" else "cascading"
        steps = randomization_steps(model, resolve_blocks(model, None), mode=mode,
                                    order="top_down" if order == "independent" else order)
        for block, chosen, indices in steps:
            yield block.label, randomize(model, chosen, seed=0, indices=indices)

    monkeypatch.setattr(PyTorchModel, "get_random_layer_generator", generator)
    return quantus


# ----------------------------------------------------------------------------- Smooth MPRT


@pytest.mark.parametrize("skip_layers", [False, True])
def test_smooth_mprt_equals_quantus(small, our_layers, skip_layers):
    quantus = our_layers
    model, x, target = small
    n_samples, magnitude = 4, 0.1
    n_models = 2 + (1 if skip_layers else 3)  # Quantus: a_batch, "original", then the layers
    saved = np.random.get_state()  # noqa: NPY002 - Quantus draws from numpy's global generator
    np.random.seed(11)  # noqa: NPY002
    draws = [[np.random.randn(*x.shape) for _ in range(n_samples - 1)]  # noqa: NPY002
             for _ in range(n_models)]
    np.random.seed(11)  # noqa: NPY002
    metric = quantus.SmoothMPRT(nr_samples=n_samples, noise_magnitude=magnitude,
                                skip_layers=skip_layers, disable_warnings=True)
    # Quantus 0.6 smooths its own ``quantus.explain`` whatever ``explain_func`` is given (its
    # ``explain_smooth_batch_numpy``): "Gradient" is Captum's signed gradient summed over
    # channels, the harness's vanilla with signed=True
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=None,
                    explain_func=quantus_explain("vanilla", signed=True),
                    explain_func_kwargs={"method": "Gradient"}, batch_size=64)
    np.random.set_state(saved)  # noqa: NPY002
    # per evaluated model: per image [n_samples - 1, C, H, W]; Quantus' second draw set is its
    # "original" self-comparison, which the harness leaves out
    replay = [[torch.from_numpy(np.stack([d[i] for d in draws[k]])) for i in range(len(x))]
              for k in [0, *range(2, n_models)]]
    ours = smooth_mprt(model, "vanilla", x, target, n_samples=n_samples, map="signed",
                       noise_magnitude=magnitude, skip_layers=skip_layers, noise=replay)
    assert ours.map == "signed"
    layers = [k for k in theirs if k != "original"]
    assert tuple(layers) == ours.steps
    expected = np.array([theirs[k] for k in layers]).T  # [N, steps]
    assert np.allclose(ours.similarities, expected, atol=1e-6, rtol=0)
    assert ours.values == pytest.approx(expected[:, -1], abs=1e-6)
    assert len(ours.steps) == (1 if skip_layers else 3)


def test_smooth_mprt_by_hand(small):
    """The smoothed maps are the mean over the noisy inputs and the noise-free one; normalised
    per map by the root mean square, then absolute; Spearman to the original's."""
    model, x, target = small
    draws = smoothing_noise(x, 3, seed=5, ids=None)
    smoothed = smoothed_maps("vanilla", model, x, target, draws, noise_magnitude=0.2,
                             batch_size=4)
    spread = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))) * 0.2
    for i in range(len(x)):
        inputs = [(x[i].double() + draws[i][s].double() * float(spread[i])).float()
                  for s in range(2)] + [x[i]]
        maps = harness.saliency("vanilla", model, torch.stack(inputs), target[[i] * 3])
        assert np.allclose(smoothed[i], maps.double().mean(0).numpy(), atol=1e-12)
    processed = preprocess_maps(np.stack([np.full((2, 2), -2.0), np.zeros((2, 2))]),
                                normalise="second_moment", abs=True)
    assert np.array_equal(processed, np.stack([np.ones((2, 2)), np.zeros((2, 2))]))
    result = smooth_mprt(model, "vanilla", x, target, n_samples=3, noise_magnitude=0.2,
                         skip_layers=True, noise_seed=5)
    randomized = randomize(model, resolve_blocks(model, None), seed=0, indices=[0, 1, 2])
    other = preprocess_maps(smoothed_maps("vanilla", randomized, x, target, draws,
                                          noise_magnitude=0.2), normalise="second_moment",
                            abs=True)
    original = preprocess_maps(smoothed, normalise="second_moment", abs=True)
    for i in range(len(x)):
        expected = stats.spearmanr(original[i].ravel(), other[i].ravel()).statistic
        assert result.values[i] == pytest.approx(expected, abs=1e-12)


def test_smooth_mprt_noise_does_not_depend_on_the_batch(small):
    model, x, target = small
    ids = [f"img{i}" for i in range(len(x))]
    whole = smooth_mprt(model, "vanilla", x, target, n_samples=3, skip_layers=True, ids=ids,
                        batch_size=2)
    alone = smooth_mprt(model, "vanilla", x[3:4], target[3:4], n_samples=3, skip_layers=True,
                        ids=ids[3:4], batch_size=7)
    assert alone.values[0] == pytest.approx(whole.values[3], abs=1e-12)


# ----------------------------------------------------------------------------- Efficient MPRT


@pytest.mark.parametrize("settings", [{}, {"abs": True, "normalise": True},
                                      {"skip_layers": False}])
def test_efficient_mprt_equals_quantus(small, our_layers, settings):
    quantus = our_layers
    model, x, target = small
    method = "grad_x_input"  # signed maps, so abs matters
    maps = harness.saliency(method, model, x, target, signed=True)
    kwargs = {"normalise_func": quantus.normalise_by_average_second_moment_estimate}
    metric = quantus.EfficientMPRT(disable_warnings=True, **kwargs, **settings)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(),
                    a_batch=maps[:, None].numpy(), explain_func=quantus_explain(method, True),
                    batch_size=64)
    ours = efficient_mprt(model, method, x, target, maps=maps, map="signed",
                          abs=settings.get("abs", False),
                          normalise="second_moment" if settings.get("normalise") else "none",
                          skip_layers=settings.get("skip_layers", True))
    assert ours.values == pytest.approx(np.array(theirs), abs=1e-9)
    scores = metric.explanation_scores_by_layer
    assert ours.complexities == pytest.approx(np.array(list(scores.values())).T, abs=1e-9)
    # Quantus' extra scores: the entropy of the softmax outputs of each model
    models = metric.model_scores_by_layer
    assert ours.model_entropies == pytest.approx(np.array(list(models.values())).T, abs=1e-6)


def test_efficient_mprt_by_hand():
    # 100 equal-width bins over [0, 1]: a map with 4 values in 4 distinct bins has entropy
    # log 4; a map with half its values in one bin and half in another, log 2
    assert discrete_entropy(np.array([0.0, 0.3, 0.6, 1.0]), 100) == pytest.approx(np.log(4))
    assert discrete_entropy(np.array([0.0, 0.0, 1.0, 1.0]), 100) == pytest.approx(np.log(2))
    values = np.arange(1000, dtype=float)
    assert bins_by_rule(values, "sturges") == int(np.log2(1000) + 1) == 10
    assert bins_by_rule(values, "square_root") == 31
    assert bins_by_rule(values, "rice") == int(2 * 1000 ** (1 / 3)) == 19
    iqr = np.percentile(values, 75) - np.percentile(values, 25)
    cube_root = 1000 ** (1 / 3)  # 9.999999999999998 in floating point
    assert bins_by_rule(values, "freedman_diaconis") == int(999 / (2 * iqr / cube_root)) == 9
    assert bins_by_rule(values, "scott") == int(999 / (3.5 * np.std(values) / cube_root))
    settings = EfficientMPRTSettings(rule="sturges", min_bins=12)
    assert settings.bins(values) == 12  # clamped to [min_bins, max_bins]
    with pytest.raises(ConfigError, match="rule: 'fd' is not one of: freedman_diaconis"):
        EfficientMPRTSettings(rule="fd").check()
    with pytest.raises(ConfigError, match="order: 'up' is not one of: top_down, bottom_up"):
        SmoothMPRTSettings(order="up").check()


def test_efficient_mprt_rise_and_controls(small):
    model, x, target = small
    result = efficient_mprt(model, "vanilla", x, target)
    first, last = result.complexities[:, 0], result.complexities[:, -1]
    assert result.values == pytest.approx((last - first) / first, abs=1e-12)
    # an input-only control has the same map on every model: no rise
    sobel = efficient_mprt(model, "sobel", x, target)
    assert np.all(sobel.values == 0)


def test_documented_differences_from_quantus(small):
    quantus = pytest.importorskip("quantus")
    from quantus.functions import n_bins_func
    from quantus.helpers.model.pytorch_model import PyTorchModel

    rng = np.random.default_rng(0)
    batch = rng.standard_normal((3, 1, 8, 8))
    # Quantus divides a batch by one batch-wide second moment; the harness each map by its own
    theirs = quantus.normalise_by_average_second_moment_estimate(batch.copy())
    assert np.allclose(theirs, batch / np.sqrt(np.mean(batch**2)))
    ours = preprocess_maps(batch[:, 0], normalise="second_moment", abs=False)
    assert np.allclose(np.mean(ours**2, axis=(1, 2)), 1.0)
    assert not np.allclose(ours, theirs[:, 0])
    # ... which changes neither ranks nor an equal-width histogram's entropy
    for mine, other in zip(ours, theirs[:, 0], strict=True):
        assert stats.spearmanr(mine.ravel(), other.ravel()).statistic == pytest.approx(1.0)
        assert discrete_entropy(mine, 100) == pytest.approx(discrete_entropy(other, 100))
    # Quantus' bin rules count a map's axes (a_batch[0].ndim = 3), not its values
    assert n_bins_func.sturges_formula(batch) == int(np.log2(3) + 1) == 2
    assert bins_by_rule(batch[0], "sturges") == int(np.log2(64) + 1) == 7
    # Quantus re-seeds every layer with seed + 1: layers of equal shape get equal weights
    twins = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    *_, (_, randomized) = PyTorchModel(twins, channel_first=True).get_random_layer_generator(
        order="bottom_up")
    assert torch.equal(randomized[0].weight, randomized[2].weight)
    twins = prepare(attach_info(twins, num_classes=4, input_size=4))
    ours = randomize(twins, resolve_blocks(twins, None), seed=0)
    assert not torch.equal(ours[0].weight, ours[2].weight)


def test_common_draws_let_a_model_independent_map_score_one(small):
    """With the same noise for every model, a method that ignores the model (the random
    control, seeded by the input) gets the same smoothed map from both: similarity 1, as it
    should; with new draws per model (Quantus) it looks maximally sensitive to the model."""
    model, x, target = small
    common = smooth_mprt(model, "random", x, target, n_samples=4, skip_layers=True)
    assert np.allclose(common.values, 1.0)
    independent = smooth_mprt(model, "random", x, target, n_samples=4, skip_layers=True,
                              noise=[smoothing_noise(x, 4, seed=s) for s in (0, 1)])
    assert np.all(independent.values < 0.5)
