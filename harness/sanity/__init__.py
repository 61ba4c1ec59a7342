"""Sanity checks for saliency maps: model-parameter and data randomization (Adebayo et al.
2018) with the paper's similarity measures, in both layer orders; Smooth and Efficient MPRT
(Hedström et al. 2024); input invariance (Kindermans et al. 2019); the random-logit test."""

from harness.sanity.data_randomization import (
    DataRandomizationResult,
    data_randomization,
    render_digits,
    train_pair,
)
from harness.sanity.efficient_mprt import EfficientMPRTResult, efficient_mprt
from harness.sanity.input_invariance import InputInvarianceResult, input_invariance
from harness.sanity.random_logit import RandomLogitResult, other_classes, random_logit
from harness.sanity.randomization import (
    RandomizationResult,
    model_randomization,
    randomize,
    resolve_blocks,
)
from harness.sanity.similarity import MEASURES, UndefinedSimilarity
from harness.sanity.smooth_mprt import SmoothMPRTResult, smooth_mprt

__all__ = [
    "MEASURES", "DataRandomizationResult", "RandomizationResult", "UndefinedSimilarity",
    "data_randomization", "model_randomization", "randomize", "render_digits", "resolve_blocks",
    "train_pair",
    "RandomLogitResult", "other_classes", "random_logit",
    "EfficientMPRTResult", "SmoothMPRTResult", "efficient_mprt", "smooth_mprt",
    "InputInvarianceResult", "input_invariance",
]
