"""Datasets: the registry and its built-in members (importing this package registers them).

- ``samples``: real photos that ship offline with scikit-image and matplotlib;
- ``cs231n_npz``: the cs231n ``imagenet_val_25.npz`` file the seed notebook used;
- ``imagefolder``: an ImageNet-val-style folder (class subfolders, or a flat folder + labels
  file), optionally with per-image VOC-format bounding boxes as ground-truth masks;
- ``pasted_objects``: bundled objects pasted onto bundled backgrounds, masks known by
  construction.
"""

from harness.datasets import builtin, pasted  # noqa: F401  (registration)
from harness.datasets.core import (
    DATASETS,
    MASKED_DATASETS,
    Dataset,
    Sample,
    get_dataset,
    has_masks,
    list_datasets,
    load_dataset,
    load_masks,
    register_dataset,
    subset,
)

__all__ = ["DATASETS", "MASKED_DATASETS", "Dataset", "Sample", "get_dataset", "has_masks",
           "list_datasets", "load_dataset", "load_masks", "register_dataset", "subset"]
