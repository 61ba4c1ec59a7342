"""Model loading: torchvision weights API offline, checkpoints, the bundled EfficientNet-Lite0."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

import harness
from harness.models import WeightsUnavailableError, default_blocks, weights_fingerprint
from tests.conftest import state_hash

SQUEEZENET_FILE = "squeezenet1_1-b8a52dc0.pth"


@pytest.fixture
def offline(monkeypatch):
    """No network: torch.hub's download raises URLError as it does on an offline machine."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "urlopen", refuse)


def test_squeezenet_from_cached_file_in_torch_home(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url.endswith(SQUEEZENET_FILE)
    reference = torchvision.models.squeezenet1_1(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / SQUEEZENET_FILE)
    model = harness.load_model("squeezenet1_1")
    assert state_hash(model) == state_hash(reference)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    info = model.harness_info
    assert info.weights == "IMAGENET1K_V1"
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    assert info.input_size == 224 and info.resize_size == 224  # the seed's Resize(224)
    assert len(info.categories) == 1000 and info.categories[281] == "tabby"


def test_squeezenet_missing_file_error_says_how_to_fix(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as raised:
        harness.load_model("squeezenet1_1")
    message = str(raised.value)
    assert str(tmp_path / "hub" / "checkpoints" / SQUEEZENET_FILE) in message
    assert "https://download.pytorch.org/models/" + SQUEEZENET_FILE in message
    assert "checkpoint=" in message and "TORCH_HOME" in message


def test_checkpoint_option_and_bad_checkpoints(tmp_path):
    reference = torchvision.models.squeezenet1_1(weights=None)
    path = tmp_path / "my_weights.pth"
    torch.save(reference.state_dict(), path)
    model = harness.load_model("squeezenet1_1", checkpoint=path)
    assert state_hash(model) == state_hash(reference)
    assert model.harness_info.weights == f"file:{path.resolve()}"
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        harness.load_model("squeezenet1_1", checkpoint=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="junk.pth"):
        harness.load_model("squeezenet1_1", checkpoint=tmp_path / "junk.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        harness.load_model("squeezenet1_1", checkpoint=tmp_path / "other.pth")


def test_random_weights_only_when_asked_and_seeded():
    a = harness.load_model("squeezenet1_1", weights="random", seed=3)
    b = harness.load_model("squeezenet1_1", weights="random", seed=3)
    c = harness.load_model("squeezenet1_1", weights="random", seed=4)
    assert weights_fingerprint(a) == weights_fingerprint(b) != weights_fingerprint(c)
    assert a.harness_info.weights == "random(seed=3)"
    with pytest.raises(ValueError, match="valid: default, random, IMAGENET1K_V1"):
        harness.load_model("squeezenet1_1", weights="imagenet")


def test_squeezenet_block_order_matches_architecture():
    model = harness.load_model("squeezenet1_1", weights="random")
    blocks = model.harness_info.blocks
    assert [b.label for b in blocks] == ["conv10", "fire9", "fire8", "fire7", "fire6", "fire5",
                                         "fire4", "fire3", "fire2", "conv1"]
    conv10 = model.get_submodule(blocks[0].modules[0])
    assert isinstance(conv10, nn.Conv2d) and conv10.kernel_size == (1, 1)
    assert (conv10.in_channels, conv10.out_channels) == (512, 1000)
    fires = [model.get_submodule(b.modules[0]) for b in blocks[1:-1]]
    assert all(type(f).__name__ == "Fire" for f in fires)
    # squeeze planes of SqueezeNet 1.1: fire2..fire9 = 16, 16, 32, 32, 48, 48, 64, 64
    assert [f.squeeze.out_channels for f in reversed(fires)] == [16, 16, 32, 32, 48, 48, 64, 64]
    conv1 = model.get_submodule(blocks[-1].modules[0])
    assert isinstance(conv1, nn.Conv2d) and conv1.in_channels == 3 and conv1.stride == (2, 2)
    # the generic rule finds the same modules in the same order
    assert [b.modules for b in default_blocks(model)] == [b.modules for b in blocks]
    every_param = {name.rsplit(".", 1)[0] for name, _ in model.named_parameters()}
    covered = {p for b in blocks for p in b.modules}
    assert all(any(name == c or name.startswith(c + ".") for c in covered) for name in every_param)


def test_generic_torchvision_model_metadata():
    model = harness.load_model("resnet18", weights="random")
    info = model.harness_info
    assert info.cam_layer == "layer4" and info.resize_size == 256 and info.input_size == 224
    assert info.blocks[0].modules == ("fc",)
    assert info.blocks[-1].modules == ("conv1", "bn1")  # BN joins the conv before it
    assert {"squeezenet1_1", "efficientnet_lite0"} <= set(harness.list_models())
    assert harness.list_models("squeezenet*") == ["squeezenet1_0", "squeezenet1_1"]


def test_unknown_model_lists_valid_names():
    with pytest.raises(harness.UnknownNameError,
                       match="unknown model 'squeezenet11'.*Did you mean.*squeezenet1_1"):
        harness.load_model("squeezenet11")


@pytest.mark.slow
def test_efficientnet_lite0_classifies_offline_samples(lite0):
    data = harness.load_dataset("samples", names=["chelsea", "coffee"])
    x = harness.preprocess([s.load() for s in data], lite0.harness_info)
    with torch.inference_mode():
        top1 = lite0(x).argmax(1).tolist()
    categories = lite0.harness_info.categories
    cats = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert categories[top1[0]] in cats
    assert categories[top1[1]] == "espresso"
    info = lite0.harness_info
    assert info.weights == "efficientnet-lite0-57934424"
    assert [b.label for b in info.blocks][:3] == ["fc", "head", "block15"]
    assert info.blocks[-1].label == "stem"
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())
