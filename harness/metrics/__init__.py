"""Metrics: pure functions returning frozen results, each registered in ``METRICS`` (see
``harness.metrics.registry``). Every module of this package (and ``harness.sanity``) is imported
here, so a new metric is one module: its registration runs at import, with no edit elsewhere."""

import importlib
import pkgutil

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
from harness.metrics.imputation import (
    ImputationNotConvergedError,
    SingularImputationError,
    linear_impute,
    mean_impute,
    zero_impute,
)
from harness.metrics.registry import (
    METRICS,
    Metric,
    Unit,
    get_metric,
    list_metrics,
    register_metric,
)
from harness.metrics.road import (
    RoadAlignmentError,
    RoadResult,
    RoadSettings,
    road,
    road_combined,
)
from harness.metrics.substrates import gkern, list_substrates, make_substrate

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
importlib.import_module("harness.sanity")

__all__ = [
    "ABPCResult", "CurveResult", "METRICS", "Metric", "Unit", "abpc", "auc", "deletion",
    "get_metric", "gkern", "insertion", "lerf", "list_metrics", "list_substrates",
    "make_substrate", "morf", "perturbation_curves", "pixel_ranks", "register_metric",
    "ImputationNotConvergedError", "RoadAlignmentError", "RoadResult", "RoadSettings",
    "SingularImputationError", "linear_impute",
    "mean_impute", "road", "road_combined", "zero_impute",
]
