"""Datasets: images with labels and stable ids, in a registry of named builders.

Every dataset is a sorted, deterministic sequence of ``Sample``s; ``limit`` and ``seed`` pick a
subset (the first ``limit``, or a seeded random choice kept in sorted order). Images load lazily.
A sample's ``label`` is ``None`` where the dataset has none: the harness then explains the model's
top-1 prediction (``harness.targets.resolve_targets``). A dataset builder is registered with
``@register_dataset(name)`` (a function ``(**options) -> Dataset``); ``masks=True`` (or a rule of
the options) says that it gives ground-truth masks for the localisation metrics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harness.errors import DataError, PluginError
from harness.images import preprocess_masks
from harness.models import ModelInfo
from harness.registry import Registry


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
            raise DataError(f"image {self.id!r}: {error}") from None

    def mask(self) -> np.ndarray | None:
        """The ground-truth object mask as bool ``[H, W]`` (the image's size), or None."""
        if self.mask_loader is None:
            return None
        mask = np.asarray(self.mask_loader())
        if mask.ndim != 2 or mask.dtype != bool:
            raise DataError(f"mask of image {self.id!r} must be bool [H, W], got {mask.dtype} "
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
            raise DataError(f"dataset {self.name!r}: duplicate image ids {duplicates[:5]} (every "
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



def _adopt(name: str, builder: object, origin: str) -> Callable[..., Dataset]:
    if not callable(builder):
        raise PluginError(f"{origin}: {type(builder).__name__} is not a dataset builder "
                          "(a function (**options) -> harness.Dataset)")
    return builder


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset", "harness.datasets", adopt=_adopt)
# datasets that can carry ground-truth masks: name -> options -> whether these options give masks
MASKED_DATASETS: dict[str, Callable[[dict], bool]] = {}


def register_dataset(name: str, *, masks: bool | Callable[[dict], bool] = False
                     ) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator registering a dataset builder ``(**options) -> Dataset`` as ``name``.

    Args:
        name: the name configs use (``data.name``).
        masks: whether the dataset gives ground-truth masks (localisation metrics): True, or a
            rule ``options -> bool`` (an image folder has them only with ``boxes``).

    Returns:
        The decorator (it returns the builder unchanged).

    Raises:
        ConfigError: the name is taken.
    """

    def add(builder: Callable[..., Dataset]) -> Callable[..., Dataset]:
        DATASETS.add(name, builder)
        if masks:
            MASKED_DATASETS[name] = masks if callable(masks) else (lambda options: True)
        return builder

    return add


def has_masks(name: str, options: dict) -> bool:
    """Whether dataset ``name`` with ``options`` gives ground-truth masks (localisation)."""
    rule = MASKED_DATASETS.get(name)
    return bool(rule and rule(options))


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the datasets.

    Args:
        pattern: an fnmatch pattern.

    Returns:
        The sorted names: registered datasets and installed entry points of group
        ``harness.datasets``.

    Raises:
        Nothing.
    """
    return DATASETS.list(pattern)


def get_dataset(name: str) -> Callable[..., Dataset]:
    """The builder of dataset ``name``.

    Args:
        name: a dataset name (``list_datasets()``).

    Returns:
        The builder, a function ``(**options) -> Dataset``.

    Raises:
        UnknownNameError: no such dataset (the message lists the valid names).
    """
    return DATASETS.get(name)


def load_dataset(name: str, *, limit: int | None = None, seed: int | None = None,
                 **options) -> Dataset:
    """Dataset ``name`` built with ``options``, optionally reduced to ``limit`` images.

    Args:
        name: a name from ``list_datasets()``.
        limit: keep this many images (None: all).
        seed: with ``limit``, a seeded random choice (kept in sorted order) instead of the first.
        **options: the builder's keyword options (``root=...`` for ``imagefolder``).

    Returns:
        The ``Dataset``.

    Raises:
        UnknownNameError: no such dataset.
        DataError: the options or the files they name cannot be used.
    """
    dataset = get_dataset(name)(**options)
    if not isinstance(dataset, Dataset):
        raise PluginError(f"dataset {name!r}: its builder returned {type(dataset).__name__}, "
                          "not a harness.Dataset")
    return subset(dataset, limit=limit, seed=seed)


def subset(dataset: Dataset, *, limit: int | None, seed: int | None) -> Dataset:
    """The first ``limit`` samples, or (with ``seed``) a seeded random choice in sorted order."""
    if limit is None or limit >= len(dataset):
        return dataset
    if limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    if seed is None:
        chosen = range(limit)
    else:
        chosen = sorted(np.random.default_rng(seed).choice(len(dataset), limit, replace=False))
    samples = tuple(dataset.samples[i] for i in chosen)
    return Dataset(dataset.name, samples, dataset.class_names, dataset.filter_model)



def load_masks(samples: Sequence[Sample], info: ModelInfo, *,
               device: str | torch.device = "cpu") -> torch.Tensor:
    """The ground-truth masks of ``samples`` in the model's input geometry, bool ``[N, S, S]``.
    A sample without a mask, or whose mask is cropped away, raises ``ValueError`` naming it
    before any mask is preprocessed (localisation metrics need ground truth for every image)."""
    missing = [sample.id for sample in samples if sample.mask_loader is None]
    if missing:
        raise DataError(f"image {missing[0]!r} ({len(missing)} of {len(samples)}) has no "
                         "ground-truth mask; datasets with masks: pasted_objects, imagefolder "
                         "with boxes=FOLDER")
    masks = preprocess_masks([sample.mask() for sample in samples], info, device=device)
    empty = (~masks.flatten(1).any(dim=1)).nonzero()
    if len(empty):
        raise DataError(f"the mask of image {samples[int(empty[0, 0])].id!r} is empty after "
                         "resizing and centre-cropping to the model's input")
    return masks

