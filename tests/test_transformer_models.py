"""Vision transformers as models: metadata (layout, CAM layer, blocks), layout-aware Grad-CAM
and the pytorch-grad-cam adapter, cascading randomization one encoder layer at a time, and
timm's models by name."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

import harness
from harness.layouts import Layout
from harness.models import WeightsUnavailableError, with_info
from harness.sanity import model_randomization
from harness.sanity import randomization as randomization_module
from tests.conftest import TinyCNN, state_hash
from tests.tiny_transformers import (
    images,
    tiny_maxvit,
    tiny_swin,
    tiny_timm_swin,
    tiny_timm_vit,
    tiny_vit,
)

timm = pytest.importorskip("timm")

TARGET = torch.tensor([0, 3, 1])


# ----------------------------------------------------------------------------- metadata


def covered_once(model, blocks) -> None:
    """Every parameter of ``model`` belongs to exactly one block."""
    names = [name for name, _ in model.named_parameters()]
    for name in names:
        owners = [b.label for b in blocks for path in b.modules
                  if name == path or name.startswith(path + ".")]
        assert len(owners) == 1, (name, owners)


def test_tiny_transformers_are_described_like_the_library_models():
    vit = tiny_vit(layers=3)
    info = vit.harness_info
    assert info.layout == Layout("tokens", prefix_tokens=1, grid=(4, 4))
    assert info.cam_layer == "encoder.layers.encoder_layer_2.ln_1" and info.patch_size == 8
    assert info.attention_layers == tuple(f"encoder.layers.encoder_layer_{i}.self_attention"
                                          for i in range(3))
    assert [b.label for b in info.blocks] == ["head", "block2", "block1", "block0", "embedding"]
    assert info.blocks[0].modules == ("encoder.ln", "heads")
    assert info.blocks[-1].modules == ("conv_proj", "class_token", "encoder.pos_embedding")
    covered_once(vit, info.blocks)

    deit = tiny_timm_vit(distilled=True).harness_info
    assert deit.layout == Layout("tokens", prefix_tokens=2, grid=(4, 4))
    assert deit.cam_layer == "blocks.1.norm1" and deit.attention_layers == ("blocks.0.attn",
                                                                           "blocks.1.attn")
    assert deit.blocks[0].modules == ("norm", "head", "head_dist")
    assert deit.blocks[-1].modules == ("patch_embed", "cls_token", "dist_token", "pos_embed")

    swin = tiny_swin()
    assert swin.harness_info.layout == Layout("channels_last") and swin.harness_info.cam_layer == (
        "norm")
    assert [b.label for b in swin.harness_info.blocks] == [
        "head", "stage1.block1", "stage1.block0", "stage1.merge", "stage0.block1",
        "stage0.block0", "embedding"]
    covered_once(swin, swin.harness_info.blocks)
    for model in (tiny_timm_vit(distilled=True), tiny_timm_swin(), tiny_maxvit()):
        covered_once(model, model.harness_info.blocks)
    assert tiny_maxvit().harness_info.cam_layer == "blocks.1"
    assert tiny_timm_swin().harness_info.attention_layers == ()  # windowed: no class token


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_b_16", "swin_t", "swin_v2_t", "maxvit_t"])
def test_torchvision_transformers_load_with_their_metadata(name):
    model = harness.load_model(name, weights="random")
    info = model.harness_info
    covered_once(model, info.blocks)
    model.get_submodule(info.cam_layer)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    assert info.interpolation == weights.transforms().interpolation.value
    x = torch.randn(1, 3, info.input_size, info.input_size)
    maps = harness.saliency("gradcam", model, x, [1])
    assert maps.shape == (1, info.input_size, info.input_size) and torch.isfinite(maps).all()
    if name == "vit_b_16":
        assert len(info.blocks) == 14 and info.layout.grid == (14, 14) and info.patch_size == 16


def test_cnn_metadata_is_unchanged():
    model = harness.load_model("resnet18", weights="random")
    info = model.harness_info
    assert (info.layout, info.patch_size, info.attention_layers, info.interpolation) == (
        None, None, (), "bilinear")


# ----------------------------------------------------------------------------- layout-aware CAMs


def vit_reshape(prefix: int, height: int = 4, width: int = 4):
    """pytorch-grad-cam's reshape_transform for ViT (usage_examples/vit_example.py), with the
    prefix-token count as a parameter (1 there: the class token)."""
    def reshape_transform(tensor):
        result = tensor[:, prefix:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)
    return reshape_transform


def swin_reshape(tensor):
    """The last step of pytorch-grad-cam's Swin reshape_transform (usage_examples/
    swinT_example.py) on the channels-last maps that torchvision's and timm's Swin output."""
    return tensor.transpose(2, 3).transpose(1, 2)


def direct_gradcam(model, x, target, layer, reshape):
    """Grad-CAM written out: the layer's output and its gradient reshaped to [N, C, h, w], weights
    = spatial mean of the gradient, ReLU of the weighted sum, bilinear upsampling."""
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(
        lambda module, inputs, output: store.update(output=output))
    try:
        inputs = x.clone().requires_grad_(True)
        with torch.enable_grad():
            score = model(inputs).gather(1, target[:, None]).sum()
            (gradient,) = torch.autograd.grad(score, store["output"])
    finally:
        handle.remove()
    activation, gradient = reshape(store["output"].detach()), reshape(gradient)
    cam = (gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True)
    return F.interpolate(cam.clamp(min=0), size=x.shape[2:], mode="bilinear",
                         align_corners=False)[:, 0]


LAYOUT_CASES = {
    "vit_class_token": (tiny_vit, vit_reshape(1)),
    "timm_vit_class_token": (tiny_timm_vit, vit_reshape(1)),
    "deit_class_and_distillation_tokens": (lambda: tiny_timm_vit(distilled=True), vit_reshape(2)),
    "swin_channels_last": (tiny_swin, swin_reshape),
    "timm_swin_channels_last": (tiny_timm_swin, swin_reshape),
    "cnn": (lambda: harness.models.prepare(harness.models.attach_info(
        TinyCNN(), num_classes=5, input_size=32)), lambda tensor: tensor),
}


@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_gradcam_equals_a_direct_computation_on_the_reshaped_activations(case):
    build, reshape = LAYOUT_CASES[case]
    model = build()
    x = images()
    expected = direct_gradcam(model, x, TARGET, model.harness_info.cam_layer, reshape)
    maps = harness.saliency("gradcam", model, x, TARGET)
    assert float(expected.max()) > 0  # not a degenerate all-zero case
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [c for c in LAYOUT_CASES if c != "cnn"])
def test_pytorch_grad_cam_with_the_matching_reshape_transform_equals_the_adapter(case):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    build, reshape = LAYOUT_CASES[case]
    model = build()
    x = images()
    layer = model.get_submodule(model.harness_info.cam_layer)
    inputs = x.clone().requires_grad_(True)
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        expected = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t))
                                                     for t in TARGET])
    ours = harness.saliency("gradcam:GradCAM", model, x, TARGET)
    torch.testing.assert_close(ours, torch.as_tensor(expected), rtol=1e-5, atol=1e-6)


def test_an_unknown_layout_is_refused_never_guessed():
    x = images()
    vit = with_info(tiny_vit(), layout=None)  # tokens [N, 17, 32] with no declared layout
    for method in ("gradcam", "gradcam:GradCAM"):
        with pytest.raises(ValueError, match=r"layer 'encoder.layers.encoder_layer_1.ln_1' "
                                             r"outputs \(3, 17, 32\).*declares no layout.*"
                                             r"Layout\('tokens', prefix_tokens=1"):
            harness.saliency(method, vit, x, TARGET)
    # swin_t's silent failure: channels-last [N, 4, 4, 32] read as [N, C, h, w] is a 4 x 32 map
    swin = with_info(tiny_swin(), layout=None)
    with pytest.raises(ValueError, match=r"layer 'norm' outputs \(3, 4, 4, 32\); read as \[N, C, "
                                         r"h, w\] that is a 4 x 32 map of a 32 x 32 image"):
        harness.saliency("gradcam", swin, x, TARGET)
    # a declared layout that does not fit the output is refused too
    wrong = with_info(tiny_vit(), layout=Layout("tokens", prefix_tokens=2, grid=(4, 4)))
    with pytest.raises(ValueError, match="17 tokens, but the model's layout has 2 prefix tokens"):
        harness.saliency("gradcam", wrong, x, TARGET)
    with pytest.raises(ValueError, match="Captum reads the layer's output as"):
        harness.saliency("captum:LayerGradCam", tiny_vit(), x, TARGET)
    with pytest.raises(ValueError, match="grid: a tokens layout needs the patch grid"):
        Layout("tokens", prefix_tokens=1)
    with pytest.raises(ValueError, match="kind: 'nhwc' is not one of"):
        Layout("nhwc")


def test_other_layers_of_a_transformer_follow_its_layout():
    # any token layer of the ViT reads through the same layout; the conv patch embedding is a map
    vit = tiny_vit(layers=3)
    x = images()
    layer = "encoder.layers.encoder_layer_1.ln_1"
    expected = direct_gradcam(vit, x, TARGET, layer, vit_reshape(1))
    torch.testing.assert_close(harness.saliency("gradcam", vit, x, TARGET, layer=layer),
                               expected, rtol=1e-5, atol=1e-6)
    conv = harness.saliency("gradcam", vit, x, TARGET, layer="conv_proj")
    torch.testing.assert_close(conv, direct_gradcam(vit, x, TARGET, "conv_proj", lambda t: t),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- randomization


def changed_parameters(original, randomized) -> set[str]:
    before = dict(original.named_parameters())
    return {name for name, param in randomized.named_parameters()
            if not torch.equal(param, before[name])}


def parameters_of(model, block) -> set[str]:
    return {name for name, _ in model.named_parameters()
            if any(name == path or name.startswith(path + ".") for path in block.modules)}


@pytest.mark.parametrize("build", [lambda: tiny_vit(layers=4), lambda: tiny_timm_vit(layers=3),
                                   lambda: tiny_timm_vit(distilled=True, layers=3)])
def test_cascading_randomization_changes_exactly_one_more_encoder_layer_per_step(
        build, monkeypatch):
    model = build()
    blocks = model.harness_info.blocks
    seen = []
    original_models = randomization_module.randomized_models

    def spy(network, steps, **kwargs):
        for randomized in original_models(network, steps, **kwargs):
            seen.append(changed_parameters(model, randomized))  # before the next step reuses it
            yield randomized

    monkeypatch.setattr(randomization_module, "randomized_models", spy)
    fingerprint = state_hash(model)
    model_randomization(model, "vanilla", images(2), [0, 1], measures=("spearman_abs",))
    assert state_hash(model) == fingerprint
    assert len(seen) == len(blocks)
    previous: set[str] = set()
    for step, (block, changed) in enumerate(zip(blocks, seen, strict=True), start=1):
        assert changed - previous == parameters_of(model, block), (step, block.label)
        assert previous <= changed, step  # cascading: what was randomized stays randomized
        previous = changed
    assert previous == {name for name, _ in model.named_parameters()}
    labels = [block.label for block in blocks]
    layers = [label for label in labels if label.startswith("block")]
    assert labels == ["head", *layers, "embedding"] and layers == sorted(layers, reverse=True)


def test_attention_in_projection_and_embeddings_are_reinitialised_with_their_initialisers():
    vit = tiny_vit()
    blocks = vit.harness_info.blocks
    randomized = randomization_module.randomize(vit, blocks, seed=3)
    assert torch.equal(randomized.class_token, torch.zeros_like(vit.class_token))  # zeros
    attention = randomized.encoder.layers.encoder_layer_0.self_attention
    assert torch.equal(attention.in_proj_bias, torch.zeros_like(attention.in_proj_bias))
    bound = (6 / (attention.in_proj_weight.shape[0] + attention.in_proj_weight.shape[1])) ** 0.5
    assert float(attention.in_proj_weight.abs().max()) <= bound  # xavier-uniform
    again = randomization_module.randomize(vit, blocks, seed=3)
    assert state_hash(again) == state_hash(randomized)  # seeded


# ----------------------------------------------------------------------------- timm by name


@pytest.mark.slow
def test_timm_models_by_name_with_their_preprocessing():
    model = harness.load_model("timm:deit_tiny_patch16_224", weights="random", seed=2)
    info = model.harness_info
    assert info.name == "timm:deit_tiny_patch16_224" and info.weights == "random(seed=2)"
    assert info.mean == pytest.approx((0.485, 0.456, 0.406)) and info.input_size == 224
    assert info.resize_size == 248 and info.interpolation == "bicubic"  # 224 / crop_pct 0.9
    assert info.categories[281] == "tabby" and info.patch_size == 16
    assert info.layout == Layout("tokens", prefix_tokens=1, grid=(14, 14))
    again = harness.load_model("timm:deit_tiny_patch16_224", weights="random", seed=2)
    assert state_hash(again) == state_hash(model)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert "timm:deit_tiny_patch16_224" in harness.list_models("timm:deit_tiny*")
    cnn = harness.load_model("timm:resnet18", weights="random").harness_info
    assert cnn.cam_layer == "layer4" and cnn.layout is None and cnn.blocks[0].modules == ("fc",)


@pytest.mark.slow
def test_timm_names_weights_and_checkpoints(tmp_path):
    with pytest.raises(harness.UnknownNameError,
                       match="unknown timm model 'deit_tiny_patch16_22'.*Did you mean"):
        harness.load_model("timm:deit_tiny_patch16_22", weights="random")
    with pytest.raises(ValueError, match=r"unknown weights 'imagenet' for 'timm:vit_tiny_patch16_"
                                         r"224'; valid: default, random, augreg_in21k"):
        harness.load_model("timm:vit_tiny_patch16_224", weights="imagenet")
    reference = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    from safetensors.torch import save_file

    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    torch.save(reference.state_dict(), tmp_path / "model.pth")
    for name in ("model.safetensors", "model.pth"):
        model = harness.load_model("timm:deit_tiny_patch16_224", checkpoint=tmp_path / name)
        assert state_hash(model) == state_hash(reference)
        assert model.harness_info.weights == f"file:{(tmp_path / name).resolve()}"
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        harness.load_model("timm:resnet18", checkpoint=tmp_path / "model.pth")


def test_timm_weights_offline_name_the_repository_and_the_way_out(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache (test)")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
    monkeypatch.setattr(torch.hub, "urlopen", lambda *a, **k: (_ for _ in ()).throw(
        urllib.error.URLError("network is unreachable (test)")))
    with pytest.raises(WeightsUnavailableError) as raised:
        harness.load_model("timm:deit_tiny_patch16_224")
    message = str(raised.value)
    assert "timm/deit_tiny_patch16_224.fb_in1k" in message and "HF_HUB_OFFLINE=1" in message
    assert "checkpoint='/path/to/model.safetensors'" in message and "model.checkpoint" in message


def test_configs_accept_timm_names():
    from harness.config import ConfigError, from_dict

    raw = {"name": "t", "methods": ["rollout"], "metrics": {"deletion": {"step": 16}}}
    assert from_dict({**raw, "model": {"name": "timm:deit_tiny_patch16_224"}}).model.name == (
        "timm:deit_tiny_patch16_224")
    with pytest.raises(ConfigError, match=r"model.name: unknown timm model 'no_such_net'. Valid "
                                          r"timm models: .*\(\d+ in all\)"):
        from_dict({**raw, "model": {"name": "timm:no_such_net"}})
