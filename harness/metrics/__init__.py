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
from harness.metrics.complexity import (
    ComplexityResult,
    complexity,
    effective_complexity,
    sparseness,
)
from harness.metrics.confidence import (
    ConfidenceResult,
    average_drop,
    confidence_change,
    increase_in_confidence,
    masked_image,
)
from harness.metrics.correlation import CorrelationResult, faithfulness_correlation
from harness.metrics.imputation import (
    ImputationNotConvergedError,
    SingularImputationError,
    linear_impute,
    mean_impute,
    zero_impute,
)
from harness.metrics.infidelity import InfidelityResult, infidelity
from harness.metrics.irof import IROFResult, irof
from harness.metrics.localisation import (
    LocalisationResult,
    PointingGameResult,
    PointingGameSummary,
    attribution_localisation,
    pointing_game,
    pointing_game_summary,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
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
from harness.metrics.robustness import (
    RobustnessResult,
    avg_sensitivity,
    local_lipschitz_estimate,
    max_sensitivity,
    relative_input_stability,
)
from harness.metrics.substrates import gkern, list_substrates, make_substrate

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
importlib.import_module("harness.sanity")

__all__ = [
    "ABPCResult", "CurveResult", "METRICS", "Metric", "Unit", "abpc", "auc", "deletion",
    "get_metric", "gkern", "insertion", "lerf", "list_metrics", "list_substrates",
    "make_substrate", "morf", "perturbation_curves", "pixel_ranks", "register_metric",
    "ConfidenceResult", "CorrelationResult", "InfidelityResult", "IROFResult", "average_drop",
    "confidence_change", "faithfulness_correlation", "increase_in_confidence", "infidelity",
    "irof", "masked_image",
]
__all__ += [  # robustness, localisation, complexity
    "ComplexityResult", "LocalisationResult", "PointingGameResult", "PointingGameSummary",
    "RobustnessResult", "attribution_localisation", "avg_sensitivity", "complexity",
    "effective_complexity", "local_lipschitz_estimate", "max_sensitivity", "pointing_game",
    "pointing_game_summary", "relative_input_stability", "relevance_mass_accuracy",
    "relevance_rank_accuracy", "sparseness", "top_k_intersection",
]
__all__ += [  # ROAD
    "ImputationNotConvergedError", "RoadAlignmentError", "RoadResult", "RoadSettings",
    "SingularImputationError", "linear_impute",
    "mean_impute", "road", "road_combined", "zero_impute",
]
