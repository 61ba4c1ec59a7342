"""MetaQuantus' meta-consistency statistics on score arrays (Hedström, Bommer, Wickstrøm, Samek,
Lapuschkin & Höhne 2023, "The Meta-Evaluation Problem in Explainable AI: Identifying Reliable
Estimators with MetaQuantus", TMLR; reference code ``annahedstroem/MetaQuantus``
``metaquantus/meta_evaluation.py``, whose static methods and ``run_meta_consistency_analysis``
these restate; a test checks them against it to 1e-9).

A metric is scored on the unperturbed problem, ``q_star`` ``[methods, images]``, and under K
perturbations of each of several iterations, ``q_hat`` ``[methods, images]`` each, keeping the
images whose prediction the perturbation did not change (noise resilience, NR: a minor
perturbation, the scores should not move) or did change (adversarial reactivity, AR: a disruptive
one, the scores should):

- IAC (intra-consistency), per method and perturbation: the p-value of the two-sided Wilcoxon
  signed-rank test between the kept images' unperturbed and perturbed scores
  (``scipy.stats.wilcoxon``, ``zero_method="zsplit"``; a test that raises counts as p = 0, as in
  the reference); NR: p, AR: 1 - p.
- IEC (inter-consistency), per perturbation: NR, the share of (kept image, rank position) where
  the methods' order (``np.argsort`` over methods) is unchanged; AR, the share of (method, kept
  image) whose perturbed score is worse than its unperturbed score, by the metric's direction.
- Per iteration, IAC is the mean over methods and perturbations, IEC over perturbations; MC
  (meta-consistency) the mean of IAC_NR, IAC_AR, IEC_NR, IEC_AR, in [0, 1] (1: the ideal metric);
  means skip NaN (MetaQuantus' ``nanmean``; an iteration where no image was kept is NaN).

Difference from the reference code: MetaQuantus' ``compute_iec_adversary`` takes the branch "worse
= higher" whenever its ``score_direction`` argument is truthy, and both its values ("lower",
"higher") are truthy (``annahedstroem/MetaQuantus`` pull request #10), so for higher-is-better
metrics it counts perturbed scores that improved. Here "worse" follows the metric's direction:
equal to the reference for lower-is-better metrics, and to the reference's ``else`` branch (its
intended higher-is-better rule) for the others.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy import stats

from harness.settings import check_choice


def iac(q: np.ndarray, q_hat: np.ndarray, kept: np.ndarray, *, adversarial: bool,
        measure: Callable = stats.wilcoxon) -> float:
    """Intra-consistency of one method under one perturbation: the Wilcoxon p-value between
    ``q`` and ``q_hat`` ``[images]`` on the ``kept`` images (bool ``[images]``); ``1 - p`` when
    ``adversarial``. NaN when no pair is left (scipy's result on empty samples)."""
    kept = np.asarray(kept, dtype=bool)
    q, q_hat = np.asarray(q, dtype=float)[kept], np.asarray(q_hat, dtype=float)[kept]
    try:
        with np.errstate(all="ignore"), _quiet():
            p_value = float(measure(q, q_hat, alternative="two-sided", zero_method="zsplit")[1])
    except Exception:  # noqa: BLE001 - the reference sets p = 0 when the test raises
        p_value = 0.0
    return 1 - p_value if adversarial else p_value


def iec_resilience(q_star: np.ndarray, q_hat: np.ndarray, kept: np.ndarray) -> float:
    """Inter-consistency under a minor perturbation: the share of (kept image, rank position)
    where ``np.argsort`` over the methods of ``q_star`` and ``q_hat`` ``[methods, images]``
    agree (NaN when no image is kept)."""
    kept = np.asarray(kept, dtype=bool)
    same = np.argsort(q_star, axis=0) == np.argsort(q_hat, axis=0)
    same = same[:, kept]
    return float(same.mean()) if same.size else float("nan")


def iec_adversary(q_star: np.ndarray, q_hat: np.ndarray, kept: np.ndarray, direction: str
                  ) -> float:
    """Inter-consistency under a disruptive perturbation: the share of (method, kept image)
    whose perturbed score is worse than the unperturbed one (``direction`` ``"down"``: higher is
    worse; ``"up"``: lower is worse). NaN when no image is kept."""
    check_choice("direction", direction, ("up", "down"))
    kept = np.asarray(kept, dtype=bool)
    q_star, q_hat = np.asarray(q_star, dtype=float), np.asarray(q_hat, dtype=float)
    worse = q_star < q_hat if direction == "down" else q_star > q_hat
    worse = worse[:, kept]
    return float(worse.mean()) if worse.size else float("nan")


@contextmanager
def _quiet() -> Iterator[None]:
    """scipy's and numpy's small-sample warnings silenced (their result, NaN, is kept)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@dataclass(frozen=True)
class PerturbationScores:
    """One perturbation test (one space, one of NR / AR) of one metric column: ``intra``
    ``[methods, iterations, K]`` IAC values and ``inter`` ``[iterations, K]`` IEC values."""

    intra: np.ndarray
    inter: np.ndarray


def perturbation_scores(q_star: np.ndarray, q_hat: np.ndarray, kept: np.ndarray, *,
                        adversarial: bool, direction: str) -> PerturbationScores:
    """IAC and IEC of one test from ``q_star`` ``[methods, images]``, ``q_hat`` ``[iterations,
    K, methods, images]`` and ``kept`` ``[iterations, K, images]``."""
    iterations, n_perturbations, n_methods, _ = q_hat.shape
    intra = np.empty((n_methods, iterations, n_perturbations))
    inter = np.empty((iterations, n_perturbations))
    for i in range(iterations):
        for k in range(n_perturbations):
            for m in range(n_methods):
                intra[m, i, k] = iac(q_star[m], q_hat[i, k, m], kept[i, k],
                                     adversarial=adversarial)
            inter[i, k] = (iec_adversary(q_star, q_hat[i, k], kept[i, k], direction)
                           if adversarial else iec_resilience(q_star, q_hat[i, k], kept[i, k]))
    return PerturbationScores(intra, inter)


def meta_consistency(resilience: PerturbationScores, adversary: PerturbationScores) -> dict:
    """MetaQuantus' ``run_meta_consistency_analysis`` for one perturbation space: per iteration
    IAC_NR, IAC_AR (mean over methods and K), IEC_NR, IEC_AR (mean over K), their mean and
    standard deviation over iterations, MC per iteration (``MC_means``), ``MC_mean`` and
    ``MC_std``."""
    with np.errstate(all="ignore"), _quiet():
        scores = {"IAC_NR": np.nanmean(resilience.intra, axis=(0, 2)),
                  "IAC_AR": np.nanmean(adversary.intra, axis=(0, 2)),
                  "IEC_NR": np.nanmean(resilience.inter, axis=1),
                  "IEC_AR": np.nanmean(adversary.inter, axis=1)}
        stacked = np.stack(list(scores.values()))
        mc_means = np.nanmean(stacked, axis=0)
        result = {"scores": scores, "MC_means": mc_means, "MC_mean": float(np.nanmean(stacked)),
                  "MC_std": float(np.nanstd(mc_means))}
        for name, values in scores.items():
            result[f"{name}_mean"] = float(np.nanmean(values))
            result[f"{name}_std"] = float(np.nanstd(values))
    return result
