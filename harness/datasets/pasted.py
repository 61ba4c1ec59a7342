"""The ``pasted_objects`` dataset: ground-truth masks known by construction.

Objects cut along hand-drawn outlines from the photos that ship with scikit-image and matplotlib
are pasted at seeded positions, flips and scales onto crops of other bundled images, so the object
mask is exactly the set of pasted pixels. Candidate k draws from ``image_generator(seed, k,
salt="pasted_objects")``; with a ``model`` (default ``efficientnet_lite0``) only candidates whose
top-1 prediction is one of the object's classes are kept, until ``size`` are (label = that
prediction).

Construction in detail, survival rates, measured numbers and limits: docs/robustness.md (Ground
truth).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
import skimage.data
import torch
from PIL import Image
from skimage.draw import ellipse as draw_ellipse
from skimage.draw import polygon as draw_polygon

from harness.datasets.builtin import SAMPLE_IMAGES
from harness.datasets.core import Dataset, Sample, register_dataset
from harness.errors import DataError
from harness.images import preprocess, to_rgb
from harness.models import load_model, model_info
from harness.seeding import image_generator


@dataclass(frozen=True)
class PastedObject:
    """An object cut from a bundled photo: ``shapes`` are ("polygon", ((x, y), ...)) or
    ("ellipse", (cx, cy, rx, ry)) in the photo's pixels (x = column, y = row); ``classes`` the
    ImageNet classes that count as recognising it; ``label`` its nominal class."""

    name: str
    source: str
    classes: tuple[int, ...]
    label: int
    shapes: tuple


OBJECTS: dict[str, PastedObject] = {obj.name: obj for obj in (
    # the cat's head and chest: all of chelsea except the out-of-focus background on the right;
    # domestic-cat classes tabby, tiger cat, Persian, Siamese, Egyptian cat (top-1: Egyptian cat)
    PastedObject("cat", "chelsea", (281, 282, 283, 284, 285), 285, (
        ("polygon", ((0, 0), (345, 0), (372, 18), (392, 60), (385, 110), (378, 160), (365, 215),
                     (345, 262), (330, 299), (0, 299))),)),
    # cup and saucer (ellipses) with the spoon's handle; espresso, cup, coffee mug
    PastedObject("espresso", "coffee", (967, 968, 504), 967, (
        ("ellipse", (277, 229, 203, 159)), ("ellipse", (292, 95, 118, 80)),
        ("polygon", ((174, 95), (410, 95), (395, 235), (190, 235))),
        ("polygon", ((398, 78), (412, 64), (424, 70), (412, 120), (400, 200), (388, 200))))),
    # the motorcycle with its stand; ImageNet's nearest classes: moped, motor scooter
    PastedObject("motorcycle", "motorcycle_left", (665, 670), 665, (
        ("polygon", ((93, 200), (100, 222), (150, 232), (128, 265), (120, 310), (135, 360),
                     (180, 395), (235, 398), (270, 375), (300, 355), (330, 365), (325, 436),
                     (340, 436), (345, 372), (420, 372), (450, 350), (470, 320), (505, 300),
                     (515, 330), (520, 370), (545, 425), (600, 450), (650, 440), (680, 405),
                     (685, 360), (665, 320), (640, 300), (625, 270), (600, 262), (560, 255),
                     (545, 215), (548, 190), (570, 180), (585, 135), (570, 115), (545, 120),
                     (528, 105), (512, 100), (495, 112), (475, 135), (430, 145), (410, 140),
                     (380, 150), (355, 185), (320, 170), (250, 160), (155, 155), (140, 185),
                     (100, 195))),)),
    # the cameraman's camera on its tripod (legs as thin quadrilaterals, no grass between them)
    PastedObject("tripod", "camera", (872,), 872, (
        ("polygon", ((255, 138), (325, 138), (332, 170), (330, 192), (300, 192), (300, 300),
                     (320, 300), (336, 303), (310, 320), (305, 330), (360, 430), (402, 500),
                     (392, 505), (350, 435), (300, 345), (298, 480), (286, 480), (285, 345),
                     (245, 460), (236, 495), (228, 492), (240, 450), (280, 335), (276, 320),
                     (285, 300), (287, 192), (262, 192), (255, 170))),)),
    # Grace Hopper in uniform (cap to the bottom edge, without the flag); military uniform, suit
    PastedObject("uniform", "grace_hopper", (652, 834), 652, (
        ("polygon", ((175, 45), (225, 25), (290, 22), (345, 45), (372, 105), (368, 180),
                     (352, 250), (335, 320), (420, 360), (485, 395), (511, 420), (511, 599),
                     (25, 599), (25, 440), (60, 380), (160, 335), (165, 300), (150, 230),
                     (145, 170), (160, 110))),)),
)}

BACKGROUNDS = ("brick", "grass", "gravel", "immunohistochemistry", "hubble_deep_field", "retina",
               "moon", "coins", "page", "text")
VISIBLE = 0.875  # 224 / 256: the central square a resize-256, crop-224 pipeline keeps


def shapes_mask(shapes: tuple, height: int, width: int) -> np.ndarray:
    """bool ``[height, width]``: the union of the polygons and ellipses (skimage.draw)."""
    mask = np.zeros((height, width), dtype=bool)
    for kind, spec in shapes:
        if kind == "polygon":
            columns, rows = zip(*spec, strict=True)
            rr, cc = draw_polygon(np.array(rows), np.array(columns), (height, width))
        elif kind == "ellipse":
            cx, cy, rx, ry = spec
            rr, cc = draw_ellipse(cy, cx, ry, rx, (height, width))
        else:
            raise DataError(f"shape kind {kind!r} is not one of: polygon, ellipse")
        mask[rr, cc] = True
    return mask


@lru_cache(maxsize=16)
def object_cutout(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The object's bounding-box crop of its photo (uint8 ``[h, w, 3]``) and its mask ``[h, w]``."""
    obj = OBJECTS[name]
    photo = SAMPLE_IMAGES[obj.source]()
    mask = shapes_mask(obj.shapes, *photo.shape[:2])
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return photo[box], mask[box]


@lru_cache(maxsize=16)
def background_image(name: str) -> np.ndarray:
    return to_rgb(getattr(skimage.data, name)())


def _resize(array: np.ndarray, width: int, height: int, method) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize((width, height), method))


@lru_cache(maxsize=256)
def compose(seed: int, index: int, objects: tuple[str, ...], backgrounds: tuple[str, ...],
            canvas: int, scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Candidate ``index``: (image uint8 ``[canvas, canvas, 3]``, mask bool ``[canvas, canvas]``,
    object name, background name). A pure function of its arguments (read-only arrays)."""
    draws = torch.rand(8, generator=image_generator(seed, index, salt="pasted_objects")).tolist()
    name = objects[index % len(objects)]
    background_name = backgrounds[min(int(draws[0] * len(backgrounds)), len(backgrounds) - 1)]
    background = background_image(background_name)
    height, width = background.shape[:2]
    side = max(1, int(min(height, width) * (0.5 + 0.5 * draws[1])))
    top, left = int((height - side) * draws[2]), int((width - side) * draws[3])
    image = _resize(background[top:top + side, left:left + side], canvas, canvas,
                    Image.BILINEAR).copy()
    cutout, cut_mask = object_cutout(name)
    if draws[4] < 0.5:
        cutout, cut_mask = cutout[:, ::-1], cut_mask[:, ::-1]
    visible = int(round(canvas * VISIBLE))
    longest = scale[0] + (scale[1] - scale[0]) * draws[5]
    factor = longest * visible / max(cutout.shape[:2])
    out_h = max(1, min(visible, int(round(cutout.shape[0] * factor))))
    out_w = max(1, min(visible, int(round(cutout.shape[1] * factor))))
    pixels = _resize(cutout, out_w, out_h, Image.BILINEAR)
    pasted = _resize(cut_mask.astype(np.uint8) * 255, out_w, out_h, Image.NEAREST) > 127
    margin = (canvas - visible) // 2
    row = margin + int((visible - out_h) * draws[6])
    col = margin + int((visible - out_w) * draws[7])
    region = image[row:row + out_h, col:col + out_w]
    region[pasted] = pixels[pasted]
    mask = np.zeros((canvas, canvas), dtype=bool)
    mask[row:row + out_h, col:col + out_w] = pasted
    image.flags.writeable = False
    mask.flags.writeable = False
    return image, mask, name, background_name


def check_options(objects: Sequence[str], backgrounds: Sequence[str], canvas: int,
                  scale: Sequence[float], size: int) -> None:
    unknown = [name for name in objects if name not in OBJECTS]
    if unknown or not objects:
        raise DataError(f"pasted_objects: objects {unknown or list(objects)} invalid; choose "
                         f"from: {', '.join(OBJECTS)}")
    bad = [name for name in backgrounds if name not in BACKGROUNDS]
    if bad or not backgrounds:
        raise DataError(f"pasted_objects: backgrounds {bad or list(backgrounds)} invalid; choose "
                         f"from: {', '.join(BACKGROUNDS)}")
    if not isinstance(canvas, int) or canvas < 32:
        raise DataError(f"pasted_objects: canvas must be an integer >= 32 pixels, got {canvas!r}")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise DataError(f"pasted_objects: scale must be (low, high) with 0 < low <= high <= 1, "
                         f"got {tuple(scale)}")
    if not isinstance(size, int) or size < 1:
        raise DataError(f"pasted_objects: size must be an integer >= 1, got {size!r}")


FILTER_CHUNK = 8


def filter_model_name(model: torch.nn.Module) -> str:
    """How a filter model is recorded in the dataset (``Dataset.filter_model``): its
    ``harness_info`` name and weights, e.g. ``efficientnet_lite0 (default)``."""
    info = model_info(model)
    return f"{info.name} ({info.weights})"


def _on_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` if its parameters and buffers are on the CPU, else a CPU copy (the caller's model
    is left where it is)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


def recognised(model: torch.nn.Module, images: Sequence[np.ndarray],
               classes: Sequence[tuple[int, ...]]) -> list[tuple[bool, int]]:
    """(top-1 in the object's classes, top-1) per image. Always on the CPU in chunks of 8 (a model
    on another device is copied to the CPU for this), so that the kept set does not depend on
    the device the model lives on."""
    info = model_info(model)
    model = _on_cpu(model)
    results = []
    for start in range(0, len(images), FILTER_CHUNK):
        x = preprocess(images[start:start + FILTER_CHUNK], info)
        with torch.inference_mode():
            top = model(x).argmax(dim=1).tolist()
        results += [(label in accepted, label)
                    for label, accepted in zip(top, classes[start:start + FILTER_CHUNK],
                                               strict=True)]
    return results


def pasted_samples(*, size: int, seed: int, model, objects: Sequence[str],
                   backgrounds: Sequence[str], canvas: int, scale: Sequence[float],
                   max_candidates: int | None
                   ) -> tuple[list[tuple[str, int, Callable, Callable]], str | None]:
    """(id, label, image loader, mask loader) of the first ``size`` kept candidates, and the
    filter model's name (None without one)."""
    check_options(objects, backgrounds, canvas, scale, size)
    settings = (int(seed), tuple(objects), tuple(backgrounds), canvas, tuple(map(float, scale)))
    max_candidates = max_candidates or 10 * size
    if isinstance(model, str):
        model = load_model(model)
    filter_name = None if model is None else filter_model_name(model)
    kept = []
    for start in range(0, max_candidates, FILTER_CHUNK):
        indices = range(start, min(start + FILTER_CHUNK, max_candidates))
        made = [compose(settings[0], k, *settings[1:]) for k in indices]
        if model is None:
            verdicts = [(True, OBJECTS[name].label) for _, _, name, _ in made]
        else:
            verdicts = recognised(model, [image for image, *_ in made],
                                  [OBJECTS[name].classes for _, _, name, _ in made])
        for k, (_, _, name, background), (ok, label) in zip(indices, made, verdicts, strict=True):
            if ok and len(kept) < size:
                kept.append((f"{k:04d}-{name}-on-{background}", label,
                             partial(_part, settings, k, 0), partial(_part, settings, k, 1)))
        if len(kept) == size:
            return kept, filter_name
    raise DataError(f"pasted_objects: only {len(kept)} of {max_candidates} candidates were "
                     f"recognised by the model; lower size or raise max_candidates")


def _part(settings: tuple, index: int, which: int) -> np.ndarray:
    return compose(settings[0], index, *settings[1:])[which].copy()

@register_dataset("pasted_objects", masks=True)
def pasted_objects(*, size: int = 24, paste_seed: int = 0,
                   model: str | torch.nn.Module | None = "efficientnet_lite0",
                   objects: Sequence[str] | None = None, backgrounds: Sequence[str] | None = None,
                   canvas: int = 224, scale: Sequence[float] = (0.3, 0.7),
                   max_candidates: int | None = None) -> Dataset:
    """Objects cut from the bundled photos (cat, espresso, motorcycle, tripod, uniform)
    pasted at seeded positions and scales onto crops of bundled textures and photos; the object
    mask is known by construction. With ``model`` (default the bundled EfficientNet-Lite0) only
    images whose top-1 prediction is one of the object's classes are kept (label = that class),
    until ``size`` images (from at most ``max_candidates``, default 10 * size); the dataset's
    ``filter_model`` names it (the runner warns if it evaluates another model). ``paste_seed``
    fixes every draw. How it is made and its limits: the module docstring."""
    kept, filter_model = pasted_samples(
        size=size, seed=paste_seed, model=model, canvas=canvas, scale=scale,
        objects=tuple(objects or OBJECTS), max_candidates=max_candidates,
        backgrounds=tuple(backgrounds or BACKGROUNDS))
    return Dataset("pasted_objects", tuple(Sample(*item) for item in kept),
                   filter_model=filter_model)


