"""Statistics: bootstrap coverage, Wilcoxon against scipy, Holm, and table snapshots."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from harness.report import render_tables, summarize
from harness.stats import bca_levels, bootstrap_ci, holm, paired_wilcoxon


def coverage(method: str, draw, true_mean: float, trials: int) -> float:
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(trials):
        interval = bootstrap_ci(draw(rng), n_resamples=2000, seed=trial, method=method)
        covered += interval.low <= true_mean <= interval.high
    return covered / trials


def test_bootstrap_ci_covers_known_mean_near_nominal_rate():
    # measured over 2000 samples by benchmarks/bootstrap_coverage.py (README): normal n = 40:
    # percentile 0.929, BCa 0.929; lognormal(0, 1) n = 20: percentile 0.857, BCa 0.875
    normal = coverage("bca", lambda rng: rng.normal(2.0, 1.0, 40), 2.0, 300)
    assert 0.89 <= normal <= 0.97
    # skewed per-image scores: BCa corrects part of the percentile interval's under-coverage
    # (400 samples: percentile 0.860, BCa 0.875)
    draw = lambda rng: rng.lognormal(0.0, 1.0, 20)  # noqa: E731
    true_mean = float(np.exp(0.5))
    percentile = coverage("percentile", draw, true_mean, 400)
    bca = coverage("bca", draw, true_mean, 400)
    assert bca > percentile + 0.005
    assert 0.84 <= bca <= 0.97


def test_bca_levels_match_their_closed_form_on_the_exact_bootstrap():
    # n = 4: all 4^4 resamples enumerated, so the bootstrap distribution is exact
    data = np.array([0.1, 0.2, 0.3, 1.4])
    means = np.array([data[list(i)].mean() for i in itertools.product(range(4), repeat=4)])
    centred = data - data.mean()
    # jackknife of the mean: d_i = mean(leave-one-out) - leave-one-out_i = (x_i - m) / (n - 1)
    acceleration = np.sum(centred**3) / (6 * np.sum(centred**2) ** 1.5)
    fraction = (np.sum(means < data.mean()) + 0.5 * np.sum(means == data.mean())) / means.size
    z0 = stats.norm.ppf(fraction)
    expected = [stats.norm.cdf(z0 + (z0 + z) / (1 - acceleration * (z0 + z)))
                for z in stats.norm.ppf([0.025, 0.975])]
    assert bca_levels(data, means, 0.95) == pytest.approx(expected, rel=1e-12)
    assert acceleration > 0 and expected[0] > 0.025  # right-skewed: both ends move up


def test_bca_agrees_with_scipy():
    sample = np.random.default_rng(1).exponential(1.0, 25)
    ours = bootstrap_ci(sample, n_resamples=20_000, seed=5)
    theirs = stats.bootstrap((sample,), np.mean, n_resamples=20_000, method="BCa",
                             rng=np.random.default_rng(6)).confidence_interval
    width = ours.high - ours.low
    assert ours.method == "bca"
    assert abs(ours.low - theirs.low) < 0.03 * width  # Monte Carlo error of 20,000 resamples
    assert abs(ours.high - theirs.high) < 0.03 * width


def test_bootstrap_is_seeded_and_handles_edge_cases():
    data = [0.1, 0.5, 0.2, 0.9, 0.4]
    assert bootstrap_ci(data, seed=3) == bootstrap_ci(data, seed=3)
    assert bootstrap_ci([0.7]).low == bootstrap_ci([0.7]).high == 0.7
    assert bootstrap_ci([0.3] * 5).low == bootstrap_ci([0.3] * 5).high == 0.3
    assert bootstrap_ci([1.0, float("nan"), 3.0]).n == 2
    with pytest.raises(ValueError, match="at least one finite value"):
        bootstrap_ci([float("nan")])
    with pytest.raises(ValueError, match="'bc' is not one of: bca, percentile"):
        bootstrap_ci(data, method="bc")


def test_wilcoxon_matches_scipy():
    a = np.array([0.12, 0.30, 0.25, 0.41, 0.05, 0.33, 0.28, 0.19, 0.22, 0.31])
    b = np.array([0.10, 0.21, 0.27, 0.30, 0.01, 0.30, 0.20, 0.11, 0.25, 0.20])
    assert paired_wilcoxon(a, b) == pytest.approx(stats.wilcoxon(a - b).pvalue)
    assert paired_wilcoxon(a, a) == 1.0
    # no ties, n = 8: scipy's exact p equals enumerating all 2^8 sign patterns by hand
    differences = np.array([0.5, -0.1, 0.8, 0.3, 0.9, 0.7, -0.2, 0.6])
    ranks = stats.rankdata(np.abs(differences))
    observed = ranks[differences > 0].sum()
    totals = [sum(r for r, s in zip(ranks, signs, strict=True) if s)
              for signs in itertools.product([0, 1], repeat=8)]
    mean = ranks.sum() / 2
    exact = np.mean([abs(t - mean) >= abs(observed - mean) for t in totals])
    assert paired_wilcoxon(differences, np.zeros(8)) == pytest.approx(exact)


def test_holm_known_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 0.8 * 2 caps at 1, then monotone


def records_for(values: dict[str, list[float]], metric: str) -> list[dict]:
    return [{"method": method, "metric": metric, "image_id": f"img{i}", "value": v}
            for method, series in values.items() for i, v in enumerate(series)]


def test_summary_and_table_snapshot():
    records = records_for({"vanilla": [0.2, 0.3, 0.4, 0.5, 0.6, 0.2, 0.3, 0.4],
                           "smooth": [0.1, 0.1, 0.2, 0.3, 0.3, 0.1, 0.2, 0.2]}, "deletion")
    records += records_for({"vanilla": [0.5] * 8, "smooth": [0.6] * 8}, "insertion")
    summary = summarize(records, reference="vanilla", seed=0, n_resamples=2000)
    row = summary[(summary.method == "smooth") & (summary.metric == "deletion")].iloc[0]
    assert row["mean"] == pytest.approx(0.1875) and row["n"] == 8
    # the same resamples as scipy's BCa given the same generator: the same interval
    scipy_ci = stats.bootstrap((np.array([0.1, 0.1, 0.2, 0.3, 0.3, 0.1, 0.2, 0.2]),), np.mean,
                               n_resamples=2000, method="BCa",
                               rng=np.random.default_rng(0)).confidence_interval
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((scipy_ci.low, scipy_ci.high))
    assert row["p"] == pytest.approx(stats.wilcoxon(
        np.array([0.1, 0.1, 0.2, 0.3, 0.3, 0.1, 0.2, 0.2]) -
        np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.2, 0.3, 0.4])).pvalue)
    tables = render_tables(summary, {"model": "m", "weights": "w", "data": "d", "target": "t",
                                     "reference": "vanilla", "run": "run-1", "name": "snap",
                                     "n_resamples": 2000})
    expected_md = (
        "| method | deletion ↓ | insertion ↑ |\n"
        "|---|---|---|\n"
        "| vanilla | 0.362 [0.275, 0.463] | 0.500 [0.500, 0.500] |\n"
        "| smooth | **0.188 [0.138, 0.250]*** | **0.600 [0.600, 0.600]*** |\n")
    assert tables["md"].startswith(expected_md)
    assert "n = 8 images" in tables["md"] and "Source: run-1." in tables["md"]
    assert "(2,000 resamples, seed 0)" in tables["md"]
    assert r"\textbf{0.188 {\scriptsize [0.138, 0.250]}}$^{*}$" in tables["tex"]
    assert "Mean [95% BCa bootstrap CI of the mean]" in tables["md"]
    assert r"\toprule" in tables["tex"] and r"deletion $\downarrow$" in tables["tex"]
    assert tables["csv"].splitlines()[0] == ("method,metric,direction,n,undefined,mean,ci_low,"
                                             "ci_high,p,p_holm")


def test_bootstrap_block_size_does_not_change_the_draws():
    from harness.stats import bootstrap_means

    data = np.random.default_rng(3).random(5000)  # blocks of 400 resamples here
    rng = np.random.default_rng(7)
    one_block = rng.integers(0, data.size, (1200, data.size))
    assert np.array_equal(bootstrap_means(data, 1200, 7), data[one_block].mean(axis=1))


def test_no_finite_pair_is_no_test_and_stays_out_of_holm():
    from harness.report import summarize

    assert np.isnan(paired_wilcoxon([np.nan, 1.0], [0.5, np.nan]))
    records = [{"method": m, "metric": "deletion", "image_id": f"i{i}", "value": v}
               for m, values in {"ref": [0.1 * i for i in range(12)],
                                 "good": [0.1 * i + 0.05 + 0.01 * (i % 3) for i in range(12)],
                                 "undefined": [None] * 12}.items()
               for i, v in enumerate(values)]
    summary = summarize(records, reference="ref", n_resamples=200)
    undefined = summary[summary.method == "undefined"].iloc[0]
    good = summary[summary.method == "good"].iloc[0]
    assert np.isnan(undefined["p"]) and np.isnan(undefined["p_holm"])
    assert good["p_holm"] == pytest.approx(good["p"]), "a family of one test"


def test_a_non_finite_value_is_undefined_in_n_as_in_the_interval():
    values = [0.1, 0.4, 0.2, float("inf"), 0.3, 0.5]
    records = [{"method": "m", "metric": "deletion", "image_id": f"i{i}", "value": v}
               for i, v in enumerate(values)]
    row = summarize(records, n_resamples=200).iloc[0]
    interval = bootstrap_ci(values, n_resamples=200)
    assert row["n"] == interval.n == 5 and row["undefined"] == 1
    assert row["mean"] == interval.mean
