"""Tiny vision transformers for the tests (32 x 32 inputs, 2-4 blocks, random weights moved off
their initial values so no parameter is at its initialiser's value, as in a trained model:
torchvision's ViT starts with a zero head, which would make every gradient zero)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from harness.models import attach_info, prepare

SIZE = 32
CLASSES = 5


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def _ready(model: nn.Module, seed: int, name: str) -> nn.Module:
    return prepare(attach_info(_trained_like(model, seed), name=name, num_classes=CLASSES,
                               input_size=SIZE))


def tiny_vit(layers: int = 2, seed: int = 0) -> nn.Module:
    """torchvision ViT: 8 x 8 patches (a 4 x 4 grid + the class token), width 32, 2 heads."""
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=layers,
                                                 num_heads=2, hidden_dim=32, mlp_dim=64,
                                                 num_classes=CLASSES)
    return _ready(model, seed, "tiny_vit")


def tiny_timm_vit(seed: int = 0, distilled: bool = False, layers: int = 2) -> nn.Module:
    """timm ViT (or DeiT with a distillation token), the same shapes as ``tiny_vit``."""
    import timm

    torch.manual_seed(seed)
    name = "deit_tiny_distilled_patch16_224" if distilled else "vit_tiny_patch16_224"
    model = timm.create_model(name, pretrained=False, img_size=SIZE, patch_size=8, embed_dim=32,
                              depth=layers, num_heads=2, mlp_ratio=2.0, num_classes=CLASSES)
    return _ready(model, seed, "tiny_deit" if distilled else "tiny_timm_vit")


def tiny_swin(seed: int = 0) -> nn.Module:
    """torchvision Swin: 4 x 4 patches, two stages (8 x 8 then 4 x 4, channels last), windows of
    2 x 2."""
    torch.manual_seed(seed)
    model = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2],
                                               num_heads=[2, 2], window_size=[2, 2],
                                               num_classes=CLASSES)
    return _ready(model, seed, "tiny_swin")


def tiny_timm_swin(seed: int = 0) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=SIZE,
                              embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=2,
                              num_classes=CLASSES)
    return _ready(model, seed, "tiny_timm_swin")


def tiny_maxvit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.MaxVit(input_size=(SIZE, SIZE), stem_channels=8, partition_size=2,
                                      block_channels=[8, 16], block_layers=[1, 2], head_dim=4,
                                      stochastic_depth_prob=0.0, num_classes=CLASSES)
    return _ready(model, seed, "tiny_maxvit")


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
