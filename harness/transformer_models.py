"""Vision transformers as first-class models: their metadata, and timm's models by name.

``describe(model)`` recognises torchvision's ``VisionTransformer``, ``SwinTransformer`` (v1, v2)
and ``MaxVit`` and timm's ``VisionTransformer`` (ViT, DeiT, distilled, register tokens) and
``SwinTransformer``, and returns the ``ModelInfo`` fields they need (``{}`` for any other model):
``blocks`` for model-parameter randomization (top down), ``cam_layer`` and its ``layout``,
``patch_size`` and ``attention_layers``. ``timm_builder(name)`` builds ``timm:<name>`` for
``harness.load_model`` (timm's pretrained weights, a tag, ``"random"`` or ``checkpoint=PATH``)
with the preprocessing of the weights' pretrained config.

The layers chosen and why, weights and preprocessing: docs/transformers.md (Models, Layout-aware
CAMs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from harness.errors import ConfigError
from harness.layouts import Layout
from harness.model_info import (
    Block,
    ModelInfo,
    WeightsUnavailableError,
    _load_checkpoint,
    _load_state,
    _seeded,
    default_blocks,
    default_cam_layer,
    imagenet_categories,
)
from harness.registry import lookup, require

EXTRA = "timm"
PREFIX = "timm:"


# ----------------------------------------------------------------------------- metadata


def _existing(model: nn.Module, paths: tuple[str, ...]) -> tuple[str, ...]:
    """The paths that name a parameter, or a module holding parameters, of ``model``."""
    kept = []
    params = dict(model.named_parameters())
    for path in paths:
        if path in params:
            kept.append(path)
            continue
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if any(True for _ in module.parameters()):
            kept.append(path)
    return tuple(kept)


def _square(size, what: str) -> int:
    size = tuple(size) if isinstance(size, tuple | list) else (size, size)
    if size[0] != size[1]:
        raise ConfigError(f"{what} {size} is not square")
    return int(size[0])


def _torchvision_vit(model: nn.Module) -> dict:
    depth = len(model.encoder.layers)
    layers = [f"encoder.layers.encoder_layer_{i}" for i in range(depth)]
    grid = model.image_size // model.patch_size
    return {
        "blocks": (
            Block("head", ("encoder.ln", "heads")),
            *(Block(f"block{i}", (layers[i],)) for i in reversed(range(depth))),
            Block("embedding", ("conv_proj", "class_token", "encoder.pos_embedding")),
        ),
        "cam_layer": f"{layers[-1]}.ln_1",
        "layout": Layout("tokens", prefix_tokens=1, grid=(grid, grid)),
        "patch_size": model.patch_size,
        "attention_layers": tuple(f"{layer}.self_attention" for layer in layers),
    }


def _torchvision_swin(model: nn.Module) -> dict:
    features = model.features  # [embedding, stage0, merge, stage1, merge, stage2, merge, stage3]
    steps = []
    for index in range(1, len(features)):
        stage = (index - 1) // 2
        if index % 2 == 1:
            steps += [Block(f"stage{stage}.block{b}", (f"features.{index}.{b}",))
                      for b in range(len(features[index]))]
        else:
            steps.append(Block(f"stage{stage + 1}.merge", (f"features.{index}",)))
    return {
        "blocks": (Block("head", ("norm", "head")), *reversed(steps),
                   Block("embedding", ("features.0",))),
        "cam_layer": "norm",
        "layout": Layout("channels_last"),
        "patch_size": _square(features[0][0].kernel_size, "patch size"),
    }


def _torchvision_maxvit(model: nn.Module) -> dict:
    steps = [Block(f"stage{s}.layer{j}", (f"blocks.{s}.layers.{j}",))
             for s, stage in enumerate(model.blocks) for j in range(len(stage.layers))]
    return {
        "blocks": (Block("head", ("classifier",)), *reversed(steps), Block("stem", ("stem",))),
        "cam_layer": f"blocks.{len(model.blocks) - 1}",
        "layout": Layout("channels_first"),
    }


def timm_attention_classes() -> tuple[type, ...]:
    """timm's self-attention module class(es): ``timm.layers.Attention`` (timm 1.0.31) and
    ``timm.models.vision_transformer.Attention`` (timm 1.0.15 and before; the same class in
    1.0.31); () without timm."""
    found = []
    for module, name in (("timm.layers", "Attention"),
                         ("timm.models.vision_transformer", "Attention")):
        try:
            cls = getattr(__import__(module, fromlist=[name]), name)
        except (ImportError, AttributeError):
            continue
        if cls not in found:
            found.append(cls)
    return tuple(found)


def _timm_vit(model: nn.Module) -> dict:
    attention_classes = timm_attention_classes()
    depth = len(model.blocks)
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    head = _existing(model, ("norm", "fc_norm", "attn_pool", "head", "head_dist"))
    embedding = _existing(model, ("patch_embed", "cls_token", "dist_token", "reg_token",
                                  "pos_embed", "norm_pre"))
    fields = {
        "blocks": (Block("head", head),
                   *(Block(f"block{i}", (f"blocks.{i}",)) for i in reversed(range(depth))),
                   Block("embedding", embedding)),
        "cam_layer": f"blocks.{depth - 1}.norm1",
        "layout": Layout("tokens", prefix_tokens=int(model.num_prefix_tokens), grid=grid),
        "patch_size": _square(model.patch_embed.patch_size, "patch size"),
    }
    reads_class_token = (getattr(model, "cls_token", None) is not None
                         and getattr(model, "global_pool", None) == "token")
    if reads_class_token and all(isinstance(block.attn, attention_classes)
                                 for block in model.blocks):
        fields["attention_layers"] = tuple(f"blocks.{i}.attn" for i in range(depth))
    return fields


def _timm_swin(model: nn.Module) -> dict:
    steps = []
    for s, stage in enumerate(model.layers):
        if any(True for _ in stage.downsample.parameters()):
            steps.append(Block(f"stage{s}.merge", (f"layers.{s}.downsample",)))
        steps += [Block(f"stage{s}.block{b}", (f"layers.{s}.blocks.{b}",))
                  for b in range(len(stage.blocks))]
    return {
        "blocks": (Block("head", _existing(model, ("norm", "head"))), *reversed(steps),
                   Block("embedding", _existing(model, ("patch_embed", "absolute_pos_embed")))),
        "cam_layer": "norm",
        "layout": Layout("channels_last"),
        "patch_size": _square(model.patch_embed.patch_size, "patch size"),
    }


def _recognisers(model: nn.Module) -> list[tuple[type, Callable[[nn.Module], dict]]]:
    from torchvision.models.maxvit import MaxVit
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    found = [(VisionTransformer, _torchvision_vit), (SwinTransformer, _torchvision_swin),
             (MaxVit, _torchvision_maxvit)]
    if not any(cls.__module__.startswith("timm.") for cls in type(model).__mro__):
        return found  # timm is imported only for its own models
    try:
        from timm.models.swin_transformer import SwinTransformer as TimmSwin
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError:
        return found
    return found + [(TimmViT, _timm_vit), (TimmSwin, _timm_swin)]


def describe(model: nn.Module) -> dict:
    """``ModelInfo`` fields of a recognised transformer (module docstring), else ``{}``."""
    for cls, fields in _recognisers(model):
        if isinstance(model, cls):
            return fields(model)
    return {}


# ----------------------------------------------------------------------------- timm by name


def _timm():
    return require("timm", EXTRA, "models 'timm:<name>'")


def is_timm_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def timm_models(pattern: str = "*") -> list[str]:
    """``timm:<name>`` for timm's architectures matching ``pattern`` (after ``timm:``)."""
    return [PREFIX + name for name in _timm().list_models(pattern)]


def check_timm_name(name: str) -> None:
    """Refuse ``timm:<architecture>`` when timm is not installed (``MissingDependencyError``
    naming the extra) or does not know the architecture (``UnknownNameError`` with a near
    match)."""
    timm = _timm()
    architecture = name[len(PREFIX):]
    if not timm.is_model(architecture):
        lookup({n: None for n in timm.list_models()}, "timm model", architecture)


def timm_known(name: str) -> bool:
    """Whether ``timm:<architecture>`` names a timm architecture (timm installed)."""
    try:
        timm = _timm()
    except ImportError:
        return False
    return timm.is_model(name[len(PREFIX):])


def _read_checkpoint(path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (no code runs) or a ``weights_only`` torch file."""
    if str(path).endswith(".safetensors"):
        if not Path(path).is_file():
            raise WeightsUnavailableError(f"checkpoint file {str(path)!r} does not exist")
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 - re-raised with the file named
            raise WeightsUnavailableError(
                f"cannot read checkpoint {str(path)!r}: {error}") from None
    return _load_checkpoint(path)


def _offline_message(name: str, architecture: str, config: dict, error: BaseException) -> str:
    from huggingface_hub import constants

    hub_id = config.get("hf_hub_id")
    source = (f"the Hugging Face Hub repository {hub_id!r}" if hub_id
              else f"{config.get('url') or 'its pretrained URL'}")
    return (
        f"cannot get the pretrained weights of {name!r} from {source}: "
        f"{type(error).__name__}: {error}.\n"
        f"timm caches them under {constants.HF_HUB_CACHE} (from $HF_HOME; URL weights under "
        f"$TORCH_HOME/hub/checkpoints); set HF_HUB_OFFLINE=1 to fail at once instead of "
        "retrying.\n"
        "To run offline: on a machine with internet access run python -c \"import timm; "
        f"timm.create_model('{architecture}', pretrained=True)\" and copy that cache folder to "
        f"this machine, or save the weights file (e.g. model.safetensors of {hub_id or 'the URL'})"
        f" and pass it: load_model({name!r}, checkpoint='/path/to/model.safetensors') (config: "
        "model.checkpoint, CLI: --checkpoint).\n"
        "For a pretrained model that works offline, use 'efficientnet_lite0'.")


def timm_info(model: nn.Module, name: str, weights_id: str) -> ModelInfo:
    """The ``ModelInfo`` of timm ``model``: preprocessing from its pretrained config, the
    transformer fields of ``describe`` (else the generic blocks and timm's last feature stage as
    the CAM layer)."""
    timm = _timm()
    config = timm.data.resolve_model_data_config(model)
    size = _square(config["input_size"][1:], "input size")
    crop_pct = float(config.get("crop_pct") or 1.0)
    classes = int(getattr(model, "num_classes", 0) or 0)
    categories = (imagenet_categories() if classes == 1000
                  else tuple(f"class {i}" for i in range(classes)))
    fields = describe(model)
    if not fields:
        stages = getattr(model, "feature_info", None)
        fields = {"blocks": default_blocks(model),
                  "cam_layer": stages[-1]["module"] if stages else "",
                  "patch_size": None}
        if not fields["cam_layer"]:
            fields["cam_layer"] = default_cam_layer(model)
    return ModelInfo(name=name, weights=weights_id, mean=tuple(config["mean"]),
                     std=tuple(config["std"]), input_size=size,
                     resize_size=int(math.floor(size / crop_pct)), categories=categories,
                     interpolation=str(config.get("interpolation", "bilinear")), **fields)


def timm_builder(name: str) -> Callable[..., nn.Module]:
    """The ``load_model`` builder of ``timm:<architecture>`` (module docstring)."""
    architecture = name[len(PREFIX):]

    def build(*, weights: str, checkpoint, seed: int, progress: bool) -> nn.Module:
        timm = _timm()
        if not timm.is_model(architecture):
            lookup({n: None for n in timm.list_models()}, "timm model", architecture)
        if checkpoint is not None or weights == "random":
            with _seeded(seed):
                model = timm.create_model(architecture, pretrained=False)
            if checkpoint is not None:
                _load_state(model, _read_checkpoint(checkpoint), f"checkpoint {checkpoint}")
                weights_id = f"file:{Path(checkpoint).resolve()}"
            else:
                weights_id = f"random(seed={seed})"
            return _attach(model, name, weights_id)
        tags = [full.split(".", 1)[1] for full in timm.list_pretrained(f"{architecture}.*")
                if full.split(".", 1)[0] == architecture]
        if weights != "default" and weights not in tags:
            raise ConfigError(f"unknown weights {weights!r} for {name!r}; valid: "
                             f"{', '.join(['default', 'random', *tags])}")
        if not tags:
            raise WeightsUnavailableError(f"timm has no pretrained weights for {name!r}: use "
                                          "weights='random' or checkpoint=PATH")
        full = architecture if weights == "default" else f"{architecture}.{weights}"
        config = timm.models.get_pretrained_cfg(full)  # the default tag's for "default"
        config = config.to_dict() if config is not None else {}
        try:
            model = timm.create_model(full, pretrained=True)
        except (OSError, ConnectionError, RuntimeError) as error:
            raise WeightsUnavailableError(_offline_message(name, full, config, error)) from error
        tag = model.pretrained_cfg.get("tag") or weights
        return _attach(model, name, str(tag))

    return build


def _attach(model: nn.Module, name: str, weights_id: str) -> nn.Module:
    model.harness_info = timm_info(model, name, weights_id)
    return model


def torchvision_fields(model: nn.Module, transform) -> dict:
    """The transformer fields of a torchvision model built by ``load_model`` (``{}`` for the
    others, whose metadata is unchanged), with the interpolation its weights' transform uses."""
    fields = describe(model)
    if fields:
        mode = getattr(transform, "interpolation", None)
        fields["interpolation"] = getattr(mode, "value", "bilinear")
    return fields
