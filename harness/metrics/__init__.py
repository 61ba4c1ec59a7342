"""Faithfulness metrics: pure functions returning frozen results."""

from harness.metrics.causal import (
    ABPCResult,
    CurveResult,
    abpc,
    auc,
    deletion,
    insertion,
    lerf,
    morf,
    perturbation_curves,
    pixel_ranks,
)
from harness.metrics.substrates import gkern, list_substrates, make_substrate

__all__ = [
    "ABPCResult", "CurveResult", "abpc", "auc", "deletion", "gkern", "insertion", "lerf",
    "list_substrates", "make_substrate", "morf", "perturbation_curves", "pixel_ranks",
]
