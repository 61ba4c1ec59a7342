"""Methods from the ecosystem: the Captum and pytorch-grad-cam adapters against the libraries called
directly, RISE against the reference's loop, plug-ins (import path, entry point), errors and
composition. Tiny models and images; the adapter tests skip only where a library is absent."""

from __future__ import annotations

import copy
import importlib.util
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

import harness
from harness.config import ConfigError, from_dict
from harness.errors import MissingDependencyError, PluginError, UnknownNameError
from harness.methods import NonFiniteMapError, _core
from harness.methods._core import _hook_counts
from harness.methods.rise import rise_grids, rise_masks, upsample_matrix
from harness.metrics.registry import Unit
from harness.models import attach_info, prepare
from harness.seeding import content_seed
from tests.conftest import state_hash

X_SHAPE = (3, 3, 16, 16)
TARGET = torch.tensor([0, 2, 4])


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(*X_SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def fresh_cache(monkeypatch):
    """Dynamic names resolved inside the test do not leak into (or come from) other tests."""
    monkeypatch.setattr(_core.METHODS, "_dynamic", {})


def unfrozen_copy(model: nn.Module) -> nn.Module:
    """The model as a user would hand it to a library: a copy with trainable parameters."""
    twin = copy.deepcopy(model)
    for param in twin.parameters():
        param.requires_grad_(True)
    return twin


# ----------------------------------------------------------------------------- Captum


CAPTUM_CASES = {
    "Saliency": ({}, {}),
    "IntegratedGradients": ({"n_steps": 8, "method": "riemann_right"},
                            {"n_steps": 8, "method": "riemann_right"}),
    "Occlusion": ({"sliding_window_shapes": [3, 4, 4], "strides": [3, 4, 4]},
                  {"sliding_window_shapes": (3, 4, 4), "strides": (3, 4, 4)}),
    "InputXGradient": ({"attribute": {}}, {}),
}


@pytest.mark.parametrize("name", list(CAPTUM_CASES))
def test_captum_input_attributions_equal_captum(name, tiny_cnn, x):
    attr = pytest.importorskip("captum.attr")
    params, direct_kwargs = CAPTUM_CASES[name]
    direct = getattr(attr, name)(unfrozen_copy(tiny_cnn)).attribute(
        x.clone(), target=TARGET, **direct_kwargs).detach()
    ours = harness.saliency(f"captum:{name}", tiny_cnn, x, TARGET, **params)
    torch.testing.assert_close(ours, direct.abs().amax(dim=1), rtol=1e-5, atol=1e-7)
    signed = harness.saliency(f"captum:{name}", tiny_cnn, x, TARGET, signed=True, **params)
    torch.testing.assert_close(signed, direct.sum(dim=1), rtol=1e-5, atol=1e-7)
    summed = harness.saliency(f"captum:{name}", tiny_cnn, x, TARGET, reduce="abs_sum", **params)
    torch.testing.assert_close(summed, direct.abs().sum(dim=1), rtol=1e-5, atol=1e-7)


def test_captum_params_split_explicitly_or_by_signature(tiny_cnn, x):
    pytest.importorskip("captum.attr")
    flat = harness.saliency("captum:IntegratedGradients", tiny_cnn, x, TARGET, n_steps=6,
                            multiply_by_inputs=False)
    grouped = harness.saliency("captum:IntegratedGradients", tiny_cnn, x, TARGET,
                               init={"multiply_by_inputs": False}, attribute={"n_steps": 6})
    assert torch.equal(flat, grouped)
    assert not torch.allclose(flat, harness.saliency("captum:IntegratedGradients", tiny_cnn, x,
                                                     TARGET, n_steps=6))


def test_captum_layer_gradcam_upsampled_equals_captum_and_our_gradcam(tiny_cnn, x):
    attr = pytest.importorskip("captum.attr")
    twin = unfrozen_copy(tiny_cnn)
    direct = attr.LayerGradCam(twin, twin.features[3]).attribute(x.clone(), target=TARGET,
                                                                 relu_attributions=True)
    direct = attr.LayerAttribution.interpolate(direct.detach(), (16, 16), "bilinear")[:, 0]
    ours = harness.saliency("captum:LayerGradCam", tiny_cnn, x, TARGET, layer="features.3",
                            relu_attributions=True)
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-7)
    # the same definition as our own Grad-CAM (Selvaraju et al. eq. 1-2, bilinear upsampling)
    torch.testing.assert_close(ours, harness.saliency("gradcam", tiny_cnn, x, TARGET,
                                                      layer="features.3"), rtol=1e-5, atol=1e-7)
    # default layer: the model's cam_layer ('features'), as our gradcam
    torch.testing.assert_close(
        harness.saliency("captum:LayerGradCam", tiny_cnn, x, TARGET, relu_attributions=True),
        harness.saliency("gradcam", tiny_cnn, x, TARGET), rtol=1e-5, atol=1e-7)
    nearest = harness.saliency("captum:LayerGradCam", tiny_cnn, x, TARGET, layer="features.3",
                               relu_attributions=True, upsample="nearest")
    assert nearest.shape == ours.shape


def test_captum_random_methods_are_seeded(tiny_cnn, x):
    attr = pytest.importorskip("captum.attr")
    params = {"baselines": "zero", "n_samples": 4, "stdevs": 0.1}
    state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002 - the library's global state
    first = harness.saliency("captum:GradientShap", tiny_cnn, x, TARGET, seed=3, **params)
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's RNG is untouched"
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002
    assert torch.equal(first, harness.saliency("captum:GradientShap", tiny_cnn, x, TARGET,
                                               seed=3, **params))
    assert not torch.equal(first, harness.saliency("captum:GradientShap", tiny_cnn, x, TARGET,
                                                   seed=4, **params))
    # Captum called directly, one image at a time, its global generators seeded as the adapter
    # seeds them: with (seed, the image's values)
    direct = []
    for i in range(3):
        seed = content_seed(3, x[i], salt="captum:GradientShap")
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002 - GradientShap draws from numpy's generator
        direct.append(attr.GradientShap(unfrozen_copy(tiny_cnn)).attribute(
            x[i:i + 1].clone(), baselines=torch.zeros(1, 3, 16, 16), target=TARGET[i:i + 1],
            n_samples=4, stdevs=0.1).detach())
    direct = torch.cat(direct)
    torch.testing.assert_close(first, direct.abs().amax(dim=1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, params", [
    ("GradientShap", {"baselines": "zero", "n_samples": 4, "stdevs": 0.1}),
    ("LayerGradientShap", {"baselines": "zero", "n_samples": 4, "stdevs": 0.1,
                           "layer": "features.3"}),
    ("KernelShap", {"n_samples": 16, "feature_mask": {"grid": 4}}),
])
def test_captum_random_methods_do_not_depend_on_the_batch(name, params, tiny_cnn, x):
    """Captum draws these methods' samples from the global generators for the whole batch; an
    image's map must not depend on the images computed with it (nor on its position)."""
    pytest.importorskip("captum.attr")
    together = harness.saliency(f"captum:{name}", tiny_cnn, x, TARGET, seed=3, **params)
    for i in range(3):
        alone = harness.saliency(f"captum:{name}", tiny_cnn, x[i:i + 1], TARGET[i:i + 1], seed=3,
                                 **params)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-7)
    flipped = harness.saliency(f"captum:{name}", tiny_cnn, x.flip(0), TARGET.flip(0), seed=3,
                               **params)
    torch.testing.assert_close(flipped.flip(0), together, rtol=1e-5, atol=1e-7)


def test_captum_per_image_tensors_follow_their_image(tiny_cnn, x):
    """Lime and KernelShap run one image at a time; a baselines tensor with one row per image
    (Captum's per-input form) must reach each image with its own row, as one call would use it."""
    pytest.importorskip("captum.attr")
    baselines = torch.stack([torch.full_like(x[0], float(v)) for v in (0.0, 0.5, -0.5)])
    params = {"n_samples": 16, "feature_mask": {"grid": 4}}
    together = harness.saliency("captum:KernelShap", tiny_cnn, x, TARGET, seed=3,
                                baselines=baselines, **params)
    for i in range(3):
        alone = harness.saliency("captum:KernelShap", tiny_cnn, x[i:i + 1], TARGET[i:i + 1],
                                 seed=3, baselines=baselines[i:i + 1], **params)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-7)
    other = harness.saliency("captum:KernelShap", tiny_cnn, x, TARGET, seed=3,
                             baselines=baselines.flip(0), **params)
    assert not torch.allclose(other[0], together[0])


def test_captum_feature_mask_grid(tiny_cnn, x):
    attr = pytest.importorskip("captum.attr")
    ours = harness.saliency("captum:FeatureAblation", tiny_cnn, x, TARGET,
                            feature_mask={"grid": 4})
    mask = (torch.arange(16) // 4).view(-1, 1) * 4 + (torch.arange(16) // 4).view(1, -1)
    direct = attr.FeatureAblation(unfrozen_copy(tiny_cnn)).attribute(
        x.clone(), target=TARGET, feature_mask=mask.view(1, 1, 16, 16))
    torch.testing.assert_close(ours, direct.abs().amax(dim=1), rtol=1e-5, atol=1e-7)
    assert torch.equal(ours[:, :4, :4], ours[:, :1, :1].expand(-1, 4, 4)), "one value per square"


# ----------------------------------------------------------------------------- pytorch-grad-cam


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "EigenCAM",
                                  "LayerCAM", "ScoreCAM", "HiResCAM"])
def test_gradcam_adapter_equals_pytorch_grad_cam(name, tiny_cnn, x):
    library = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    twin = unfrozen_copy(tiny_cnn)
    with getattr(library, name)(model=twin, target_layers=[twin.features[3]]) as cam:
        direct = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(int(t))
                                                      for t in TARGET])
    ours = harness.saliency(f"gradcam:{name}", tiny_cnn, x, TARGET, layer="features.3")
    torch.testing.assert_close(ours, torch.from_numpy(direct), rtol=1e-5, atol=1e-6)


def test_gradcam_call_and_init_params(tiny_cnn, x):
    pytest.importorskip("pytorch_grad_cam")
    plain = harness.saliency("gradcam:GradCAM", tiny_cnn, x, TARGET, layer="features.3")
    smooth = harness.saliency("gradcam:GradCAM", tiny_cnn, x, TARGET, layer="features.3",
                              call={"eigen_smooth": True})
    assert not torch.allclose(plain, smooth)
    assert torch.equal(smooth, harness.saliency("gradcam:GradCAM", tiny_cnn, x, TARGET,
                                                layer="features.3", eigen_smooth=True))
    ablation = harness.saliency("gradcam:AblationCAM", tiny_cnn, x, TARGET, layer="features.3",
                                batch_size=3)
    assert ablation.shape == (3, 16, 16)
    assert harness.saliency("gradcam:FullGrad", tiny_cnn, x, TARGET).shape == (3, 16, 16)


class SharedActivationCNN(nn.Module):
    """conv - act - conv - act - pool - linear with ONE activation module used twice (as
    EfficientNet-Lite's ``_swish``); ``twin()`` is the same network with two modules."""

    def __init__(self, shared: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.act = nn.ReLU6()
        self.act2 = self.act if shared else nn.ReLU6()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        hidden = self.act(self.conv1(x))
        hidden = self.act2(self.conv2(hidden))
        return self.fc(hidden.mean(dim=(2, 3)))


def test_shared_layer_is_explained_at_its_last_call(x):
    library = pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("captum.attr")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    shared = prepare(attach_info(SharedActivationCNN(), num_classes=5, input_size=16,
                                 cam_layer="act"))
    separate = SharedActivationCNN(shared=False)
    separate.load_state_dict(shared.state_dict())
    targets = [ClassifierOutputTarget(int(t)) for t in TARGET]
    with library.GradCAM(model=separate, target_layers=[separate.act2]) as cam:
        last_call = cam(input_tensor=x.clone(), targets=targets)
    ours = harness.saliency("gradcam:GradCAM", shared, x, TARGET)
    torch.testing.assert_close(ours, torch.from_numpy(last_call), rtol=1e-5, atol=1e-6)
    # handed the shared module itself, pytorch-grad-cam explains its FIRST call
    twin = unfrozen_copy(shared)
    with library.GradCAM(model=twin, target_layers=[twin.act]) as cam:
        first_call = cam(input_tensor=x.clone(), targets=targets)
    assert not np.allclose(first_call, last_call, atol=1e-3)
    # Captum's LayerGradCam on the shared module: the last call too, equal to our gradcam
    torch.testing.assert_close(
        harness.saliency("captum:LayerGradCam", shared, x, TARGET, relu_attributions=True),
        harness.saliency("gradcam", shared, x, TARGET), rtol=1e-5, atol=1e-7)
    assert not any(any(counts) for counts in _hook_counts(shared).values()), "no hook left"


# ----------------------------------------------------------------------------- the guard


GUARDED = {
    "captum:Saliency": {}, "captum:IntegratedGradients": {"n_steps": 4},
    "captum:Occlusion": {"sliding_window_shapes": [3, 8, 8], "strides": [3, 8, 8]},
    "captum:LayerGradCam": {"relu_attributions": True}, "captum:GuidedGradCam": {},
    "captum:LayerConductance": {"n_steps": 4}, "gradcam:GradCAMPlusPlus": {},
    "gradcam:AblationCAM": {}, "gradcam:FullGrad": {}, "gradcam:EigenCAM": {},
}


@pytest.mark.parametrize("name", list(GUARDED))
def test_guard_holds_for_adapter_methods(name, tiny_cnn, x):
    pytest.importorskip("captum.attr" if name.startswith("captum") else "pytorch_grad_cam")
    model = tiny_cnn
    model.train()
    for param in model.classifier.parameters():
        param.requires_grad_(True)
    before = (state_hash(model), [m.training for m in model.modules()],
              [p.requires_grad for p in model.parameters()], _hook_counts(model))
    x_copy = x.clone()
    maps = harness.saliency(name, model, x, TARGET, **GUARDED[name])
    assert maps.shape == (3, 16, 16) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert torch.equal(harness.saliency(name, model, x, TARGET, **GUARDED[name]), maps)
    assert torch.equal(x, x_copy) and not x.requires_grad
    after = (state_hash(model), [m.training for m in model.modules()],
             [p.requires_grad for p in model.parameters()], _hook_counts(model))
    assert after == before, "model unchanged: weights, train flags, requires_grad, hooks"
    assert all(p.grad is None for p in model.parameters())


def test_a_failing_cam_call_leaves_no_hook_and_keeps_its_error(tiny_cnn, x):
    """ShapleyCAM on a layer with a linear head fails; pytorch-grad-cam's own release then fails
    too (it detaches stored views in place), which hid the real error and left its hooks."""
    pytest.importorskip("pytorch_grad_cam")
    before = _hook_counts(tiny_cnn)
    with pytest.raises(RuntimeError, match="does not require grad"):
        harness.saliency("gradcam:ShapleyCAM", tiny_cnn, x, TARGET, layer="pool")
    assert _hook_counts(tiny_cnn) == before
    maps = harness.saliency("gradcam:GradCAM", tiny_cnn, x, TARGET, layer="features.3")
    assert torch.isfinite(maps).all() and _hook_counts(tiny_cnn) == before


def test_guard_catches_a_leaked_library_hook(tmp_path, monkeypatch, fresh_cache, tiny_cnn, x):
    """A plug-in that builds a pytorch-grad-cam object and never releases it leaves hooks."""
    pytest.importorskip("pytorch_grad_cam")
    (tmp_path / "leaky_plugin_mod.py").write_text(textwrap.dedent("""
        import torch
        from pytorch_grad_cam import GradCAM
        KEEP = []

        def leaky(model, x, target):
            KEEP.append(GradCAM(model=model, target_layers=[model.features[3]]))
            return torch.zeros(x.shape[0], *x.shape[2:])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(harness.MethodError, match="method 'leaky_plugin_mod:leaky' left a hook on "
                                                  "features"):
        harness.saliency("leaky_plugin_mod:leaky", tiny_cnn, x, TARGET)
    for cam in sys.modules["leaky_plugin_mod"].KEEP:
        cam.__exit__(None, None, None)


def test_non_finite_maps_are_refused(tmp_path, monkeypatch, fresh_cache, tiny_cnn, x):
    (tmp_path / "nan_plugin_mod.py").write_text(textwrap.dedent("""
        import torch

        def nan_map(model, x, target):  # NaN in the map of an image whose pixel (0, 0) is 9
            maps = torch.zeros(x.shape[0], *x.shape[2:])
            maps[x[:, 0, 0, 0] == 9, 2, 3] = float("nan")
            return maps
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "nan_plugin_mod:nan_map"
    x = x.clone()
    x[1, 0, 0, 0] = 9
    with pytest.raises(NonFiniteMapError, match=r"'nan_plugin_mod:nan_map' gave a NaN/inf map "
                                                r"for image #1 of its batch"):
        harness.saliency(name, tiny_cnn, x, TARGET)
    # batched: the position in x; in a unit of the runner: the image's id (a ValueError)
    with pytest.raises(ValueError, match=r"NaN/inf map for image #3$"):
        harness.methods.saliency_batched(name, tiny_cnn, x[[0, 2, 0, 1]], 0, batch_size=2)
    unit = Unit(tiny_cnn, x[[0, 2, 1]], TARGET, ("a", "b", "c"), name, batch_size=2)
    with pytest.raises(NonFiniteMapError, match=r"NaN/inf map for image c$"):
        _ = unit.maps


# ----------------------------------------------------------------------------- bad input


def test_unknown_classes_list_the_available_ones(fresh_cache):
    pytest.importorskip("captum.attr")
    pytest.importorskip("pytorch_grad_cam")
    with pytest.raises(UnknownNameError, match=r"'Occlusoin'.*captum:<Class>: .*Occlusion"):
        harness.get_method("captum:Occlusoin")
    with pytest.raises(UnknownNameError, match=r"NoiseTunnel.*smoothgrad"):
        harness.get_method("captum:NoiseTunnel")
    with pytest.raises(UnknownNameError, match=r"'GradCam'.*GradCAM, GradCAMElementWise"):
        harness.get_method("gradcam:GradCam")
    with pytest.raises(UnknownNameError, match=r"RandomCAM.*unseeded"):
        harness.get_method("gradcam:RandomCAM")
    with pytest.raises(ConfigError, match=r"methods\[0\].method: unknown Captum attribution "
                                          r"class 'Nope'.*Saliency"):
        from_dict({"methods": [{"name": "x", "method": "captum:Nope"}]})


@pytest.mark.parametrize("method, params, message", [
    ("captum:Occlusion", {}, r"params.sliding_window_shapes: captum:Occlusion needs attribute "
                             r"parameter 'sliding_window_shapes'"),
    ("captum:IntegratedGradients", {"n_step": 4},
     r"params.n_step: not a parameter of captum:IntegratedGradients; valid: init, attribute, "
     r".*n_steps"),
    ("captum:IntegratedGradients", {"attribute": {"target": 1}},
     r"params.attribute.target: set by the harness"),
    ("captum:IntegratedGradients", {"init": {"n_steps": 4}},
     r"params.init.n_steps: not a init parameter of captum:IntegratedGradients; valid: "
     r"multiply_by_inputs"),
    ("captum:Saliency", {"layer": "features"}, r"params.layer: captum:Saliency takes no layer"),
    ("captum:LayerGradCam", {"upsample": "linear"}, r"params.upsample: 'linear' is not one of"),
    ("captum:Saliency", {"reduce": "max"}, r"params.reduce: 'max' is not one of: abs_max"),
    ("gradcam:GradCAM", {"eigen_smoth": True},
     r"params.eigen_smoth: not a parameter of gradcam:GradCAM; valid: init, call, .*eigen_smooth"),
    ("gradcam:FullGrad", {"layer": "features"}, r"params.layer: gradcam:FullGrad takes no layer"),
    ("rise", {"masks": 10}, r"params.masks: unknown key. Did you mean 'n_masks'\? Valid keys "
                            r"here: n_masks, grid_size, p_keep, seed, batch_size"),
])
def test_adapter_params_are_checked_at_config_validation(method, params, message, fresh_cache):
    pytest.importorskip("captum.attr")
    pytest.importorskip("pytorch_grad_cam")
    with pytest.raises(ConfigError, match=r"methods\[0\]\." + message):
        from_dict({"methods": [{"name": "m", "method": method, "params": params}]})


def _hide(monkeypatch, package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


@pytest.mark.parametrize("package, prefix, extra", [("captum", "captum:Saliency", "captum"),
                                                    ("pytorch_grad_cam", "gradcam:GradCAM",
                                                     "gradcam")])
def test_missing_library_names_the_extra(package, prefix, extra, monkeypatch, fresh_cache,
                                         capsys):
    _hide(monkeypatch, package)
    hint = rf"pip install -e '\.\[{extra}\]'"
    with pytest.raises(MissingDependencyError, match=hint):
        harness.get_method(prefix)
    with pytest.raises(ConfigError, match=r"methods\[0\].method: .*" + hint):
        from_dict({"methods": [{"name": "m", "method": prefix}]})
    from harness.cli import main

    assert main(["list", "methods"]) == 0
    assert f"is not installed: pip install -e '.[{extra}]'" in capsys.readouterr().out


def test_list_methods_shows_the_families(capsys):
    pytest.importorskip("captum.attr")
    pytest.importorskip("pytorch_grad_cam")
    from harness.cli import main

    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "captum:<Class>" in out and "Occlusion" in out and "LayerGradCam" in out
    assert "gradcam:<Class>" in out and "GradCAMPlusPlus" in out and "rise" in out
    assert "package.module:function" in out


# ----------------------------------------------------------------------------- plug-ins


PLUGIN = '''
import torch


def centre_weight(model, x, target, *, power: float = 1.0):
    """Distance-to-border map raised to ``power`` (ignores the model)."""
    rows = torch.arange(x.shape[2], dtype=x.dtype)
    cols = torch.arange(x.shape[3], dtype=x.dtype)
    border = torch.minimum(torch.minimum(rows, rows.flip(0)).view(-1, 1),
                           torch.minimum(cols, cols.flip(0)).view(1, -1))
    return (border ** power).expand(x.shape[0], -1, -1).clone()


def needs_scale(model, x, target, *, scale):
    return torch.ones(x.shape[0], *x.shape[2:]) * scale


def two_args(model, x):
    return x[:, 0]


NOT_A_FUNCTION = 3
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch, fresh_cache) -> str:
    (tmp_path / "harness_test_plugin_mod.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "harness_test_plugin_mod", raising=False)
    return "harness_test_plugin_mod"


def test_plugin_by_import_path(plugin_module, tiny_cnn, x):
    name = f"{plugin_module}:centre_weight"
    maps = harness.saliency(name, tiny_cnn, x, TARGET, power=2.0)
    assert maps.shape == (3, 16, 16)
    assert float(maps[0, 7, 7]) == 49.0 and float(maps[0, 0, 5]) == 0.0
    method = harness.get_method(name)
    assert method.origin == f"plug-in {name}" and "Distance-to-border" in method.summary
    assert [f.name for f in __import__("dataclasses").fields(method.settings)] == ["power"]
    config = from_dict({"methods": [{"name": "mine", "method": name, "params": {"power": 2.0}}],
                        "metrics": {"deletion": {"step": 64}}})
    assert config.methods[0].registry_name == name
    with pytest.raises(ConfigError, match=r"methods\[0\].params.powr: unknown key. Did you mean "
                                          r"'power'\? Valid keys here: power"):
        from_dict({"methods": [{"name": "mine", "method": name, "params": {"powr": 2}}]})
    with pytest.raises(ConfigError, match=r"methods\[0\].params.scale: missing required key"):
        from_dict({"methods": [{"name": "m", "method": f"{plugin_module}:needs_scale"}]})
    # composition: a wrapper of a plug-in
    blurred = harness.saliency("blurred", tiny_cnn, x, TARGET, base=name,
                               base_params={"power": 2.0}, sigma=1.0)
    expected = gaussian_filter(maps.double().numpy(), sigma=(0, 1.0, 1.0), mode="reflect")
    torch.testing.assert_close(blurred.double(), torch.from_numpy(expected), rtol=1e-6,
                               atol=1e-6)


def test_cli_params_of_plugins_and_adapters(plugin_module, monkeypatch, tmp_path, capsys):
    """``--param`` finds the method of a dotted import path; the checks of a config apply,
    before any model is loaded (also main's type check by annotation)."""
    import harness.cli
    from harness.cli import main, method_params

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was named")

    monkeypatch.setattr(harness.cli, "load_model", forbidden)
    name = f"{plugin_module}:centre_weight"
    assert method_params([name, "vanilla"], [f"{name}.power=2", "vanilla.reduce=abs_sum"]) == {
        name: {"power": 2}, "vanilla": {"reduce": "abs_sum"}}
    out = str(tmp_path / "x.png")
    assert main(["saliency", "--methods", f"vanilla,{name}", "--param", f"{name}.powr=2",
                 "--out", out]) == 2
    assert f"--param {name}.powr: unknown key. Did you mean 'power'? Valid keys here: power" in \
        capsys.readouterr().err
    assert main(["saliency", "--methods", name, "--param", f"{name}.power=abc",
                 "--out", out]) == 2
    assert f"--param {name}.power: expected float, got 'abc'" in capsys.readouterr().err
    if importlib.util.find_spec("captum") is not None:
        assert main(["saliency", "--methods", "captum:Occlusion", "--out", out]) == 2
        assert "--param captum:Occlusion.sliding_window_shapes: captum:Occlusion needs" in \
            capsys.readouterr().err


@pytest.mark.parametrize("path, message", [
    ("no_such_pkg_for_harness.saliency:fn", r"cannot import module 'no_such_pkg_for_harness."
                                            r"saliency': ModuleNotFoundError"),
    ("{mod}:missing", r"module '{mod}' has no attribute 'missing'; its public callables: "
                      r"centre_weight, needs_scale, two_args"),
    ("{mod}:two_args", r"signature \(model, x\) does not take \(model, x, target\)"),
    ("{mod}:NOT_A_FUNCTION", r"int object is not callable"),
    ("{mod}", r"unknown method"),
])
def test_bad_plugins_fail_at_config_validation(path, message, plugin_module, monkeypatch):
    import harness.models

    def forbidden(*args, **kwargs):
        raise AssertionError("no model is loaded for an invalid config")

    monkeypatch.setattr(harness.models, "load_model", forbidden)
    path, message = path.format(mod=plugin_module), message.format(mod=plugin_module)
    with pytest.raises(ConfigError, match=r"methods\[1\].method: .*" + message):
        from_dict({"methods": ["vanilla", {"name": "mine", "method": path}]})
    if ":" in path:
        with pytest.raises(PluginError):
            harness.get_method(path)


def _entry_point_dist(root, name: str, value: str) -> None:
    info = root / "harness_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-demo-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(f"[harness.methods]\n{name} = {value}\n")


def test_plugin_by_entry_point(tmp_path, monkeypatch, fresh_cache, tiny_cnn, x, capsys):
    (tmp_path / "harness_demo_plugin.py").write_text(PLUGIN)
    _entry_point_dist(tmp_path, "demo_centre", "harness_demo_plugin:centre_weight")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "demo_centre" in harness.list_methods()
    maps = harness.saliency("demo_centre", tiny_cnn, x, TARGET, power=1.0)
    assert float(maps[0, 7, 7]) == 7.0
    assert "entry point demo_centre" in harness.get_method("demo_centre").citation
    config = from_dict({"methods": ["vanilla", "demo_centre"], "metrics": {"sparseness": {}}})
    assert [m.registry_name for m in config.methods] == ["vanilla", "demo_centre"]
    from harness.cli import main

    assert main(["list", "methods"]) == 0
    assert "demo_centre" in capsys.readouterr().out


def test_entry_point_that_does_not_load(tmp_path, monkeypatch, fresh_cache):
    _entry_point_dist(tmp_path, "demo_broken", "harness_missing_module_xyz:fn")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"methods\[0\].name: entry point demo_broken = "
                                          r"harness_missing_module_xyz:fn .*does not load"):
        from_dict({"methods": ["demo_broken"]})


# ----------------------------------------------------------------------------- RISE


def reference_masks(grids: torch.Tensor, shifts: torch.Tensor, size) -> torch.Tensor:
    """RISE.generate_masks' loop (eclique/RISE explanations.py), with given grids and shifts."""
    from skimage.transform import resize

    n_masks, s, _ = grids.shape
    cell_size = np.ceil(np.array(size) / s)
    up_size = (s + 1) * cell_size
    masks = np.empty((n_masks, *size))
    for i in range(n_masks):
        x, y = int(shifts[i, 0]), int(shifts[i, 1])
        masks[i, :, :] = resize(grids[i].numpy().astype("float32"), up_size, order=1,
                                mode="reflect", anti_aliasing=False)[x:x + size[0], y:y + size[1]]
    return torch.from_numpy(masks.reshape(-1, 1, *size)).float()


def reference_rise(model, x, masks, p1, gpu_batch):
    """RISE.forward for each image (batch size 1, as the notebook), the model wrapped in
    nn.Softmax as in the notebooks: ``[B, classes, H, W]``."""
    black_box = nn.Sequential(model, nn.Softmax(dim=1))
    n_masks, _, height, width = masks.shape
    explanations = []
    with torch.no_grad():
        for image in x:
            stack = torch.mul(masks, image[None].data)
            p = []
            for i in range(0, n_masks, gpu_batch):
                p.append(black_box(stack[i:min(i + gpu_batch, n_masks)]))
            p = torch.cat(p)
            sal = torch.matmul(p.data.transpose(0, 1), masks.view(n_masks, height * width))
            explanations.append(sal.view((p.size(1), height, width)) / n_masks / p1)
    return torch.stack(explanations)


@pytest.mark.parametrize("size, grid_size", [((16, 16), 3), ((12, 20), 4), ((224, 224), 7),
                                             ((9, 5), 1)])
def test_rise_masks_equal_skimage_resize_and_crop(size, grid_size):
    grids, shifts = rise_grids(12, grid_size, 0.5, size, seed=5)
    ours = rise_masks(grids, shifts, size)
    torch.testing.assert_close(ours, reference_masks(grids, shifts, size)[:, 0], rtol=0,
                               atol=1e-6)
    assert float(ours.min()) >= 0 and float(ours.max()) <= 1
    assert upsample_matrix(grid_size, 3 * grid_size).sum(dim=1).allclose(
        torch.ones(3 * grid_size, dtype=torch.float64))


@pytest.mark.parametrize("size, grid_size, p_keep, batch_size", [((16, 16), 3, 0.5, 7),
                                                                 ((12, 20), 4, 0.3, 64)])
def test_rise_equals_the_reference_loop(size, grid_size, p_keep, batch_size, tiny_cnn):
    x = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(2))
    n_masks = 40
    grids, shifts = rise_grids(n_masks, grid_size, p_keep, size, seed=0)
    reference = reference_rise(tiny_cnn, x, reference_masks(grids, shifts, size), p_keep, 16)
    ours = harness.saliency("rise", tiny_cnn, x, TARGET, n_masks=n_masks, grid_size=grid_size,
                            p_keep=p_keep, seed=0, batch_size=batch_size)
    torch.testing.assert_close(ours, reference[torch.arange(3), TARGET], rtol=1e-5, atol=1e-7)


def test_rise_is_independent_of_batch_and_chunks(tiny_cnn, x):
    params = {"n_masks": 30, "grid_size": 4, "seed": 1}
    together = harness.saliency("rise", tiny_cnn, x, TARGET, batch_size=8, **params)
    for i in range(3):
        alone = harness.saliency("rise", tiny_cnn, x[i:i + 1], TARGET[i:i + 1], batch_size=5,
                                 **params)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-6, atol=1e-8)
    assert torch.equal(together, harness.saliency("rise", tiny_cnn, x, TARGET, batch_size=8,
                                                  **params))
    other_seed = harness.saliency("rise", tiny_cnn, x, TARGET, **{**params, "seed": 2})
    assert not torch.allclose(other_seed, together)


class RegionModel(nn.Module):
    """Class 0's logit is 6 x the mean of channel 0 over rows 0-5, cols 0-5; class 1's is 0."""

    def forward(self, x):
        region = x[:, 0, :6, :6].mean(dim=(1, 2)) * 6
        return torch.stack([region, torch.zeros_like(region)], dim=1)


def test_rise_finds_the_region_the_model_uses():
    model = RegionModel()
    x = torch.ones(1, 3, 16, 16)
    maps = harness.saliency("rise", model, x, [0], n_masks=400, grid_size=4)
    inside, far = maps[0, :6, :6].mean(), maps[0, 10:, 10:].mean()
    assert float(inside) > float(far) + 0.05
    # the other class: masking the region helps it, so the region is least salient
    other = harness.saliency("rise", model, x, [1], n_masks=400, grid_size=4)
    assert float(other[0, :6, :6].mean()) < float(other[0, 10:, 10:].mean()) - 0.02


def test_rise_bad_parameters(tiny_cnn, x):
    with pytest.raises(ValueError, match=r"p_keep: must be a finite number > 0 and <= 1, got 0"):
        harness.saliency("rise", tiny_cnn, x, TARGET, p_keep=0, n_masks=4)
    with pytest.raises(ValueError, match="params.n_masks: must be an integer >= 1, got 0"):
        harness.saliency("rise", tiny_cnn, x, TARGET, n_masks=0)
    with pytest.raises(ValueError, match="target 7 of image #0 is out of range"):
        harness.saliency("rise", tiny_cnn, x, [7, 0, 0], n_masks=4)


# ----------------------------------------------------------------------------- composition


def test_smoothgrad_of_captum_saliency_equals_smoothgrad_of_vanilla(tiny_cnn, x):
    pytest.importorskip("captum.attr")
    params = {"n": 3, "noise": 0.2, "seed": 4}
    ours = harness.saliency("smoothgrad", tiny_cnn, x, TARGET, base="vanilla", **params)
    via_captum = harness.saliency("smoothgrad", tiny_cnn, x, TARGET, base="captum:Saliency",
                                  base_params={"abs": False}, **params)
    torch.testing.assert_close(via_captum, ours, rtol=1e-5, atol=1e-7)
    config = from_dict({"methods": [{"name": "sg", "method": "smoothgrad", "params": {
        "base": "captum:Saliency", "base_params": {"abs": False}, "n": 3}}],
        "metrics": {"sparseness": {}}})
    assert config.methods[0].params["base"] == "captum:Saliency"
    with pytest.raises(ConfigError, match=r"methods\[0\].params.base_params.abs_: not a "
                                          r"parameter of captum:Saliency"):
        from_dict({"methods": [{"name": "sg", "method": "smoothgrad", "params": {
            "base": "captum:Saliency", "base_params": {"abs_": False}}}]})


def test_blurred_gradcam_plusplus_and_smoothgrad_of_a_cam(tiny_cnn, x):
    pytest.importorskip("pytorch_grad_cam")
    base = harness.saliency("gradcam:GradCAMPlusPlus", tiny_cnn, x, TARGET)
    blurred = harness.saliency("blurred", tiny_cnn, x, TARGET, base="gradcam:GradCAMPlusPlus",
                               sigma=1.5)
    expected = gaussian_filter(base.double().numpy(), sigma=(0, 1.5, 1.5), mode="reflect")
    torch.testing.assert_close(blurred.double(), torch.from_numpy(expected), rtol=1e-5,
                               atol=1e-6)
    smooth = harness.saliency("smoothgrad", tiny_cnn, x, TARGET, base="gradcam:GradCAM", n=2,
                              average="map")
    assert smooth.shape == (3, 16, 16) and torch.isfinite(smooth).all()
    with pytest.raises(ConfigError, match=r"methods\[0\].params.base: unknown pytorch-grad-cam "
                                          r"class 'GradCAMPP'"):
        from_dict({"methods": [{"name": "b", "method": "blurred",
                                "params": {"base": "gradcam:GradCAMPP"}}]})


# ----------------------------------------------------------------------------- the runner


@pytest.mark.slow
def test_runner_with_rise_and_adapter_methods(tmp_path):
    """End to end (tiny): method params may hold the method's own batch_size; adapter names
    with ':' go through the runner, the randomization check and the kept figure maps."""
    pytest.importorskip("captum.attr")
    pytest.importorskip("pytorch_grad_cam")
    from harness.runner import run

    config = from_dict({
        "name": "eco", "model": {"name": "squeezenet1_1", "weights": "random"},
        "data": {"name": "samples", "options": {"names": ["chelsea", "coffee"]}},
        "batch_size": 2, "tracking": {"enabled": False}, "output_dir": str(tmp_path / "run"),
        "methods": [{"name": "rise", "params": {"n_masks": 6, "batch_size": 4}},
                    {"name": "sal", "method": "captum:Saliency"},
                    {"name": "cam", "method": "gradcam:GradCAM"}],
        "metrics": {"deletion": {"step": 12544},
                    "model_randomization": {"blocks": ["conv10"], "measures": ["spearman_abs"]}},
    })
    records = list(run(config, progress=False))
    assert len(records) == 3 * 2 * 2  # methods x images x (deletion, one randomization step)
    assert {r["method"] for r in records} == {"rise", "sal", "cam"}
    assert all(np.isfinite(r["value"]) for r in records if r["value"] is not None)


@pytest.mark.slow
def test_a_method_batch_size_reaches_the_method_through_every_runner_path(tmp_path, monkeypatch):
    """``integrated_gradients`` with its own ``batch_size`` (2 path points per forward) through the
    runner: the maps of the metric registry's Unit (plain and signed), model randomization under
    both map normalisations (raw attributions and maps), max-sensitivity, the random-logit test
    and the figure's maps. Every gradient is taken on 2 points (the method's default,
    ``batch_size=16``, would take all 4 at once): the method's ``batch_size`` reached it
    everywhere and never collided with the harness's ``batch_size``."""
    import harness.methods.gradients as gradients
    from harness.api import run as run_experiment

    chunks: list[int] = []
    original = gradients.input_gradient

    def counted(model, points, target):
        chunks.append(points.shape[0])
        return original(model, points, target)

    monkeypatch.setattr(gradients, "input_gradient", counted)
    ig = {"name": "ig", "method": "integrated_gradients",
          "params": {"n_steps": 4, "batch_size": 2}}

    def raw(folder: str, metrics: dict) -> dict:
        return {"name": "ig_batch", "model": {"name": "squeezenet1_1", "weights": "random"},
                "data": {"name": "samples", "options": {"names": ["chelsea"]}},
                "batch_size": 1, "tracking": {"enabled": False}, "figure_images": 1,
                "output_dir": str(tmp_path / folder), "methods": [ig], "metrics": metrics}

    # no metric needs the unit's maps: the figure computes them (harness.report.figure_inputs)
    first = from_dict(raw("first", {
        "model_randomization": {"blocks": ["conv10"], "measures": ["spearman_abs", "ssim"]},
        "max_sensitivity": {"n_samples": 1}}))
    result = run_experiment(first, progress=False, log=lambda *a: None)
    summary = result.table
    assert set(summary["metric"]) == {"rand_spearman_abs", "rand_ssim", "max_sensitivity"}
    assert list((tmp_path / "first" / "figures").glob("*.png")), "the saliency figure was drawn"
    assert chunks and max(chunks) == 2
    chunks.clear()
    second = from_dict(raw("second", {
        "model_randomization": {"blocks": ["conv10"], "measures": ["spearman_signed"],
                                "map_normalisation": "method"},
        "random_logit": {"measure": "ssim"},
        "faithfulness_correlation": {"n_subsets": 3, "subset_size": 3136}}))
    from harness.runner import run

    records = list(run(second, progress=False))
    assert {r["metric"] for r in records} == {"model_randomization", "random_logit",
                                              "faithfulness_correlation"}
    assert all(np.isfinite(r["value"]) for r in records if r["value"] is not None)
    assert chunks and max(chunks) == 2


def test_method_params_as_a_mapping_or_keywords_but_not_both(tiny_cnn, x):
    from harness.methods import raw_attribution_batched, saliency_batched

    params = {"n_steps": 4, "batch_size": 2}
    maps = saliency_batched("integrated_gradients", tiny_cnn, x, TARGET, batch_size=2,
                            method_params=params)
    torch.testing.assert_close(maps, harness.saliency("integrated_gradients", tiny_cnn, x,
                                                      TARGET, **params))
    raw = raw_attribution_batched("integrated_gradients", tiny_cnn, x, TARGET, batch_size=1,
                                  method_params=params)
    assert raw.shape == x.shape
    with pytest.raises(ValueError, match="method parameter 'n_steps' given both in "
                                         "method_params and as a keyword"):
        saliency_batched("integrated_gradients", tiny_cnn, x, TARGET, n_steps=2,
                         method_params=params)
    with pytest.raises(ValueError, match="method_params must be a mapping"):
        raw_attribution_batched("vanilla", tiny_cnn, x, TARGET, method_params=[("n", 1)])
