"""harness: measure how good saliency maps are.

Run an experiment and read its results::

    config = harness.load_config("experiments/quickstart.yaml", overrides=["data.limit=2"])
    result = harness.run(config)                 # RunResult: output_dir, table, records, run_id
    frame = harness.load_frame(result.output_dir)  # every per-image record, curves included

Score maps made elsewhere, or compute maps::

    scores = harness.score_maps("maps.npz", "efficientnet_lite0", "samples", ["deletion"])
    model = harness.load_model("efficientnet_lite0")
    data = harness.load_dataset("samples")
    x = harness.preprocess([s.load() for s in data], model.harness_info)
    target = harness.resolve_targets(model, x, [s.label for s in data], data.ids)
    maps = harness.saliency("vanilla", model, x, target)        # [N, H, W]

Plug in a method, metric, dataset or model of one's own with ``register_method``,
``register_metric``, ``register_dataset``, ``register_model`` (in a module named in a config's
``plugins:``, or an installed entry point); ``list_*`` and ``get_*`` read the registries.
"""

import harness.sanity  # noqa: F401  (registers the sanity checks as metrics)
from harness.allocator import tune_cpu_allocator
from harness.api import RunResult, load_config, log_run, run, score_maps, table
from harness.datasets import (
    Dataset,
    Sample,
    get_dataset,
    list_datasets,
    load_dataset,
    register_dataset,
)
from harness.errors import (
    ConfigError,
    DataError,
    HarnessError,
    MethodError,
    MetricError,
    ModelError,
    PluginError,
    RunFolderError,
    TrackingError,
    UnknownNameError,
)
from harness.images import crop_pixels, deprocess, preprocess
from harness.methods import (
    Method,
    get_method,
    list_methods,
    register_attribution,
    register_method,
    saliency,
)
from harness.metrics.registry import Metric, Unit, get_metric, list_metrics, register_metric
from harness.models import (
    ModelInfo,
    attach_info,
    get_model_builder,
    list_models,
    load_model,
    model_info,
    register_model,
)
from harness.store import load_frame, load_records
from harness.targets import resolve_targets
from harness.version import __version__

__all__ = [
    # results first: run, read
    "load_config", "run", "RunResult", "load_frame", "load_records", "table", "log_run",
    "score_maps",
    # maps
    "saliency", "preprocess", "deprocess", "crop_pixels", "resolve_targets",
    # registries
    "list_methods", "get_method", "register_method", "register_attribution", "Method",
    "list_metrics", "get_metric", "register_metric", "Metric", "Unit",
    "list_datasets", "get_dataset", "register_dataset", "load_dataset", "Dataset", "Sample",
    "list_models", "get_model_builder", "register_model", "load_model", "attach_info",
    "model_info", "ModelInfo",
    # the CPU allocator (the runs call it)
    "tune_cpu_allocator",
    # errors
    "HarnessError", "ConfigError", "UnknownNameError", "PluginError", "DataError", "ModelError",
    "MethodError", "MetricError", "RunFolderError", "TrackingError",
    "__version__",
]
