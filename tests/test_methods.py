"""Saliency methods: closed-form cases, the seed's algorithm, and registry-wide invariants."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

import harness
from harness.methods import METHODS
from harness.methods._core import _hook_counts
from tests.conftest import TinyCNN, state_hash

# cheap settings so every method runs in well under a second on the tiny model
CHEAP = {
    "smoothgrad": {"n": 3}, "smoothgrad_sq": {"n": 3}, "vargrad": {"n": 3},
    "integrated_gradients": {"n_steps": 4}, "rise": {"n_masks": 64},
}


def seed_saliency(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The cs231n notebook's compute_saliency_maps, written out with autograd, fixed for any N
    (the seed's ``backward(torch.FloatTensor([1., 1., 1., 1., 1.]))`` only works for N = 5)."""
    model.eval()
    X = X.clone().requires_grad_()
    logits = model.forward(X)
    logits = logits.gather(1, y.view(-1, 1)).squeeze(1)
    logits.backward(torch.ones(X.shape[0]))
    saliency = abs(X.grad.data)
    saliency, _ = torch.max(saliency, dim=1)
    return saliency


def test_vanilla_on_linear_model_is_max_abs_weight(linear_model):
    x = torch.randn(3, 3, 8, 8)
    target = torch.tensor([0, 3, 1])
    maps = harness.saliency("vanilla", linear_model, x, target)
    expected = linear_model.weight.detach()[target].abs().amax(dim=1)
    torch.testing.assert_close(maps, expected, rtol=0, atol=0)


@pytest.mark.parametrize("n_images", range(1, 8))
def test_vanilla_equals_seed_algorithm(n_images):
    model = harness.load_model("squeezenet1_1", weights="random", seed=1)
    generator = torch.Generator().manual_seed(n_images)
    x = torch.randn(n_images, 3, 64, 64, generator=generator)
    y = torch.randint(0, 1000, (n_images,), generator=generator)
    expected = seed_saliency(model, x, y)
    for param in model.parameters():  # the seed left grads off; undo its model.eval side effects
        assert param.grad is None
    assert torch.equal(harness.saliency("vanilla", model, x, y), expected)


def test_grad_x_input_and_ig_on_linear_model(linear_model):
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([2, 1])
    weight = linear_model.weight.detach()[target]
    gxi = METHODS["grad_x_input"].attribution(linear_model, x, target)
    torch.testing.assert_close(gxi, weight * x)
    # IG of a linear function with a zero baseline is exactly (x - 0) * W for every rule
    for rule in ("right", "left", "middle", "trapezoid"):
        ig = METHODS["integrated_gradients"].attribution(linear_model, x, target, n_steps=3,
                                                         rule=rule)
        torch.testing.assert_close(ig, weight * x)


def test_integrated_gradients_completeness():
    """Sum of attributions = f(x) - f(baseline) (Sundararajan et al., Proposition 1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 36, 3))
    model = harness.models.prepare(model.double())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 2])
    ig = METHODS["integrated_gradients"].attribution(model, x, target, n_steps=400,
                                                     rule="trapezoid", batch_size=128)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(ig.sum(dim=(1, 2, 3)), gap, rtol=1e-5, atol=1e-6)


def test_guided_backprop_closed_form():
    """f = v . relu(U x): gradient U^T (v * [Ux > 0]); guided: U^T (max(v, 0) * [Ux > 0])."""
    torch.manual_seed(0)
    model = harness.models.prepare(nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 4 * 4, 6, bias=False), nn.ReLU(inplace=True),
        nn.Linear(6, 2, bias=False)))
    x = torch.randn(1, 3, 4, 4)
    U, V = model[1].weight, model[3].weight
    active = (U @ x.flatten()) > 0
    for target in (0, 1):
        expected = (U.T @ (V[target].clamp(min=0) * active)).view(1, 3, 4, 4)
        got = METHODS["guided_backprop"].attribution(model, x, torch.tensor([target]))
        torch.testing.assert_close(got, expected)
    assert _hook_counts(model) == _hook_counts(nn.Sequential(*model))


def test_gradcam_equals_cam_for_gap_linear_model(tiny_cnn):
    """With global average pooling + linear, Grad-CAM is CAM (Zhou et al. 2016):
    alpha_k = W[target, k] / (h w), map = ReLU(sum_k alpha_k A_k)."""
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([1, 4])
    with torch.no_grad():
        activation = tiny_cnn.features(x)
    weight = tiny_cnn.classifier.weight[target] / (16 * 16)
    cam = (weight[:, :, None, None] * activation).sum(1)
    torch.testing.assert_close(harness.saliency("gradcam", tiny_cnn, x, target), cam.clamp(min=0))
    torch.testing.assert_close(harness.saliency("gradcam", tiny_cnn, x, target, signed=True), cam)


def test_smoothgrad_family_closed_forms(linear_model):
    """A linear model's gradient is constant: SmoothGrad = vanilla, SG-SQ = vanilla^2, VarGrad = 0
    at any noise level; with noise 0 SmoothGrad of any base is that base."""
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([0, 1])
    vanilla = harness.saliency("vanilla", linear_model, x, target)
    smooth = harness.saliency("smoothgrad", linear_model, x, target, n=7, noise=0.3)
    torch.testing.assert_close(smooth, vanilla)
    squared = harness.saliency("smoothgrad_sq", linear_model, x, target, n=7, noise=0.3)
    torch.testing.assert_close(squared, vanilla**2)
    var = harness.saliency("vargrad", linear_model, x, target, n=7, noise=0.3)
    assert float(var.abs().max()) < 1e-5


def test_smoothgrad_noise_zero_and_average_modes(tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([0, 3])
    for base in ("vanilla", "gradcam", "guided_backprop"):
        plain = harness.saliency(base, tiny_cnn, x, target)
        for average in ("attribution", "map") if base != "gradcam" else ("map",):
            smooth = harness.saliency("smoothgrad", tiny_cnn, x, target, base=base, n=2,
                                      noise=0.0, average=average)
            torch.testing.assert_close(smooth, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no raw attribution"):
        harness.saliency("smoothgrad", tiny_cnn, x, target, base="gradcam", average="attribution")


def test_smoothgrad_is_the_mean_over_the_documented_noise(tiny_cnn):
    """Recompute SmoothGrad by hand from the documented noise (seed, the image's values)."""
    from harness.methods.smoothing import noise_for_image

    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([1, 2])
    got = harness.saliency("smoothgrad", tiny_cnn, x, target, n=4, noise=0.2, seed=5,
                           batch_size=3)
    grads = []
    for i in range(2):
        noisy = x[i] + noise_for_image(x[i], 4, 0.2, 5)
        grads.append(METHODS["vanilla"].attribution(tiny_cnn, noisy, target[i].repeat(4)).mean(0))
    expected = torch.stack(grads).abs().amax(dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    spread = float(x[0].max() - x[0].min()) * 0.2
    assert abs(float(noise_for_image(x[0], 200, 0.2, 5).std()) - spread) < 0.05 * spread
    # neither the batch size nor the image's position in the batch changes the numbers
    again = harness.saliency("smoothgrad", tiny_cnn, x, target, n=4, noise=0.2, seed=5,
                             batch_size=8)
    torch.testing.assert_close(got, again, rtol=1e-6, atol=1e-8)
    alone = harness.saliency("smoothgrad", tiny_cnn, x[1:], target[1:], n=4, noise=0.2, seed=5)
    torch.testing.assert_close(got[1:], alone, rtol=1e-6, atol=1e-8)
    for method in ("random", "sobel"):
        both = harness.saliency(method, tiny_cnn, x, target)
        assert torch.equal(both[1:], harness.saliency(method, tiny_cnn, x[1:], target[1:]))


def test_blurred_is_scipy_gaussian_of_base(tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([0, 1])
    base = harness.saliency("vanilla", tiny_cnn, x, target).double().numpy()
    got = harness.saliency("blurred", tiny_cnn, x, target, sigma=1.5)
    expected = np.stack([gaussian_filter(m, 1.5) for m in base])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_controls():
    model = harness.models.prepare(harness.attach_info(TinyCNN(), num_classes=5, input_size=16))
    other = harness.models.prepare(harness.attach_info(TinyCNN(seed=3), num_classes=5,
                                                       input_size=16))
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([0, 1])
    for name in ("sobel", "center", "random"):
        a = harness.saliency(name, model, x, target)
        b = harness.saliency(name, other, x, target.flip(0))
        assert torch.equal(a, b), f"{name} must not depend on the model or the target"
    center = harness.saliency("center", model, x, target)
    assert center[0, 7:9, 7:9].min() == center.max()
    assert not torch.equal(harness.saliency("random", model, x, target, seed=1),
                           harness.saliency("random", model, x, target, seed=2))
    flat = torch.zeros(1, 3, 16, 16)
    assert float(harness.saliency("sobel", model, flat, [0]).abs().max()) == 0.0


# ----------------------------------------------------------------------------- registry-wide


@pytest.mark.parametrize("name", harness.list_methods())
def test_every_method_contract(name, tiny_cnn):
    if METHODS[name].fn.__module__ == "harness.methods.attention":
        pytest.skip("attention methods need a transformer: tests/test_attention_methods.py")
    model = tiny_cnn
    model.train()  # the guard must restore this, and the requires_grad flags below
    for param in model.classifier.parameters():
        param.requires_grad_(True)
    before = (state_hash(model), [m.training for m in model.modules()],
              [p.requires_grad for p in model.parameters()], _hook_counts(model))
    x = torch.randn(3, 3, 16, 16)
    x_copy = x.clone()
    target = torch.tensor([0, 2, 4])
    params = CHEAP.get(name, {})
    maps = harness.saliency(name, model, x, target, **params)
    assert maps.shape == (3, 16, 16)
    assert maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert torch.equal(harness.saliency(name, model, x, target, **params), maps), "deterministic"
    assert torch.equal(x, x_copy), "input unchanged"
    assert not x.requires_grad
    after = (state_hash(model), [m.training for m in model.modules()],
             [p.requires_grad for p in model.parameters()], _hook_counts(model))
    assert after == before, "model unchanged: weights, train flags, requires_grad, hooks"
    assert all(p.grad is None for p in model.parameters())
    assert (maps >= 0).all(), "maps are non-negative (signed=True gives the signed variant)"
    if METHODS[name].signed is not None:
        signed = harness.saliency(name, model, x, target, signed=True, **params)
        assert signed.shape == (3, 16, 16) and torch.isfinite(signed).all()


@pytest.mark.parametrize("name", harness.list_methods())
def test_every_method_has_citation_and_summary(name):
    method = harness.get_method(name)
    assert method.citation and method.summary
    assert dataclasses.is_dataclass(method.settings), "every method has a settings dataclass"
    method.settings()  # whose defaults are valid: the paper's
    harness.settings.check(method.settings())


@pytest.mark.parametrize("n_images", [1, 2, 5])
def test_any_batch_size_and_non_square(n_images, tiny_cnn):
    x = torch.randn(n_images, 3, 12, 20)
    target = torch.zeros(n_images, dtype=torch.long)
    for name in ("vanilla", "gradcam", "smoothgrad"):
        maps = harness.saliency(name, tiny_cnn, x, target, **CHEAP.get(name, {}))
        assert maps.shape == (n_images, 12, 20)


def test_method_errors(tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(harness.UnknownNameError, match="Valid methods: .*vanilla"):
        harness.saliency("vanila", tiny_cnn, x, [0, 1])
    with pytest.raises(ValueError, match="target 9 of image #1 is out of range"):
        harness.saliency("vanilla", tiny_cnn, x, [0, 9])
    with pytest.raises(ValueError, match="target has 3 entries for 2 images"):
        harness.saliency("vanilla", tiny_cnn, x, [0, 1, 2])
    with pytest.raises(ValueError, match=r"x must be a tensor \[N, C, H, W\]"):
        harness.saliency("vanilla", tiny_cnn, x[0], [0])
    with pytest.raises(ValueError, match="no signed variant"):
        harness.saliency("vargrad", tiny_cnn, x, [0, 1], signed=True)
    with pytest.raises(ValueError, match="model has no module 'nope'"):
        harness.saliency("gradcam", tiny_cnn, x, [0, 1], layer="nope")


@pytest.mark.slow
def test_methods_on_real_model(lite0, sample_batch):
    """On EfficientNet-Lite0 the gradient methods give finite maps and leave the model frozen."""
    x, target = sample_batch
    for name in ("vanilla", "gradcam", "guided_backprop", "grad_x_input"):
        maps = harness.saliency(name, lite0, x, target)
        assert maps.shape == (2, 224, 224) and torch.isfinite(maps).all()
    assert not any(p.requires_grad for p in lite0.parameters())


def test_inputs_made_under_inference_mode_are_accepted(tiny_cnn):
    with torch.inference_mode():
        x = torch.randn(2, 3, 16, 16)
        target = tiny_cnn(x).argmax(1)
    for name in ("vanilla", "integrated_gradients", "smoothgrad", "gradcam"):
        maps = harness.saliency(name, tiny_cnn, x, target, **CHEAP.get(name, {}))
        assert maps.shape == (2, 16, 16)
