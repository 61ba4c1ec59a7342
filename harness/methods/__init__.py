"""Saliency methods: ``saliency(name, model, x, target, **params) -> Tensor[N, H, W]``.

One family per module; importing this package registers them all.
"""

from harness.methods import baselines, cam, gradients, smoothing  # noqa: F401  (registration)
from harness.methods._core import (
    METHODS,
    Method,
    get_method,
    guarded,
    list_methods,
    raw_attribution,
    raw_attribution_batched,
    reduce_channels,
    register_attribution,
    register_method,
    saliency,
    saliency_batched,
    signed_channels,
)

__all__ = [
    "METHODS", "Method", "get_method", "guarded", "list_methods", "raw_attribution",
    "raw_attribution_batched", "reduce_channels", "register_attribution", "register_method",
    "saliency", "saliency_batched", "signed_channels",
]
