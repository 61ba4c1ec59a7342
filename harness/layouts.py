"""Where a layer's output keeps the image grid: the layouts that CAMs read.

A CAM (Grad-CAM and its relatives) weights a layer's activation maps ``[N, C, h, w]``. A
convolutional layer outputs that directly (``channels_first``). A vision transformer's blocks
output tokens ``[N, T, C]`` (``tokens``): first ``prefix_tokens`` non-patch tokens (the class
token, then DeiT's distillation token or register tokens), then the ``h * w`` patch tokens in
row-major order of the patch ``grid``. Swin's stages output channels-last maps ``[N, h, w, C]``
(``channels_last``). ``Layout`` declares which; ``to_channels_first`` converts an activation (or
its gradient) to ``[N, C, h, w]``, dropping the prefix tokens, as pytorch-grad-cam's documented
``reshape_transform`` for ViT and Swin does.

A model declares the layout of its CAM layer in ``ModelInfo.layout`` (``harness.load_model`` does
for torchvision's and timm's transformers); it holds for every layer of the model whose output
has the layout's rank (3-D tokens, 4-D maps). An output that does not fit, or a layer whose
output is not 4-D while the model declares no layout, is refused with a message naming the layer,
its shape and how to declare the layout: never guessed. Without a declared layout a 4-D output is
read as ``[N, C, h, w]`` (the convolutional convention) unless its spatial size cannot be a
feature map of the input (``check_grid``): swin_t's ``features`` output ``[N, 7, 7, 768]`` read
that way would be a 7 x 768 map of a 224 x 224 image, and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.errors import ConfigError, MethodError

KINDS = ("channels_first", "channels_last", "tokens")
# the largest ratio between the vertical and horizontal strides (input side / map side) of a
# plausible feature map: any convolutional stack's strides agree far closer than this
STRIDE_RATIO = 1.5

DECLARE = ("declare the layout: harness.models.with_info(model, layout=Layout('tokens', "
           "prefix_tokens=1, grid=(h, w))) for ViT tokens [N, 1 + h*w, C] (prefix_tokens: class + "
           "distillation + register tokens), Layout('channels_last') for [N, h, w, C], "
           "Layout('channels_first') for [N, C, h, w] (harness.layouts.Layout; attach_info takes "
           "layout= too), or choose another layer (layer=)")


@dataclass(frozen=True)
class Layout:
    """How a layer's output holds the image grid (module docstring).

    ``kind``: ``channels_first`` ``[N, C, h, w]``, ``channels_last`` ``[N, h, w, C]`` or
    ``tokens`` ``[N, prefix_tokens + h * w, C]`` with the patch ``grid`` ``(h, w)``."""

    kind: str = "channels_first"
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind: {self.kind!r} is not one of: {', '.join(KINDS)}")
        if isinstance(self.prefix_tokens, bool) or not isinstance(self.prefix_tokens, int) or (
                self.prefix_tokens < 0):
            raise ConfigError(f"prefix_tokens: must be an integer >= 0, got {self.prefix_tokens!r}")
        if self.kind == "tokens":
            grid = self.grid
            if (not isinstance(grid, tuple | list) or len(grid) != 2
                    or not all(isinstance(g, int) and g >= 1 for g in grid)):
                raise ConfigError(f"grid: a tokens layout needs the patch grid (h, w) of positive "
                                 f"integers, got {grid!r}")
            object.__setattr__(self, "grid", (int(grid[0]), int(grid[1])))
        elif self.prefix_tokens or self.grid is not None:
            raise ConfigError(f"prefix_tokens and grid describe tokens; a {self.kind} layout "
                             "takes neither")

    @property
    def rank(self) -> int:
        """The number of dimensions of an output in this layout (3 for tokens, else 4)."""
        return 3 if self.kind == "tokens" else 4


def check_grid(height: int, width: int, input_size: tuple[int, int], *, layer: str,
               shape: tuple[int, ...], reading: str) -> None:
    """Refuse a ``[h, w]`` map that cannot be a feature map of an ``input_size`` image: larger
    than the image, or vertical and horizontal strides more than ``STRIDE_RATIO`` apart."""
    image_height, image_width = input_size
    implausible = height > image_height or width > image_width
    if not implausible:
        strides = (image_height / height, image_width / width)
        implausible = max(strides) / min(strides) > STRIDE_RATIO
    if implausible:
        raise MethodError(
            f"layer {layer!r} outputs {shape}; read as {reading} that is a {height} x {width} "
            f"map of a {image_height} x {image_width} image, which no layer of a classifier "
            f"outputs: the layout is not {reading}. To use this layer, {DECLARE}")


def to_channels_first(activation: torch.Tensor, layout: Layout | None, *, layer: str,
                      input_size: tuple[int, int]) -> torch.Tensor:
    """``activation`` (or its gradient) of ``layer`` as ``[N, C, h, w]``.

    ``layout``: the model's declared layout (None: none declared). A 4-D output in an undeclared
    or ``channels_first`` layout is returned as it is (the same tensor); ``channels_last`` is
    permuted; ``tokens`` ``[N, T, C]`` lose their ``prefix_tokens`` and the patch tokens are laid
    on the grid. ``input_size`` ``(H, W)``: the model input's, for the plausibility check."""
    shape = tuple(activation.shape)
    if layout is not None and activation.ndim == layout.rank:
        kind = layout.kind
    elif activation.ndim == 4:
        kind = "channels_first"
    else:
        declared = (f"the model declares a {layout.kind} layout ({layout.rank}-D outputs)"
                    if layout is not None else "the model declares no layout")
        raise MethodError(f"layer {layer!r} outputs {shape}, not a map [N, C, h, w], and {declared}"
                         f": a CAM cannot place it on the image. To use this layer, {DECLARE}")
    if kind == "channels_first":
        check_grid(shape[2], shape[3], input_size, layer=layer, shape=shape,
                   reading="[N, C, h, w]")
        return activation
    if kind == "channels_last":
        check_grid(shape[1], shape[2], input_size, layer=layer, shape=shape,
                   reading="[N, h, w, C]")
        return activation.permute(0, 3, 1, 2)
    height, width = layout.grid
    expected = layout.prefix_tokens + height * width
    if shape[1] != expected:
        raise MethodError(f"layer {layer!r} outputs {shape}: {shape[1]} tokens, but the model's "
                         f"layout has {layout.prefix_tokens} prefix tokens + a {height} x {width} "
                         f"patch grid = {expected}. To use this layer, {DECLARE}")
    check_grid(height, width, input_size, layer=layer, shape=shape, reading="tokens")
    patches = activation[:, layout.prefix_tokens:, :]
    return patches.reshape(shape[0], height, width, shape[2]).permute(0, 3, 1, 2)


def model_layout(model: torch.nn.Module) -> Layout | None:
    """The layout the model's metadata declares (None for a model without one or without
    metadata)."""
    info = getattr(model, "harness_info", None)
    return getattr(info, "layout", None)
