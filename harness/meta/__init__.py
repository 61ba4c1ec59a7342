"""Meta-evaluation of metrics (MetaQuantus, Hedström et al., TMLR 2023): how a metric's scores
react to minor perturbations (noise resilience: they should not move) and disruptive ones
(adversarial reactivity: they should), of the model's weights and of the input, computed with the
harness's own batched metric functions (docs/reliability.md).

- ``consistency``: IAC, IEC and MC on score arrays, as MetaQuantus defines them;
- ``perturb``: the seeded model and input perturbations;
- ``settings``: the ``meta:`` section of a config;
- ``evaluate``: the passes (1 unperturbed + 2 x spaces x iterations x K perturbed);
  ``harness.meta.evaluate.meta_evaluate``;
- ``report``: tables, the area plot, MLflow, ``harness meta CONFIG``
  (``harness.meta.report.load_meta``, ``run_meta``).

This package's ``__init__`` exports only what needs no config (the statistics and the settings):
``harness.config`` validates a config's ``meta:`` section with ``harness.meta.settings``, so
importing ``harness.meta`` must not import ``harness.config`` back; import ``evaluate`` and
``report`` by their module names.
"""

from harness.meta.consistency import (
    PerturbationScores,
    iac,
    iec_adversary,
    iec_resilience,
    meta_consistency,
    perturbation_scores,
)
from harness.meta.settings import MetaSettings, meta_settings

__all__ = ["MetaSettings", "PerturbationScores", "iac", "iec_adversary", "iec_resilience",
           "meta_consistency", "meta_settings", "perturbation_scores"]
