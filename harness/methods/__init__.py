"""Saliency methods: ``saliency(name, model, x, target, **params) -> Tensor[N, H, W]``.

One family per module; importing this package registers them all. The adapter families
(``captum:<Class>``, ``gradcam:<CAMClass>``) import their optional library only when one of their
methods is asked for; plug-ins (``package.module:function``, entry points of group
``harness.methods``, modules named in a config's ``plugins:``) are found by ``get_method``.
"""

from harness.methods import (  # noqa: F401  (registration; the adapters register families)
    attention,
    baselines,
    cam,
    captum_adapter,
    gradcam_adapter,
    gradients,
    rise,
    smoothing,
)
from harness.methods._core import (
    FAMILIES,
    METHODS,
    NonFiniteMapError,
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
from harness.methods.entry import Family, Method

__all__ = [
    "FAMILIES", "METHODS", "Family", "Method", "NonFiniteMapError", "get_method", "guarded",
    "list_methods", "raw_attribution", "raw_attribution_batched", "reduce_channels",
    "register_attribution", "register_method", "saliency", "saliency_batched", "signed_channels",
]
