"""The C allocator's settings for runs on the CPU: keep freed memory for the next pass.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults, a block above
the dynamic mmap threshold (128 KiB, rising to at most 32 MiB as such blocks are freed) is mapped
fresh from the kernel and unmapped when freed, and free memory at the top of the heap beyond the
trim threshold is handed back to the kernel. A convnet's activations are such blocks: every
forward + backward then maps them again and the kernel zero-fills their pages on first touch.
How often that happens depends on the batch and on what the process allocated before, so the
same pass runs at different speeds from one process to the next, and larger batches run slower
than small ones: EfficientNet-Lite0's forward + backward at 224 x 224 on 2 CPU threads ran at a
median 42 images/s at batch 16 and 70 at batch 8 under the defaults, 80 and 79 with the settings
below, the same at batch 4 either way (``benchmarks/allocator.py``, ``docs/benchmarks.md``).

``tune_cpu_allocator()`` sets glibc's ``M_MMAP_THRESHOLD`` to 1 GiB (allocations below it come
from the heap and are reused; where the C library refuses that value, its documented maximum,
32 MiB) and ``M_TRIM_THRESHOLD`` to 2 GiB (free memory is kept for reuse rather than returned).
The cost: memory the run freed stays with the process until it ends, so its resident memory
stays at its peak (the peak itself: ``benchmarks/allocator.py`` prints it for both settings).
The runs of the harness (``harness run``, ``harness meta``, ``harness.score_maps``) call it when
their device is the CPU; ``HARNESS_CPU_ALLOCATOR=default`` in the environment keeps the C
library's defaults, and malloc settings the environment already makes (``MALLOC_*_``,
``GLIBC_TUNABLES``) are left alone. Elsewhere (not glibc: macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

from harness.errors import ConfigError

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30
MMAP_THRESHOLD_FALLBACK = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int
ENVIRONMENT = "HARNESS_CPU_ALLOCATOR"
CHOICES = ("tuned", "default")

_applied: dict | None = None


def _mallopt():
    """glibc's ``mallopt`` (None where the C library is not glibc or has none)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _user_settings() -> bool:
    """Whether the environment already sets glibc's malloc (``MALLOC_*_`` variables or a
    ``glibc.malloc`` tunable): those are the user's choice and are left alone."""
    return ("glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
            or any(name.startswith("MALLOC_") and name.endswith("_") for name in os.environ))


def tune_cpu_allocator() -> dict | None:
    """Keep freed memory for reuse in this process (glibc's ``mallopt``, see the module
    docstring); once per process, later calls return the first call's result.

    Returns:
        ``{"mmap_threshold": bytes, "trim_threshold": bytes}`` as set, or None where nothing was
        set (not glibc, ``HARNESS_CPU_ALLOCATOR=default``, or the environment sets glibc's
        malloc already: ``MALLOC_*_`` variables or ``GLIBC_TUNABLES=glibc.malloc...``).

    Raises:
        ConfigError: ``HARNESS_CPU_ALLOCATOR`` holds something other than ``tuned`` or
            ``default``.
    """
    global _applied
    choice = os.environ.get(ENVIRONMENT, "tuned").strip().lower() or "tuned"
    if choice not in CHOICES:
        raise ConfigError(f"{ENVIRONMENT}={choice!r} in the environment; valid: "
                          f"{', '.join(CHOICES)}")
    if choice == "default" or _user_settings():
        return None
    if _applied is not None:
        return dict(_applied)
    mallopt = _mallopt()
    if mallopt is None:
        return None
    mmap_threshold = next((value for value in (MMAP_THRESHOLD, MMAP_THRESHOLD_FALLBACK)
                           if mallopt(M_MMAP_THRESHOLD, value) == 1), None)
    if mmap_threshold is None or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return None
    _applied = {"mmap_threshold": mmap_threshold, "trim_threshold": TRIM_THRESHOLD}
    return dict(_applied)
