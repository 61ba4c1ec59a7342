"""Datasets (images with labels and stable ids) and the model-specific preprocessing.

Registered datasets (``load_dataset(name, **options)``):
- ``samples``: real photos that ship offline with scikit-image and matplotlib;
- ``cs231n_npz``: the cs231n ``imagenet_val_25.npz`` file the seed notebook used;
- ``imagefolder``: an ImageNet-val-style folder (class subfolders, or a flat folder + labels file),
  optionally with per-image VOC-format bounding boxes as ground-truth masks;
- ``pasted_objects``: bundled objects pasted onto bundled backgrounds, masks known by construction.

Every dataset is a sorted, deterministic sequence of ``Sample``s; ``limit`` and ``seed`` pick a
subset (the first ``limit``, or a seeded random choice kept in sorted order). Images load lazily.
A sample's ``label`` is ``None`` where the dataset has none: the harness then explains the model's
top-1 prediction (``resolve_targets``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from harness.io import atomic_save
from harness.models import ModelInfo
from harness.registry import lookup, names, register

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"}


@dataclass(frozen=True)
class Sample:
    """One image: a stable ``id``, its ``label`` (class index or None) and a lazy loader; where
    the dataset has ground truth, a lazy ``mask_loader`` of the object mask."""

    id: str
    label: int | None
    loader: Callable[[], np.ndarray]
    mask_loader: Callable[[], np.ndarray] | None = None

    def load(self) -> np.ndarray:
        """The image as uint8 ``[H, W, 3]`` RGB; a loading error names the image."""
        try:
            return self.loader()
        except ValueError as error:
            if self.id in str(error):
                raise
            raise ValueError(f"image {self.id!r}: {error}") from None

    def mask(self) -> np.ndarray | None:
        """The ground-truth object mask as bool ``[H, W]`` (the image's size), or None."""
        if self.mask_loader is None:
            return None
        mask = np.asarray(self.mask_loader())
        if mask.ndim != 2 or mask.dtype != bool:
            raise ValueError(f"mask of image {self.id!r} must be bool [H, W], got {mask.dtype} "
                             f"{mask.shape}")
        return mask


@dataclass(frozen=True)
class Dataset:
    """A named sequence of samples. ``filter_model``: the model whose predictions chose the images
    (``pasted_objects`` keeps only what its filter model recognises), None if none did."""

    name: str
    samples: tuple[Sample, ...]
    class_names: tuple[str, ...] | None = None
    filter_model: str | None = None

    def __post_init__(self) -> None:
        ids = [sample.id for sample in self.samples]
        if len(set(ids)) != len(ids):
            seen, duplicates = set(), []
            for image_id in ids:
                if image_id in seen and image_id not in duplicates:
                    duplicates.append(image_id)
                seen.add(image_id)
            raise ValueError(f"dataset {self.name!r}: duplicate image ids {duplicates[:5]} (every "
                             "image needs its own id: records and maps are keyed by it)")

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def ids(self) -> list[str]:
        return [sample.id for sample in self.samples]

    def fingerprint(self) -> str:
        """SHA-256 over ids, labels and pixel bytes: two runs on equal data share it."""
        digest = hashlib.sha256(self.name.encode())
        for sample in self.samples:
            digest.update(f"{sample.id}:{sample.label}".encode())
            digest.update(sample.load().tobytes())
        return digest.hexdigest()


DATASETS: dict[str, Callable[..., Dataset]] = {}
# datasets that can carry ground-truth masks: name -> options -> whether these options give masks
MASKED_DATASETS: dict[str, Callable[[dict], bool]] = {}


def has_masks(name: str, options: dict) -> bool:
    """Whether dataset ``name`` with ``options`` gives ground-truth masks (localisation)."""
    rule = MASKED_DATASETS.get(name)
    return bool(rule and rule(options))


def list_datasets(pattern: str = "*") -> list[str]:
    return names(DATASETS, pattern)


def load_dataset(name: str, *, limit: int | None = None, seed: int | None = None,
                 **options) -> Dataset:
    """Dataset ``name`` (see ``list_datasets()``), optionally reduced to ``limit`` images."""
    dataset = lookup(DATASETS, "dataset", name)(**options)
    return subset(dataset, limit=limit, seed=seed)


def subset(dataset: Dataset, *, limit: int | None, seed: int | None) -> Dataset:
    """The first ``limit`` samples, or (with ``seed``) a seeded random choice in sorted order."""
    if limit is None or limit >= len(dataset):
        return dataset
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if seed is None:
        chosen = range(limit)
    else:
        chosen = sorted(np.random.default_rng(seed).choice(len(dataset), limit, replace=False))
    samples = tuple(dataset.samples[i] for i in chosen)
    return Dataset(dataset.name, samples, dataset.class_names, dataset.filter_model)


# ----------------------------------------------------------------------------- image I/O


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
            raise ValueError(f"the image holds {int((~np.isfinite(image)).sum())} NaN or inf "
                             "values")
        if image.dtype.kind in "iu" and (image.min() < 0 or image.max() > 255):
            raise ValueError(f"integer image of dtype {image.dtype} with values in "
                             f"[{image.min()}, {image.max()}]: expected 0..255 (uint8) or "
                             "0..65535 (uint16)")
        image = np.clip(np.round(image * 255 if image.max() <= 1.0 else image), 0, 255)
        image = image.astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3:
        raise ValueError(f"image must be [H, W] or [H, W, C], got shape {image.shape}")
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
        raise ValueError(f"cannot read image file {str(path)!r}: {error}") from None


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _wide_to_rgb(image: Image.Image, path) -> np.ndarray:
    """16-bit (and 32-bit integer) grayscale scaled to 8 bits (65535 -> 255), not clipped as PIL's
    ``convert("RGB")`` does (which turns a 16-bit photo white); float images must lie in [0, 1]."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError(f"cannot read image file {str(path)!r}: a float ({image.mode}) "
                             "image must hold finite values in [0, 1]")
        return to_rgb(values.astype(np.float64))
    if values.min() < 0 or values.max() > 65535:
        raise ValueError(f"cannot read image file {str(path)!r}: {image.mode} values in "
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
        raise ValueError(f"image of {width}x{height} is smaller than the crop {crop_size}")
    left = int(round((width - crop_size) / 2.0))
    top = int(round((height - crop_size) / 2.0))
    return np.asarray(pil.crop((left, top, left + crop_size, top + crop_size)))


def normalize(pixels: torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> the model's input space ``(x - mean) / std``."""
    mean = torch.tensor(info.mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def deprocess(x: torch.Tensor, info: ModelInfo, *, rescale: bool = False) -> torch.Tensor:
    """Exact inverse of the normalisation: ``[N, 3, H, W]`` model input -> pixels ``x * std + mean``
    (in [0, 1] for images that came from ``preprocess``). ``rescale`` maps each image's range to
    [0, 1] as the seed's ``deprocess`` does."""
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
    """uint8 images ``[H, W, 3]`` -> model input ``[N, 3, S, S]`` (float32, contiguous NCHW):
    resize the shorter side to ``info.resize_size``, centre-crop ``info.input_size``, scale to
    [0, 1], normalise with the model's mean and std. An image whose shorter side is under half
    the model's input size is upsampled more than 2x: a warning names it (``ids``)."""
    for index, image in enumerate(images):
        side = min(np.asarray(image).shape[:2])
        if side < info.input_size / 2:
            name = ids[index] if ids is not None else f"#{index}"
            warnings.warn(f"image {name} is {np.asarray(image).shape[1]}x"
                          f"{np.asarray(image).shape[0]} pixels, much smaller than the model's "
                          f"{info.input_size}x{info.input_size} input: it is upsampled "
                          f"{info.resize_size / side:.1f}x", stacklevel=2)
    crops = [resize_and_crop(image, info.resize_size, info.input_size,
                             getattr(info, "interpolation", "bilinear"))
             for image in images]
    pixels = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    return normalize(pixels.contiguous(), info).to(device).contiguous()


def crop_pixels(images: Sequence[np.ndarray], info: ModelInfo) -> np.ndarray:
    """The resized, centre-cropped uint8 images ``[N, S, S, 3]`` the model sees (for figures)."""
    return np.stack([resize_and_crop(image, info.resize_size, info.input_size,
                                     getattr(info, "interpolation", "bilinear"))
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
        raise ValueError(f"mask of {width}x{height} is smaller than the crop {crop_size}")
    left = int(round((width - crop_size) / 2.0))
    top = int(round((height - crop_size) / 2.0))
    return np.asarray(pil.crop((left, top, left + crop_size, top + crop_size))) > 127


def preprocess_masks(masks: Sequence[np.ndarray], info: ModelInfo, *,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """bool masks ``[H, W]`` (each its image's size) -> ``[N, S, S]`` bool on ``device``, resized
    and centre-cropped exactly as ``preprocess`` does the images (nearest-neighbour)."""
    crops = [resize_and_crop_mask(mask, info.resize_size, info.input_size) for mask in masks]
    return torch.from_numpy(np.stack(crops)).to(device)


def load_masks(samples: Sequence[Sample], info: ModelInfo, *,
               device: str | torch.device = "cpu") -> torch.Tensor:
    """The ground-truth masks of ``samples`` in the model's input geometry, bool ``[N, S, S]``.
    A sample without a mask, or whose mask is cropped away, raises ``ValueError`` naming it
    before any mask is preprocessed (localisation metrics need ground truth for every image)."""
    missing = [sample.id for sample in samples if sample.mask_loader is None]
    if missing:
        raise ValueError(f"image {missing[0]!r} ({len(missing)} of {len(samples)}) has no "
                         "ground-truth mask; datasets with masks: pasted_objects, imagefolder "
                         "with boxes=FOLDER")
    masks = preprocess_masks([sample.mask() for sample in samples], info, device=device)
    empty = (~masks.flatten(1).any(dim=1)).nonzero()
    if len(empty):
        raise ValueError(f"the mask of image {samples[int(empty[0, 0])].id!r} is empty after "
                         "resizing and centre-cropping to the model's input")
    return masks


def resolve_targets(model: torch.nn.Module, x: torch.Tensor, labels: Sequence[int | None],
                    ids: Sequence[str], *, mode: str = "label") -> torch.Tensor:
    """Class index to explain per image, ``[N]`` long.

    ``mode="label"``: the dataset label, or the model's top-1 prediction where there is none;
    ``mode="predicted"``: always the top-1 prediction on the clean image (RISE's convention).
    A label outside ``[0, num_classes)`` raises ``ValueError`` naming the image and the value.
    """
    if mode not in ("label", "predicted"):
        raise ValueError(f"target mode {mode!r} is not one of: label, predicted")
    with torch.inference_mode():
        logits = model(x)
    num_classes = logits.shape[1]
    predicted = logits.argmax(dim=1).cpu()
    targets = []
    for index, (label, image_id) in enumerate(zip(labels, ids, strict=True)):
        if mode == "predicted" or label is None:
            targets.append(int(predicted[index]))
            continue
        if not 0 <= int(label) < num_classes:
            raise ValueError(
                f"label {label} of image {image_id!r} is out of range: the model has "
                f"{num_classes} classes (0..{num_classes - 1})"
            )
        targets.append(int(label))
    return torch.tensor(targets, dtype=torch.long, device=x.device)


# ----------------------------------------------------------------------------- datasets


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle_left":
        return to_rgb(skimage.data.stereo_motorcycle()[0])
    return to_rgb(getattr(skimage.data, name)())


def _grace_hopper() -> np.ndarray:
    import matplotlib

    return read_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")


SAMPLE_IMAGES: dict[str, Callable[[], np.ndarray]] = {
    **{name: partial(_skimage, name) for name in
       ("chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "camera", "clock",
        "immunohistochemistry", "hubble_deep_field", "colorwheel", "logo")},
    "grace_hopper": _grace_hopper,
}
DEFAULT_SAMPLES = ("chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "grace_hopper")


@register(DATASETS, "dataset", "samples")
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


@register(DATASETS, "dataset", "cs231n_npz")
def cs231n_npz(*, path: str | os.PathLike) -> Dataset:
    """The cs231n ``imagenet_val_25.npz`` format: ``X`` uint8 ``[N, H, W, 3]``, ``y`` ``[N]`` and
    class names as ``label_map`` (the original file's pickled dict index -> name, read with a
    loader that admits only a dict of ints to strings) or as a plain string array
    ``label_names``. Nothing in the file is executed: any other pickled content is refused."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cs231n_npz: file {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"cs231n_npz: {str(path)!r} is not an .npz archive (a zip of .npy "
                         "arrays); refusing to read it")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("X", "y") if key not in archive]
            if missing:
                raise ValueError(f"has no array {missing[0]!r} (needs X, y; has "
                                 f"{', '.join(archive.files)})")
            images, labels = archive["X"], archive["y"]
            names = archive["label_names"] if "label_names" in archive else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"cs231n_npz: cannot read {str(path)!r}: {error}") from None
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise ValueError(f"cs231n_npz: {str(path)!r} has X {images.shape} and y {labels.shape}; "
                         "expected X [N, H, W, 3] and y [N]")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"cs231n_npz: {str(path)!r}: y must hold integer class indices, got "
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
                raise ValueError(f"cs231n_npz: {str(path)!r}: label_map must be a dict (or store "
                                 "class names as a string array 'label_names')")
            try:
                value = _LabelMapUnpickler(member, encoding="latin1").load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError,
                    ValueError) as error:
                raise ValueError(f"cs231n_npz: {str(path)!r}: refusing its label_map: {error}. "
                                 "Store class names as a string array 'label_names' "
                                 "instead") from None
    item = value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    if not (isinstance(item, dict) and all(isinstance(k, int | np.integer) and isinstance(v, str)
                                           for k, v in item.items())):
        raise ValueError(f"cs231n_npz: {str(path)!r}: label_map must be a dict of class index -> "
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
            raise ValueError(f"labels file {str(path)!r} line {number}: expected 'filename label'")
        if not table and number == first_line(path) and fields[1].lower() in HEADER_LABELS:
            continue  # the header
        try:
            label = int(fields[1])
        except ValueError:
            raise ValueError(f"labels file {str(path)!r} line {number}: label {fields[1]!r} "
                             "is not an integer (a header line must name the column "
                             f"{' / '.join(HEADER_LABELS)})") from None
        if fields[0] in table:
            raise ValueError(f"labels file {str(path)!r} line {number}: {fields[0]!r} is labelled "
                             "twice")
        table[fields[0]] = label
    return table


def first_line(path: Path) -> int:
    """Number of the first line of ``path`` that is neither blank nor a comment."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.split("#", 1)[0].strip():
            return number
    return 0


@register(DATASETS, "dataset", "imagefolder")
def imagefolder(*, root: str | os.PathLike, labels_file: str | os.PathLike | None = None,
                boxes: str | os.PathLike | None = None, box_classes: str = "label") -> Dataset:
    """An image folder. With class subfolders (ImageNet's ``val/n01440764/*.JPEG`` layout) the
    label is the subfolder's index in sorted order (the standard ImageNet index for WordNet ids).
    A flat folder takes labels from ``labels_file`` (``filename label`` lines) or has none.

    ``boxes``: a folder of PASCAL-VOC-format XML files, one per image with the image's file stem
    (ImageNet's official validation boxes, ``ILSVRC2012_val_00000001.xml``); each sample's mask is
    the union of the boxes of its class (``box_classes="label"``: the box ``<name>`` equals the
    class subfolder's WordNet id) or of all its boxes (``"all"``). See ``harness.ground_truth``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"imagefolder: root {str(root)!r} is not a folder")
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
            raise ValueError(f"labels file names images not in {str(root)!r}: {missing[:5]}")
        items = [(f.name, f, table.get(f.name)) for f in files]
    if not items:
        raise ValueError(f"imagefolder: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                         f"under {str(root)!r}")
    masks = [None] * len(items)
    if boxes is not None:
        from harness.ground_truth import box_mask_loaders

        masks = box_mask_loaders(boxes, items, class_names, box_classes)
    chosen = tuple(Sample(image_id, label, partial(read_image, path), mask)
                   for (image_id, path, label), mask in zip(items, masks, strict=True))
    return Dataset("imagefolder", chosen, class_names)


@register(DATASETS, "dataset", "pasted_objects")
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
    fixes every draw. How it is made and its limits: ``harness.ground_truth``."""
    from harness import ground_truth

    kept, filter_model = ground_truth.pasted_samples(
        size=size, seed=paste_seed, model=model, canvas=canvas, scale=scale,
        objects=tuple(objects or ground_truth.OBJECTS), max_candidates=max_candidates,
        backgrounds=tuple(backgrounds or ground_truth.BACKGROUNDS))
    return Dataset("pasted_objects", tuple(Sample(*item) for item in kept),
                   filter_model=filter_model)


# ground truth for localisation metrics: pasted objects always, an image folder with ``boxes``
MASKED_DATASETS["pasted_objects"] = lambda options: True
MASKED_DATASETS["imagefolder"] = lambda options: options.get("boxes") is not None


# ------------------------------------------------------------------------ saliency maps on disk


def save_maps(path: str | os.PathLike, maps: torch.Tensor | np.ndarray, ids: Sequence[str],
              **extra: np.ndarray) -> None:
    """Write maps ``[N, H, W]`` with their image ids to an ``.npz`` (keys ``maps``, ``ids``)."""
    array = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    ids = list(ids)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"save_maps: duplicate image ids {duplicates[:5]}")
    if not str(path).endswith(".npz"):  # numpy's savez would append it to the temporary name
        path = f"{path}.npz"
    atomic_save(path, lambda temporary: np.savez_compressed(
        temporary, maps=array.astype(np.float32), ids=np.asarray(ids, dtype=str), **extra))


def load_maps(path: str | os.PathLike) -> tuple[np.ndarray, list[str] | None]:
    """Read saliency maps ``[N, H, W]`` (and ids, when stored) from any tool:

    - ``.npz`` with ``maps`` (or the only array) and optional ``ids``;
    - ``.npy``: the array alone (maps in dataset order);
    - ``.pt``/``.pth``: a tensor, or a dict with ``maps`` and optional ``ids``.

    ``[N, 1, H, W]`` is squeezed; ``[N, C, H, W]`` with C > 1 is an error (reduce channels first).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"maps file {str(path)!r} does not exist")
    ids = None
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "maps" in archive:
                maps = archive["maps"]
            elif len([k for k in keys if k != "ids"]) == 1:
                maps = archive[[k for k in keys if k != "ids"][0]]
            else:
                raise ValueError(f"maps file {str(path)!r} has arrays {keys}; name one 'maps'")
            ids = [str(i) for i in archive["ids"]] if "ids" in archive else None
    elif suffix == ".npy":
        maps = np.load(path, allow_pickle=False)
    elif suffix in (".pt", ".pth"):
        content = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(content, dict):
            if "maps" not in content:
                raise ValueError(f"maps file {str(path)!r} holds a dict without 'maps'")
            ids = [str(i) for i in content["ids"]] if "ids" in content else None
            content = content["maps"]
        maps = torch.as_tensor(content).numpy()
    else:
        raise ValueError(f"maps file {str(path)!r}: unknown format {suffix!r} "
                         "(valid: .npz, .npy, .pt, .pth)")
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3:
        raise ValueError(f"maps in {str(path)!r} have shape {maps.shape}; expected [N, H, W]")
    if ids is not None and len(ids) != len(maps):
        raise ValueError(f"maps file {str(path)!r} has {len(maps)} maps but {len(ids)} ids")
    if ids is not None and len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"maps file {str(path)!r} has duplicate ids {duplicates[:5]}: each image "
                         "may have one map")
    return maps, ids
