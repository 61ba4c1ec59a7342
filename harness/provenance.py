"""What produced a run's records: the code's commit, the weights and the images. Stored in the run
folder's state when a run starts; ``--resume`` refuses to add records produced by other code,
other weights or other images (records from two versions could not be told apart)."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import torch
from torch import nn

from harness.datasets import Dataset
from harness.models import weights_fingerprint


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


def git_origin(path: str | Path | None = None) -> tuple[str | None, str | None]:
    """(branch, remote URL) of the harness checkout that runs, each None where git does not
    know it (a detached HEAD, no remote, no checkout); a password in the URL is dropped."""
    path = Path(__file__).parent if path is None else path

    def ask(*command: str) -> str | None:
        try:
            done = subprocess.run(["git", *command], cwd=path, capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        answer = done.stdout.strip()
        return answer if done.returncode == 0 and answer else None

    branch = ask("rev-parse", "--abbrev-ref", "HEAD")
    remote = ask("config", "--get", "remote.origin.url")
    if remote is not None:
        remote = re.sub(r"//[^/@]*@", "//", remote)
    return (None if branch == "HEAD" else branch), remote


def ids_fingerprint(dataset: Dataset) -> str:
    """SHA-256 over the image ids and labels in order (cheap: no pixel is read; the pixel-level
    ``Dataset.fingerprint`` is computed when the run ends)."""
    digest = hashlib.sha256(dataset.name.encode())
    for sample in dataset:
        digest.update(f"{sample.id}\x1f{sample.label}\x1e".encode())
    return digest.hexdigest()


def provenance(model: nn.Module, dataset: Dataset, device: str = "cpu") -> dict[str, str]:
    """What produces the records: the code's commit, the weights' and the image ids' digests,
    and the numerics of this process (torch's CPU thread count and the device type: a float
    reduction's order, and so its last bits, depends on both)."""
    return {"commit": git_commit(), "weights_sha256": weights_fingerprint(model),
            "ids_sha256": ids_fingerprint(dataset), "threads": str(torch.get_num_threads()),
            "device_type": torch.device(device).type}


IDENTITY = {"commit": "the harness code (commit)", "weights_sha256": "the model's weights",
            "ids_sha256": "the images (ids and labels)"}
NUMERICS = {"threads": "torch's CPU thread count", "device_type": "the device type"}


def mismatch(stored: dict, current: dict, *, numerics: bool = True) -> str | None:
    """What differs between the provenance that started a run and this one (None: nothing);
    ``numerics=False`` ignores the thread count and device type (a forced resume)."""
    names = {**IDENTITY, **(NUMERICS if numerics else {})}
    for key, what in names.items():
        if key in stored and stored[key] != current.get(key):
            return f"{what} differ: {stored[key][:16]} started the run, this is {current[key][:16]}"
    return None
