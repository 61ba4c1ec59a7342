"""Shared fixtures: analytic and tiny models, the real offline pretrained model, sample images."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("MPLBACKEND", "Agg")

import harness  # noqa: E402
from harness.models import attach_info  # noqa: E402


class LinearModel(nn.Module):
    """score_k(x) = <W_k, x> + b_k: the vanilla map is max_c |W[target, c, h, w]| exactly."""

    def __init__(self, n_classes: int = 4, size: tuple[int, int] = (8, 8), seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(n_classes, 3, *size, generator=generator))
        self.bias = nn.Parameter(torch.randn(n_classes, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", x, self.weight) + self.bias


class TinyCNN(nn.Module):
    """conv-BN-ReLU(inplace)-conv-ReLU -> global average pool -> linear."""

    def __init__(self, n_classes: int = 5, width: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, n_classes)
        with torch.no_grad():  # non-trivial BN statistics
            self.features[1].running_mean.uniform_(-0.2, 0.2)
            self.features[1].running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def state_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode() + value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def linear_model() -> nn.Module:
    return harness.models.prepare(attach_info(LinearModel(), num_classes=4, input_size=8,
                                              cam_layer="weight"))


@pytest.fixture
def tiny_cnn() -> nn.Module:
    return harness.models.prepare(attach_info(TinyCNN(), num_classes=5, input_size=16))


@pytest.fixture(scope="session")
def lite0() -> nn.Module:
    return harness.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def sample_batch(lite0):
    """Two real photos (chelsea, coffee) preprocessed for EfficientNet-Lite0, with targets."""
    data = harness.load_dataset("samples", names=["chelsea", "coffee"])
    x = harness.preprocess([s.load() for s in data], lite0.harness_info)
    target = harness.resolve_targets(lite0, x, [s.label for s in data], data.ids)
    return x, target


@harness.register_model("test_tiny_cnn")
def _test_tiny_cnn(*, weights: str = "random", checkpoint=None, seed: int = 0,
                   progress: bool = True) -> nn.Module:
    """A 16 x 16-input CNN with random weights, for fast end-to-end runs in the tests."""
    return attach_info(TinyCNN(seed=seed), name="test_tiny_cnn", weights=f"random(seed={seed})",
                       num_classes=5, input_size=16)


def tiny_run(folder, **changes) -> dict:
    """A config of a few seconds: the tiny CNN on three photos (16 x 16), two methods."""
    raw = {"name": "tiny-run", "model": {"name": "test_tiny_cnn"},
           "data": {"name": "samples", "options": {"names": ["chelsea", "coffee", "rocket"]}},
           "batch_size": 2, "methods": ["vanilla", "sobel"],
           "metrics": {"deletion": {"step": 32}}, "figure_images": 1,
           "output_dir": str(folder / "run"), "tracking": {"enabled": False}}
    raw.update(changes)
    return raw
