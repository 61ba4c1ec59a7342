"""Per-image random generators that do not depend on batch composition, device or process.

Every random choice of a metric or method is drawn from a generator seeded by the experiment
seed and the image (its id, or its index when there are no ids), so an image's numbers are the
same whatever batch, rank or device computed them. Python's ``hash()`` is salted per process, so
the key is hashed with SHA-256 instead.
"""

from __future__ import annotations

import hashlib

import torch


def image_seed(seed: int, key: int | str, *, salt: str = "") -> int:
    """A 63-bit seed from (``seed``, an image id or index, an optional ``salt`` naming the use)."""
    text = f"{int(seed)}\x1f{type(key).__name__}:{key}\x1f{salt}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def image_generator(seed: int, key: int | str, *, salt: str = "") -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``image_seed(seed, key, salt=salt)``; draw on the CPU
    and move the result to the device, so numbers agree across devices."""
    return torch.Generator().manual_seed(image_seed(seed, key, salt=salt))


def content_seed(seed: int, tensor: torch.Tensor, *, salt: str = "") -> int:
    """A 63-bit seed from (``seed``, the exact values and shape of ``tensor``, ``salt``): for
    methods, which see pixels but no ids, so that an image's random draws do not depend on its
    position in a batch (nor on the batch size, the rank or the device: inputs are made on the
    CPU and moved, bit for bit)."""
    values = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    digest = hashlib.sha256(f"{int(seed)}\x1f{salt}\x1f{tuple(values.shape)}".encode())
    digest.update(values.tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def content_generator(seed: int, tensor: torch.Tensor, *, salt: str = "") -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``content_seed(seed, tensor, salt=salt)``."""
    return torch.Generator().manual_seed(content_seed(seed, tensor, salt=salt))
