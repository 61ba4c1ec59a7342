"""What produced a run's records: the code's commit, the weights and the images. Stored in the run
folder's state when a run starts; ``--resume`` refuses to add records produced by other code,
other weights or other images (records from two versions could not be told apart)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from torch import nn

from harness.data import Dataset


def git_commit(path: str | Path | None = None) -> str:
    """The commit of the harness code that runs (``-dirty`` if it has uncommitted changes), or
    ``unknown`` outside a git checkout."""
    path = Path(__file__).parent if path is None else path
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ids_fingerprint(dataset: Dataset) -> str:
    """SHA-256 over the image ids and labels in order (cheap: no pixel is read; the pixel-level
    ``Dataset.fingerprint`` is computed when the run ends)."""
    digest = hashlib.sha256(dataset.name.encode())
    for sample in dataset:
        digest.update(f"{sample.id}\x1f{sample.label}\x1e".encode())
    return digest.hexdigest()


def provenance(model: nn.Module, dataset: Dataset) -> dict[str, str]:
    from harness.models import weights_fingerprint

    return {"commit": git_commit(), "weights_sha256": weights_fingerprint(model),
            "ids_sha256": ids_fingerprint(dataset)}


def mismatch(stored: dict, current: dict) -> str | None:
    """What differs between the provenance that started a run and this one (None: nothing)."""
    names = {"commit": "the harness code (commit)", "weights_sha256": "the model's weights",
             "ids_sha256": "the images (ids and labels)"}
    for key, what in names.items():
        if key in stored and stored[key] != current.get(key):
            return f"{what} differ: {stored[key][:16]} started the run, this is {current[key][:16]}"
    return None
