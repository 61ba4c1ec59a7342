"""The built-in datasets: ``samples`` (photos that ship offline), ``cs231n_npz`` (the seed
notebook's file) and ``imagefolder`` (an ImageNet-val-style folder, optionally with VOC boxes)."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import matplotlib
import numpy as np
import skimage.data

from harness.datasets.boxes import box_mask_loaders
from harness.datasets.core import Dataset, Sample, register_dataset
from harness.errors import DataError
from harness.images import IMAGE_SUFFIXES, read_image, to_rgb
from harness.registry import lookup


def _skimage(name: str) -> np.ndarray:
    if name == "motorcycle_left":
        return to_rgb(skimage.data.stereo_motorcycle()[0])
    return to_rgb(getattr(skimage.data, name)())


def _grace_hopper() -> np.ndarray:
    return read_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")


SAMPLE_IMAGES: dict[str, Callable[[], np.ndarray]] = {
    **{name: partial(_skimage, name) for name in
       ("chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "camera", "clock",
        "immunohistochemistry", "hubble_deep_field", "colorwheel", "logo")},
    "grace_hopper": _grace_hopper,
}
DEFAULT_SAMPLES = ("chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "grace_hopper")


@register_dataset("samples")
def samples(*, names: Sequence[str] = DEFAULT_SAMPLES,
            labels: dict[str, int] | None = None) -> Dataset:
    """Real photos shipped offline by scikit-image (chelsea, coffee, rocket, astronaut,
    motorcycle_left, camera, clock, ...) and matplotlib (grace_hopper). Unlabelled unless
    ``labels`` maps a name to a class index: the model's top-1 prediction is explained."""
    labels = dict(labels or {})
    for name in list(names) + list(labels):
        lookup(SAMPLE_IMAGES, "sample image", name)
    chosen = tuple(Sample(name, labels.get(name), SAMPLE_IMAGES[name]) for name in names)
    return Dataset("samples", chosen)


@register_dataset("cs231n_npz")
def cs231n_npz(*, path: str | os.PathLike) -> Dataset:
    """The cs231n ``imagenet_val_25.npz`` format: ``X`` uint8 ``[N, H, W, 3]``, ``y`` ``[N]`` and
    class names as ``label_map`` (the original file's pickled dict index -> name, read with a
    loader that admits only a dict of ints to strings) or as a plain string array
    ``label_names``. Nothing in the file is executed: any other pickled content is refused."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cs231n_npz: file {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise DataError(f"cs231n_npz: {str(path)!r} is not an .npz archive (a zip of .npy "
                         "arrays); refusing to read it")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("X", "y") if key not in archive]
            if missing:
                raise DataError(f"has no array {missing[0]!r} (needs X, y; has "
                                 f"{', '.join(archive.files)})")
            images, labels = archive["X"], archive["y"]
            names = archive["label_names"] if "label_names" in archive else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"cs231n_npz: cannot read {str(path)!r}: {error}") from None
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise DataError(f"cs231n_npz: {str(path)!r} has X {images.shape} and y {labels.shape}; "
                         "expected X [N, H, W, 3] and y [N]")
    if labels.dtype.kind not in "iu":
        raise DataError(f"cs231n_npz: {str(path)!r}: y must hold integer class indices, got "
                         f"dtype {labels.dtype}")
    class_names = None
    if names is not None:
        class_names = tuple(str(name) for name in names)
    else:
        label_map = read_label_map(path)
        if label_map:
            class_names = tuple(str(label_map.get(i, f"class {i}"))
                                for i in range(max(label_map) + 1))
    width = len(str(len(images) - 1))
    chosen = tuple(
        Sample(f"{path.stem}/{i:0{width}d}", int(labels[i]), partial(to_rgb, images[i]))
        for i in range(len(images))
    )
    return Dataset("cs231n_npz", chosen, class_names)


class _LabelMapUnpickler(pickle.Unpickler):
    """Unpickles a numpy object array holding plain Python values, and nothing else: the only
    globals it resolves are numpy's array reconstruction (no function of the data is called)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
               ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_label_map(path: str | os.PathLike) -> dict[int, str] | None:
    """The ``label_map`` member of a cs231n npz (a pickled 0-d object array holding a dict
    index -> class name), read without executing anything; None when absent. Any other content
    is refused with a ``ValueError`` naming the file."""
    with zipfile.ZipFile(path) as archive:
        if "label_map.npy" not in archive.namelist():
            return None
        with archive.open("label_map.npy") as member:
            version = np.lib.format.read_magic(member)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                      np.lib.format.read_array_header_2_0)(member)
            dtype = header[2]
            if not dtype.hasobject:
                raise DataError(f"cs231n_npz: {str(path)!r}: label_map must be a dict (or store "
                                 "class names as a string array 'label_names')")
            try:
                value = _LabelMapUnpickler(member, encoding="latin1").load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError,
                    ValueError) as error:
                raise DataError(f"cs231n_npz: {str(path)!r}: refusing its label_map: {error}. "
                                 "Store class names as a string array 'label_names' "
                                 "instead") from None
    item = value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    if not (isinstance(item, dict) and all(isinstance(k, int | np.integer) and isinstance(v, str)
                                           for k, v in item.items())):
        raise DataError(f"cs231n_npz: {str(path)!r}: label_map must be a dict of class index -> "
                         f"name, got {type(item).__name__}")
    return {int(k): v for k, v in item.items()}


HEADER_LABELS = ("label", "labels", "class", "target", "y")


def _read_labels_file(path: Path) -> dict[str, int]:
    """Lines ``filename label`` (comma, tab or space separated) and ``#`` comments. The first line
    is a header exactly when its label field is one of ``label``, ``labels``, ``class``,
    ``target``, ``y`` (any case); any other label that is not an integer is an error naming its
    line (line 1 included: a mistyped first label is not silently taken for a header). A file
    named twice is an error."""
    table: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.replace(",", " ").split()
        if len(fields) != 2:
            raise DataError(f"labels file {str(path)!r} line {number}: expected 'filename label'")
        if not table and number == first_line(path) and fields[1].lower() in HEADER_LABELS:
            continue  # the header
        try:
            label = int(fields[1])
        except ValueError:
            raise DataError(f"labels file {str(path)!r} line {number}: label {fields[1]!r} "
                             "is not an integer (a header line must name the column "
                             f"{' / '.join(HEADER_LABELS)})") from None
        if fields[0] in table:
            raise DataError(f"labels file {str(path)!r} line {number}: {fields[0]!r} is labelled "
                             "twice")
        table[fields[0]] = label
    return table


def first_line(path: Path) -> int:
    """Number of the first line of ``path`` that is neither blank nor a comment."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.split("#", 1)[0].strip():
            return number
    return 0


@register_dataset("imagefolder", masks=lambda options: options.get("boxes") is not None)
def imagefolder(*, root: str | os.PathLike, labels_file: str | os.PathLike | None = None,
                boxes: str | os.PathLike | None = None, box_classes: str = "label") -> Dataset:
    """An image folder. With class subfolders (ImageNet's ``val/n01440764/*.JPEG`` layout) the
    label is the subfolder's index in sorted order (the standard ImageNet index for WordNet ids).
    A flat folder takes labels from ``labels_file`` (``filename label`` lines) or has none.

    ``boxes``: a folder of PASCAL-VOC-format XML files, one per image with the image's file stem
    (ImageNet's official validation boxes, ``ILSVRC2012_val_00000001.xml``); each sample's mask is
    the union of the boxes of its class (``box_classes="label"``: the box ``<name>`` equals the
    class subfolder's WordNet id) or of all its boxes (``"all"``); see ``harness.datasets.boxes``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"imagefolder: root {str(root)!r} is not a folder")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    items: list[tuple[str, Path, int | None]] = []
    class_names = None
    if subfolders and labels_file is None:
        class_names = tuple(p.name for p in subfolders)
        for index, folder in enumerate(subfolders):
            items += [(f"{folder.name}/{f.name}", f, index) for f in sorted(folder.iterdir())
                      if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        table = _read_labels_file(Path(labels_file)) if labels_file is not None else {}
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        missing = sorted(set(table) - {f.name for f in files})
        if missing:
            raise DataError(f"labels file names images not in {str(root)!r}: {missing[:5]}")
        items = [(f.name, f, table.get(f.name)) for f in files]
    if not items:
        raise DataError(f"imagefolder: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                         f"under {str(root)!r}")
    masks = [None] * len(items)
    if boxes is not None:
        masks = box_mask_loaders(boxes, items, class_names, box_classes)
    chosen = tuple(Sample(image_id, label, partial(read_image, path), mask)
                   for (image_id, path, label), mask in zip(items, masks, strict=True))
    return Dataset("imagefolder", chosen, class_names)

