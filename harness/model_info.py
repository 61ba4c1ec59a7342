"""What travels with a model: its ``ModelInfo`` (preprocessing, classes, randomization blocks,
the Grad-CAM layer and its layout), the generic rules that derive them, and the weights helpers
(local checkpoints loaded with ``weights_only=True``, torchvision's download with hash check)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from harness.errors import ConfigError, ModelError
from harness.layouts import Layout
from harness.registry import did_you_mean

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "LITE_MEAN", "LITE_STD", "Block", "ModelInfo",
    "WeightsUnavailableError", "default_blocks", "default_cam_layer", "get_module",
    "imagenet_categories", "model_info", "weights_fingerprint",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


@dataclass(frozen=True)
class Block:
    """A unit of model-parameter randomization: a label and the module paths it re-initialises."""

    label: str
    modules: tuple[str, ...]


@dataclass(frozen=True)
class ModelInfo:
    """Metadata that travels with a model.

    ``blocks`` are ordered from the logits down (the cascading-randomization order of Adebayo et al.
    2018). ``weights`` says which weights were loaded (an enum name, ``random(seed=S)`` or
    ``file:PATH``). The last fields describe transformers (their defaults, a convolutional
    network's): ``layout`` of the CAM layer's output (``harness.layouts.Layout``; None: ``[N, C,
    h, w]`` by the convolutional convention), ``patch_size`` (input pixels per patch side),
    ``attention_layers`` (self-attention modules in forward order, for the attention methods)
    and the resize ``interpolation`` of the weights' preprocessing.
    """

    name: str
    weights: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    resize_size: int
    categories: tuple[str, ...]
    blocks: tuple[Block, ...]
    cam_layer: str
    extra: dict = field(default_factory=dict, compare=False)
    layout: Layout | None = None
    patch_size: int | None = None
    attention_layers: tuple[str, ...] = ()
    interpolation: str = "bilinear"

    @property
    def num_classes(self) -> int:
        return len(self.categories)


class WeightsUnavailableError(ModelError):
    """Pretrained weights could not be found locally nor downloaded."""


def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (from torchvision's metadata; offline)."""
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    return tuple(weights.meta["categories"])


def model_info(model: nn.Module) -> ModelInfo:
    """The metadata that travels with a model.

    Args:
        model: a model from ``load_model`` or described with ``attach_info``.

    Returns:
        Its ``ModelInfo``.

    Raises:
        ConfigError: the model has no harness metadata (the message says how to attach it).
    """
    info = getattr(model, "harness_info", None)
    if info is None:
        raise ConfigError(
            f"{type(model).__name__} has no harness metadata: load it with harness.load_model(...) "
            "or describe it with harness.models.attach_info(model, ...)"
        )
    return info


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names and bytes of all parameters and buffers (in state-dict order)."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``; an unknown path names the valid top-level children."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        valid = ", ".join(names)
        raise ConfigError(f"model has no module {path!r}.{did_you_mean(path, names)} Modules: "
                          f"{valid}") from None


def _param_leaves(prefix: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Children in registration order, descending into Sequential/ModuleList containers."""
    for child_name, child in module.named_children():
        path = f"{prefix}.{child_name}" if prefix else child_name
        if isinstance(child, nn.Sequential | nn.ModuleList):
            yield from _param_leaves(path, child)
        elif any(True for _ in child.parameters()):
            yield path, child


def default_blocks(model: nn.Module) -> tuple[Block, ...]:
    """The generic block rule, top (logits) down.

    Walk the model's children in registration order, descending into ``Sequential``/``ModuleList``
    containers; every module with parameters is a block, a normalisation layer joins the block just
    before it (conv + BN re-initialise together). Reversed, so the logits come first. For
    SqueezeNet 1.1 this yields classifier.1, features.12 (fire9) ... features.3 (fire2), features.0.
    """
    blocks: list[list[str]] = []
    for path, module in _param_leaves("", model):
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm)
        if is_norm and blocks:
            blocks[-1].append(path)
        else:
            blocks.append([path])
    return tuple(Block(label=paths[0], modules=tuple(paths)) for paths in reversed(blocks))


def default_cam_layer(model: nn.Module) -> str:
    """Grad-CAM layer rule: ``features`` if present (VGG, DenseNet, MobileNet, EfficientNet,
    SqueezeNet, ConvNeXt), else ``layer4`` (ResNets), else the last child with parameters before the
    final block."""
    for candidate in ("features", "layer4"):
        if hasattr(model, candidate):
            return candidate
    leaves = [path for path, _ in _param_leaves("", model)]
    if len(leaves) < 2:
        raise ConfigError("cannot choose a Grad-CAM layer for this model; pass cam_layer=")
    return leaves[-2]


def _cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise WeightsUnavailableError(f"cannot read checkpoint {str(path)!r}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def _download_state_dict(name: str, weights_enum: torchvision.models.WeightsEnum,
                         progress: bool) -> dict[str, torch.Tensor]:
    """torchvision's weights API: cached file if present, else download with hash check."""
    url = weights_enum.url
    target = _cache_path(url)
    try:
        return torch.hub.load_state_dict_from_url(
            url, progress=progress, check_hash=True, weights_only=True, map_location="cpu"
        )
    except (urllib.error.URLError, OSError, ConnectionError) as error:
        raise WeightsUnavailableError(
            f"cannot get the {weights_enum} weights for {name!r}: {error}.\n"
            f"torchvision looks for the file {target} (cache folder from $TORCH_HOME, "
            f"now {torch.hub.get_dir()}).\n"
            f"To run offline: download {url} on a machine with internet access and copy it to "
            f"{target}, or pass the file explicitly: load_model({name!r}, checkpoint='/path/to/"
            f"{target.name}') (config: model.checkpoint, CLI: --checkpoint).\n"
            "For a pretrained model that works offline, use 'efficientnet_lite0'."
        ) from error
    except RuntimeError as error:  # hash mismatch on a fresh download
        raise WeightsUnavailableError(f"weights file for {name!r} is invalid: {error}") from error


def _load_state(model: nn.Module, state: dict, source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        message = f"weights from {source} do not fit the model: {error}"
        raise WeightsUnavailableError(message) from None


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without disturbing the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
