"""Images: decoding any file or array to uint8 RGB, and the model's preprocessing.

``preprocess`` turns uint8 images ``[H, W, 3]`` into the model's input ``[N, 3, S, S]`` exactly as
the model's weights expect (resize the shorter side, centre-crop, scale to [0, 1], normalise with
the model's mean and std); ``deprocess`` inverts the normalisation; ``preprocess_masks`` applies
the same geometry to ground-truth masks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from harness.errors import DataError
from harness.models import ModelInfo

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"}


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` from grayscale ``[H, W]``, RGBA/LA ``[H, W, 4|2]`` (alpha dropped),
    bool, or float in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype == np.uint16:  # 16 bits per channel: scale, do not clip
        image = np.round(image.astype(np.float64) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise DataError(f"the image holds {int((~np.isfinite(image)).sum())} NaN or inf "
                             "values")
        if image.dtype.kind in "iu" and (image.min() < 0 or image.max() > 255):
            raise DataError(f"integer image of dtype {image.dtype} with values in "
                             f"[{image.min()}, {image.max()}]: expected 0..255 (uint8) or "
                             "0..65535 (uint16)")
        image = np.clip(np.round(image * 255 if image.max() <= 1.0 else image), 0, 255)
        image = image.astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3:
        raise DataError(f"image must be [H, W] or [H, W, C], got shape {image.shape}")
    if image.shape[2] == 4:  # RGBA: drop alpha, as PIL's convert("RGB") does
        return np.asarray(Image.fromarray(image, "RGBA").convert("RGB"))
    if image.shape[2] == 2:
        image = np.repeat(image[:, :, :1], 3, axis=2)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]``; grayscale/RGBA/palette are converted.
    A file that is not a readable image raises ``ValueError`` naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in WIDE_MODES:
                return _wide_to_rgb(image, path)
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"cannot read image file {str(path)!r}: {error}") from None


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _wide_to_rgb(image: Image.Image, path) -> np.ndarray:
    """16-bit (and 32-bit integer) grayscale scaled to 8 bits (65535 -> 255), not clipped as PIL's
    ``convert("RGB")`` does (which turns a 16-bit photo white); float images must lie in [0, 1]."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise DataError(f"cannot read image file {str(path)!r}: a float ({image.mode}) "
                             "image must hold finite values in [0, 1]")
        return to_rgb(values.astype(np.float64))
    if values.min() < 0 or values.max() > 65535:
        raise DataError(f"cannot read image file {str(path)!r}: {image.mode} values in "
                         f"[{values.min()}, {values.max()}] are not 16-bit")
    return to_rgb(values.astype(np.uint16))


# ----------------------------------------------------------------------------- preprocessing


RESAMPLING = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def resize_and_crop(image: np.ndarray, resize_size: int, crop_size: int,
                    interpolation: str = "bilinear") -> np.ndarray:
    """Resize the shorter side to ``resize_size`` (PIL ``interpolation``, default bilinear, as
    torchvision's ``Resize`` on PIL images; the model's weights may ask for bicubic) and
    centre-crop to ``crop_size`` x ``crop_size``. uint8 ``[H, W, 3]`` in and out."""
    pil = Image.fromarray(to_rgb(image))
    width, height = pil.size
    if min(width, height) != resize_size:
        if width <= height:
            new = (resize_size, int(resize_size * height / width))
        else:
            new = (int(resize_size * width / height), resize_size)
        pil = pil.resize(new, RESAMPLING[interpolation])
    width, height = pil.size
    if width < crop_size or height < crop_size:
        raise DataError(f"image of {width}x{height} is smaller than the crop {crop_size}")
    left = int(round((width - crop_size) / 2.0))
    top = int(round((height - crop_size) / 2.0))
    return np.asarray(pil.crop((left, top, left + crop_size, top + crop_size)))


def normalize(pixels: torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> the model's input space ``(x - mean) / std``."""
    mean = torch.tensor(info.mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def deprocess(x: torch.Tensor, info: ModelInfo, *, rescale: bool = False) -> torch.Tensor:
    """Exact inverse of the normalisation: model input -> pixels ``x * std + mean``.

    Args:
        x: model input ``[N, 3, H, W]``.
        info: the model's ``ModelInfo`` (mean and std).
        rescale: map each image's range to [0, 1], as the seed's ``deprocess`` does.

    Returns:
        Pixels ``[N, 3, H, W]`` (in [0, 1] for images that came from ``preprocess``).

    Raises:
        Nothing of its own (torch's errors for mismatched shapes).
    """
    mean = torch.tensor(info.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    pixels = x * std + mean
    if rescale:
        low = pixels.amin(dim=(1, 2, 3), keepdim=True)
        high = pixels.amax(dim=(1, 2, 3), keepdim=True)
        pixels = (pixels - low) / (high - low).clamp_min(1e-12)
    return pixels


def preprocess(images: Sequence[np.ndarray], info: ModelInfo, *,
               device: str | torch.device = "cpu",
               ids: Sequence[str] | None = None) -> torch.Tensor:
    """Images to the model's input: resize the shorter side to ``info.resize_size`` (PIL
    bilinear), centre-crop ``info.input_size``, scale to [0, 1], normalise with the model's mean
    and std. An image whose shorter side is under half the model's input size is upsampled more
    than 2x: a warning names it.

    Args:
        images: uint8 ``[H, W, 3]`` arrays (``Sample.load()``).
        info: the model's ``ModelInfo``.
        device: where the result goes.
        ids: image ids, for the messages.

    Returns:
        The model input ``[N, 3, S, S]`` (float32, contiguous NCHW).

    Raises:
        DataError: an image smaller than the crop, or not an image array.
    """
    for index, image in enumerate(images):
        side = min(np.asarray(image).shape[:2])
        if side < info.input_size / 2:
            name = ids[index] if ids is not None else f"#{index}"
            warnings.warn(f"image {name} is {np.asarray(image).shape[1]}x"
                          f"{np.asarray(image).shape[0]} pixels, much smaller than the model's "
                          f"{info.input_size}x{info.input_size} input: it is upsampled "
                          f"{info.resize_size / side:.1f}x", stacklevel=2)
    crops = [resize_and_crop(image, info.resize_size, info.input_size, info.interpolation)
             for image in images]
    pixels = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    return normalize(pixels.contiguous(), info).to(device).contiguous()


def crop_pixels(images: Sequence[np.ndarray], info: ModelInfo) -> np.ndarray:
    """The pixels the model sees, for figures: ``preprocess``'s geometry without the
    normalisation.

    Args:
        images: uint8 ``[H, W, 3]`` arrays.
        info: the model's ``ModelInfo``.

    Returns:
        The resized, centre-cropped uint8 images ``[N, S, S, 3]``.

    Raises:
        DataError: an image smaller than the crop.
    """
    return np.stack([resize_and_crop(image, info.resize_size, info.input_size, info.interpolation)
                     for image in images])


def resize_and_crop_mask(mask: np.ndarray, resize_size: int, crop_size: int) -> np.ndarray:
    """The geometry of ``resize_and_crop`` applied to a bool mask ``[H, W]`` with nearest-neighbour
    resampling (PIL ``NEAREST``): the mask lands on the pixels of the preprocessed image."""
    mask = np.asarray(mask, dtype=bool)
    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    width, height = pil.size
    if min(width, height) != resize_size:  # the same sizes as resize_and_crop
        if width <= height:
            new = (resize_size, int(resize_size * height / width))
        else:
            new = (int(resize_size * width / height), resize_size)
        pil = pil.resize(new, Image.NEAREST)
    width, height = pil.size
    if width < crop_size or height < crop_size:
        raise DataError(f"mask of {width}x{height} is smaller than the crop {crop_size}")
    left = int(round((width - crop_size) / 2.0))
    top = int(round((height - crop_size) / 2.0))
    return np.asarray(pil.crop((left, top, left + crop_size, top + crop_size))) > 127


def preprocess_masks(masks: Sequence[np.ndarray], info: ModelInfo, *,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """bool masks ``[H, W]`` (each its image's size) -> ``[N, S, S]`` bool on ``device``, resized
    and centre-cropped exactly as ``preprocess`` does the images (nearest-neighbour)."""
    crops = [resize_and_crop_mask(mask, info.resize_size, info.input_size) for mask in masks]
    return torch.from_numpy(np.stack(crops)).to(device)

