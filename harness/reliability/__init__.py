"""Can this metric be trusted here? Reliability statistics of a run's metric columns, computed
from its stored per-image records without recomputing anything (docs/reliability.md):

- ``agreement``: Krippendorff's alpha of the method ranking across images (images as raters) with
  bootstrap intervals, the agreement matrix between columns, internal consistency of variants;
- ``ranking``: LATEC's robust aggregate ranking (median per column, mean rank per criterion) with
  bootstrap intervals, and where the control methods land;
- ``report``: the section every finished run writes (``tables/reliability.*``,
  ``figures/agreement.png``) and ``harness reliability RUN_DIR``.

The meta-evaluation of the metrics under perturbations (MetaQuantus) is ``harness.meta``.
"""

from harness.reliability.agreement import (
    agreement,
    alpha_interval,
    consistency,
    krippendorff_alpha,
    method_means,
    score_matrix,
)
from harness.reliability.ranking import aggregate_ranking, control_ranks
from harness.reliability.report import (
    Reliability,
    reliability,
    reliability_for,
    write_reliability,
)

__all__ = ["Reliability", "agreement", "aggregate_ranking", "alpha_interval", "consistency",
           "control_ranks", "krippendorff_alpha", "method_means", "reliability",
           "reliability_for", "score_matrix", "write_reliability"]
