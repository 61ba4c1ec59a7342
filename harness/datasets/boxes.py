"""Ground-truth masks from PASCAL-VOC-format bounding boxes (``imagefolder(..., boxes=FOLDER)``).

One XML file per image in PASCAL VOC format, as the official ImageNet (ILSVRC 2012) validation
annotations ship them (``<size>``, then one ``<object>`` per box with ``<name>`` = WordNet id and
``<bndbox>`` xmin, ymin, xmax, ymax). The coordinates are 1-based and inclusive (VOC's
convention; TorchRay's ``voc_as_mask`` reads them the same way), so a box covers rows ymin-1 ..
ymax-1 and columns xmin-1 .. xmax-1, clipped to the image. The mask is the union of the boxes of
the image's class (``box_classes="label"``) or of all its boxes (``"all"``; on ImageNet
validation images all boxes are of the labelled class, so both agree there). Boxes flagged
``difficult`` are kept.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from harness.errors import DataError

BOX_CLASSES = ("label", "all")



@dataclass(frozen=True)
class VocAnnotation:
    """One VOC XML file: image ``width`` x ``height`` and ``boxes`` (name, xmin, ymin, xmax, ymax)
    in 1-based inclusive pixel coordinates."""

    width: int
    height: int
    boxes: tuple[tuple[str, int, int, int, int], ...]


def read_voc_boxes(path: str | os.PathLike) -> VocAnnotation:
    """Parse a PASCAL-VOC-format XML file (ImageNet's official per-image boxes). Only read files
    you trust (the standard library parser). Errors name the file."""
    try:
        root = ElementTree.parse(path).getroot()
        size = root.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        boxes = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            coords = [int(float(box.findtext(tag))) for tag in ("xmin", "ymin", "xmax", "ymax")]
            boxes.append((obj.findtext("name", "").strip(), *coords))
    except (ElementTree.ParseError, AttributeError, TypeError, ValueError, OverflowError,
            OSError) as error:
        raise DataError(f"cannot read VOC boxes from {str(path)!r} (needs <size> and <object>"
                         f"<name>/<bndbox>): {error}") from None
    return VocAnnotation(width, height, tuple(boxes))


def boxes_mask(annotation: VocAnnotation, names: set[str] | None = None) -> np.ndarray:
    """bool ``[height, width]``: the union of the boxes whose name is in ``names`` (all if None)."""
    mask = np.zeros((annotation.height, annotation.width), dtype=bool)
    for name, xmin, ymin, xmax, ymax in annotation.boxes:
        if names is not None and name not in names:
            continue
        top, left = max(ymin - 1, 0), max(xmin - 1, 0)
        mask[top:max(ymax, 0), left:max(xmax, 0)] = True
    return mask


def _box_mask(xml_path: Path, image_path: Path, image_id: str, wnid: str | None) -> np.ndarray:
    annotation = read_voc_boxes(xml_path)
    with Image.open(image_path) as image:
        width, height = image.size
    if (annotation.width, annotation.height) != (width, height):
        raise DataError(f"boxes of image {image_id!r}: {str(xml_path)!r} says "
                         f"{annotation.width}x{annotation.height}, the image is {width}x{height}")
    mask = boxes_mask(annotation, None if wnid is None else {wnid})
    if not mask.any():
        which = "" if wnid is None else f" of class {wnid}"
        raise DataError(f"image {image_id!r} has no box{which} in {str(xml_path)!r}")
    return mask


def box_mask_loaders(boxes: str | os.PathLike, items: Sequence[tuple[str, Path, int | None]],
                     class_names: Sequence[str] | None,
                     box_classes: str = "label") -> list[Callable[[], np.ndarray]]:
    """A lazy mask loader per (image id, image path, label): the XML file with the image's stem,
    found anywhere under ``boxes``. Missing files and an unknown ``box_classes`` raise before any
    image is read."""
    if box_classes not in BOX_CLASSES:
        raise DataError(f"box_classes {box_classes!r} is not one of: {', '.join(BOX_CLASSES)}")
    folder = Path(boxes)
    if not folder.is_dir():
        raise DataError(f"imagefolder: boxes {str(folder)!r} is not a folder")
    files = {path.stem: path for path in sorted(folder.rglob("*.xml"))}
    loaders = []
    for image_id, path, label in items:
        if path.stem not in files:
            raise DataError(f"imagefolder: no box file {path.stem}.xml for image {image_id!r} "
                             f"under {str(folder)!r}")
        wnid = None
        if box_classes == "label":
            if class_names is None or label is None:
                raise DataError("box_classes='label' needs class subfolders named by WordNet id "
                                 f"(image {image_id!r} has none); use box_classes='all'")
            wnid = class_names[label]
        loaders.append(partial(_box_mask, files[path.stem], path, image_id, wnid))
    return loaders
