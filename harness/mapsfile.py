"""The maps file: saliency maps ``[N, H, W]`` with their image ids, as ``harness score`` reads
them and the runner keeps the figure images' maps (``.npz`` with ``maps`` and ``ids``; ``.npy``
and ``.pt`` are read too). Nothing in a maps file is executed: arrays are read without pickles and
``.pt`` files with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from harness.errors import DataError
from harness.files import atomic_save


def save_maps(path: str | os.PathLike, maps: torch.Tensor | np.ndarray, ids: Sequence[str],
              **extra: np.ndarray) -> None:
    """Write maps ``[N, H, W]`` with their image ids to an ``.npz`` (keys ``maps``, ``ids``)."""
    array = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    ids = list(ids)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"save_maps: duplicate image ids {duplicates[:5]}")
    if not str(path).endswith(".npz"):  # numpy's savez would append it to the temporary name
        path = f"{path}.npz"
    atomic_save(path, lambda temporary: np.savez_compressed(
        temporary, maps=array.astype(np.float32), ids=np.asarray(ids, dtype=str), **extra))


def _read(path: Path) -> tuple[object, list[str] | None]:
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
                raise DataError(f"maps file {str(path)!r} has arrays {keys}; name one 'maps'")
            ids = [str(i) for i in archive["ids"]] if "ids" in archive else None
    elif suffix == ".npy":
        maps = np.load(path, allow_pickle=False)
    elif suffix in (".pt", ".pth"):
        content = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(content, dict):
            if "maps" not in content:
                raise DataError(f"maps file {str(path)!r} holds a dict without 'maps'")
            ids = [str(i) for i in content["ids"]] if "ids" in content else None
            content = content["maps"]
        maps = torch.as_tensor(content).numpy()
    else:
        raise DataError(f"maps file {str(path)!r}: unknown format {suffix!r} "
                        "(valid: .npz, .npy, .pt, .pth)")
    return maps, ids


def load_maps(path: str | os.PathLike) -> tuple[np.ndarray, list[str] | None]:
    """Read saliency maps ``[N, H, W]`` (and ids, when stored) from any tool:

    - ``.npz`` with ``maps`` (or the only array) and optional ``ids``;
    - ``.npy``: the array alone (maps in dataset order);
    - ``.pt``/``.pth``: a tensor, or a dict with ``maps`` and optional ``ids``.

    ``[N, 1, H, W]`` is squeezed; ``[N, C, H, W]`` with C > 1 is an error (reduce channels first).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"maps file {str(path)!r} does not exist")
    try:
        maps, ids = _read(path)
        maps = np.asarray(maps, dtype=np.float32)
    except DataError:
        raise
    except (ValueError, TypeError, OSError, EOFError, RuntimeError, zipfile.BadZipFile,
            pickle.UnpicklingError) as error:  # numpy, zipfile and torch's reasons
        raise DataError(f"maps file {str(path)!r} cannot be read as maps: {error}. Save "
                        "[N, H, W] float arrays with numpy (no object arrays, no pickles) or "
                        "tensors with torch.save") from None
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3:
        raise DataError(f"maps in {str(path)!r} have shape {maps.shape}; expected [N, H, W]")
    if ids is not None and len(ids) != len(maps):
        raise DataError(f"maps file {str(path)!r} has {len(maps)} maps but {len(ids)} ids")
    if ids is not None and len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"maps file {str(path)!r} has duplicate ids {duplicates[:5]}: each image "
                         "may have one map")
    return maps, ids
