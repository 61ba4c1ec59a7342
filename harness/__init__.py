"""harness: measure how good saliency maps are.

Public API::

    model = harness.load_model("efficientnet_lite0")
    data = harness.load_dataset("samples")
    x = harness.preprocess([s.load() for s in data], model.harness_info)
    target = harness.resolve_targets(model, x, [s.label for s in data], data.ids)
    maps = harness.saliency("vanilla", model, x, target)        # [N, H, W]
    records = harness.load_records("outputs/quickstart")        # a run's per-image records
"""

from harness.data import (
    Dataset,
    Sample,
    deprocess,
    list_datasets,
    load_dataset,
    preprocess,
    resolve_targets,
)
from harness.methods import Method, get_method, list_methods, saliency
from harness.models import ModelInfo, attach_info, list_models, load_model, model_info
from harness.store import load_frame, load_records

__version__ = "0.1.0"

__all__ = [
    "Dataset", "Method", "ModelInfo", "Sample", "attach_info", "deprocess", "get_method",
    "list_datasets", "list_methods", "list_models", "load_dataset", "load_frame", "load_model",
    "load_records", "model_info",
    "preprocess", "resolve_targets", "saliency", "__version__",
]
