"""Input invariance (Kindermans et al. 2019): the analytic invariances of gradient methods, the
exact shift absorption, and equality with Quantus 0.6 ``InputInvariance``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import harness
from harness.errors import ConfigError, MetricError
from harness.models import attach_info, prepare
from harness.sanity import input_invariance
from harness.sanity.input_invariance import InputInvarianceSettings, first_layer, shifted_model


class FlatNet(nn.Module):
    """conv (no padding) - ReLU - conv - ReLU - pool - linear, the conv registered first (Quantus'
    shift goes into ``named_modules()[1]``)."""

    def __init__(self, padding: int = 0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=padding)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        hidden = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(self.pool(hidden).flatten(1))


class LinearNet(nn.Module):
    """score = W vec(x) + b: integrated gradients is (x - x') * W exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


def build(module, size):
    return prepare(attach_info(module, num_classes=4, input_size=size, cam_layer="conv2"
                               if isinstance(module, FlatNet) else "fc"))


@pytest.fixture
def flat():
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    return build(FlatNet(), 12), x, torch.tensor([0, 1, 2, 3])


def test_gradient_is_invariant_and_gradient_times_input_moves_by_shift_times_gradient(flat):
    model, x, target = flat
    vanilla = input_invariance(model, "vanilla", x, target, shift=-1.0)
    assert np.all(vanilla.moved == 0) and vanilla.invariant.all()
    assert np.all(vanilla.values < 1e-5)
    assert torch.allclose(vanilla.maps, vanilla.shifted_maps, atol=1e-6)
    assert vanilla.layer == "conv1"
    moved = input_invariance(model, "grad_x_input", x, target, shift=-1.0)
    assert not moved.invariant.any() and np.all(moved.moved > 0.5)
    # closed form: the gradient is the same, the input is x - 1
    gradient = harness.methods.raw_attribution("vanilla", model, x, target)
    expected = ((x - 1.0) * gradient).abs().amax(dim=1)
    assert torch.allclose(moved.shifted_maps, expected, atol=1e-6)
    norm = np.linalg.norm(moved.maps.double().flatten(1).numpy(), axis=1)
    difference = np.linalg.norm((moved.shifted_maps - moved.maps).double().flatten(1).numpy(),
                                axis=1)
    assert moved.values == pytest.approx(difference / norm)


def test_gradcam_reads_only_layers_after_the_first_and_is_invariant(flat):
    model, x, target = flat
    result = input_invariance(model, "gradcam", x, target, shift=0.7)
    assert result.invariant.all(), result.moved


def test_integrated_gradients_depends_on_its_baseline_under_a_shift():
    model = build(LinearNet(), 8)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 2, 3])
    shift = -0.5
    zero = input_invariance(model, "integrated_gradients", x, target, shift=shift,
                            method_params={"n_steps": 4, "baseline": "zero"})
    # linear model: IG = (x - x') * W exactly; the zero baseline stays while the input moves
    weight = model.fc.weight.view(4, 3, 8, 8)[target]
    assert torch.allclose(zero.maps, (x * weight).abs().amax(dim=1), atol=1e-6)
    assert torch.allclose(zero.shifted_maps, ((x + shift) * weight).abs().amax(dim=1), atol=1e-6)
    assert not zero.invariant.any()
    # a baseline that moves with the input: the same map
    shifted, _ = shifted_model(model, shift, x.shape[1:])
    ig = harness.methods.get_method("integrated_gradients").fn
    before = ig(model, x, target, n_steps=4, baseline=0.25)
    after = ig(shifted, x + shift, target, n_steps=4, baseline=0.25 + shift)
    assert torch.allclose(before, after, atol=1e-6)


def test_padding_is_absorbed_exactly_per_position():
    model = build(FlatNet(padding=1), 12)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    shifted, path = shifted_model(model, -1.0, x.shape[1:])
    assert path == "conv1" and type(shifted.conv1).__name__ == "_Shifted"
    assert torch.allclose(shifted(x - 1.0), model(x), atol=1e-5)
    # a per-channel bias (Quantus' rule) cannot absorb it: the border sees the zero padding
    quantus = pytest.importorskip("quantus")
    from quantus.helpers.model.pytorch_model import PyTorchModel

    theirs = PyTorchModel(model, channel_first=True).add_mean_shift_to_first_layer(
        -1.0, (1, 3, 12, 12))
    assert not torch.allclose(theirs(x - 1.0), model(x), atol=1e-3)
    assert quantus.__version__ == "0.6.0"


def test_quantus_shifts_named_modules_first_entry_which_fails_for_containers():
    """Quantus 0.6 ``add_mean_shift_to_first_layer`` takes ``named_modules()[1]``: a torchvision
    model's ``features`` container, which has no ``out_channels``; the harness traces the first
    layer that the input reaches."""
    pytest.importorskip("quantus")
    from quantus.helpers.model.pytorch_model import PyTorchModel

    model = harness.load_model("squeezenet1_1", weights="random")
    with pytest.raises(AttributeError, match="out_channels"):
        PyTorchModel(model, channel_first=True).add_mean_shift_to_first_layer(
            -1.0, (1, 3, 64, 64))
    _, path = shifted_model(model, -1.0, (3, 64, 64))
    assert path == "features.0"


def test_refuses_a_model_that_changes_its_input_first():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = FlatNet()

        def forward(self, x):
            return self.inner(2 * x)

    model = build(Scaled(), 12)
    with pytest.raises(MetricError, match="first layer 'inner.conv1' does not receive the model's "
                                         "input unchanged"):
        first_layer(model, torch.randn(1, 3, 12, 12))
    with pytest.raises(ConfigError, match="shift: must be a finite number"):
        InputInvarianceSettings(shift=float("nan")).check()


def test_quantus_leaves_the_first_element_of_each_image_unshifted():
    """Quantus 0.6 ``perturb_batch`` passes ``indices[i][1:]`` to the perturbation, and
    ``InputInvariance`` gives it every flat index, so element 0 of each image (channel 0, pixel
    (0, 0)) keeps its value; the harness shifts every element (Kindermans et al.)."""
    pytest.importorskip("quantus")
    import functools

    from quantus.functions.perturb_func import baseline_replacement_by_shift, perturb_batch

    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    shifted = perturb_batch(functools.partial(baseline_replacement_by_shift, input_shift=-1),
                            indices=np.tile(np.arange(x[0].size), (2, 1)),
                            indexed_axes=np.arange(x[0].ndim), arr=x)
    moved = ~np.isclose(shifted, x - 1)
    assert moved.sum() == 2 and moved[:, 0, 0, 0].all()


@pytest.mark.parametrize("method,atol", [("vanilla", 1e-4), ("grad_x_input", 1e-4),
                                         ("grad_x_input", 10.0)])
def test_equals_quantus_input_invariance(flat, method, atol, monkeypatch):
    quantus = pytest.importorskip("quantus")
    from quantus.functions import perturb_func
    from quantus.metrics.axiomatic import input_invariance as module

    def every_element(perturb_func, arr, indices=None, **kwargs):  # without the dropped index
        return np.stack([perturb_func(arr=a, indices=i, **kwargs)
                         for a, i in zip(arr.copy(), indices, strict=True)])

    monkeypatch.setattr(module, "perturb_batch", every_element)
    assert perturb_func.perturb_batch is not every_element
    model, x, target = flat

    def explain(model, inputs, targets, **kwargs):
        inputs = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        return harness.saliency(method, model, inputs,
                                torch.as_tensor(np.asarray(targets)).long())[:, None].numpy()

    maps = harness.saliency(method, model, x, target)
    metric = quantus.InputInvariance(input_shift=-1, disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(),
                    a_batch=maps[:, None].numpy(), explain_func=explain, batch_size=64)
    ours = input_invariance(model, method, x, target, shift=-1.0, maps=maps)
    assert ours.invariant.tolist() == [bool(v) for v in theirs]
    assert ours.invariant.all() == (method == "vanilla")
    # Quantus' atol is fixed at 1e-4; a larger one is the harness's setting alone
    loose = input_invariance(model, method, x, target, shift=-1.0, atol=atol)
    assert loose.invariant.all() == (method == "vanilla" or atol > 1)
