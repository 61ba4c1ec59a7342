"""Agreement between methods (Krishna et al. 2022): hand-made maps with known answers, direct
O(n^2) computations of the definitions, and OpenXAI's code (``openxai/metrics.py``) on maps
without ties."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.special import comb
from scipy.stats import pearsonr, rankdata

from harness.agreement import (
    MEASURES,
    agreement,
    agreement_matrix,
    count_inversions,
    pairwise_agreement,
    pairwise_rank_agreement,
    top_k_count,
    write_agreement,
)
from harness.errors import ConfigError

# ----------------------------------------------------------------------------- OpenXAI's code
# Ported from AI4LIFE-GROUP/OpenXAI openxai/metrics.py (pairwise_comp, rankcorr,
# _construct_topk_dfs, _single_k_gt_faith) for two explanations, ``ground_truth`` = ``b`` and
# predictions = 1 (no sign flip); ``applymap`` (removed in pandas 3) written as ``map``.


def openxai_pairwise(a, b):
    exp_ranks = rankdata(-np.abs(a), method="dense")
    gt_rank = rankdata(-np.abs(b), method="dense")
    agree = 0
    for f1, f2 in itertools.combinations_with_replacement(range(a.size), 2):
        if f1 != f2:
            agree += (exp_ranks[f1] < exp_ranks[f2]) == (gt_rank[f1] < gt_rank[f2])
    return agree / comb(a.size, 2)


def openxai_rankcorr(a, b):
    return pearsonr(rankdata(-np.abs(a), method="dense"),
                    rankdata(-np.abs(b), method="dense"))[0]


def openxai_topk(a, b, k, metric):
    attrs = [a[None], b[None]]
    idxs = [np.argsort(-np.abs(attr), axis=1)[:, :k] for attr in attrs]
    dfs = [("feat" + pd.DataFrame(i).map(str)) for i in idxs]
    if "rank" in metric:
        ranks = [rankdata(-np.abs(attr), method="dense", axis=1) for attr in attrs]
        top = [np.take_along_axis(r, i, axis=1) for r, i in zip(ranks, idxs, strict=True)]
        dfs = [d + ("rank" + pd.DataFrame(t).map(str)) for d, t in zip(dfs, top, strict=True)]
    if "sign" in metric:
        signs = [np.take_along_axis(np.sign(attr).astype(int), i, axis=1)
                 for attr, i in zip(attrs, idxs, strict=True)]
        dfs = [d + ("sign" + pd.DataFrame(s).map(str)) for d, s in zip(dfs, signs, strict=True)]
    if metric in ("overlap", "sign"):
        return len(set(dfs[0].to_numpy()[0]) & set(dfs[1].to_numpy()[0])) / k
    return float((dfs[0].to_numpy() == dfs[1].to_numpy()).sum()) / k


# ----------------------------------------------------------------------------- known answers


def test_hand_made_maps():
    a = np.array([[4.0, -3.0], [2.0, 1.0]])  # magnitudes 4 3 2 1, pixel 1 negative
    b = np.array([[4.0, 3.0], [1.0, 2.0]])
    two = agreement(a, b, 2)
    assert two["feature"] == 1.0 and two["rank"] == 1.0
    assert two["sign"] == 0.5 and two["signed_rank"] == 0.5  # pixel 1's signs differ
    # Spearman 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60; one discordant pair of six
    assert two["rank_correlation"] == pytest.approx(0.8)
    assert two["pairwise_rank"] == pytest.approx(5 / 6)
    three = agreement(a, b, 3)  # top-3: (0, 1, 2) and (0, 1, 3)
    assert three["feature"] == pytest.approx(2 / 3) and three["rank"] == pytest.approx(2 / 3)
    same = agreement(a, a, 3)
    assert all(v == pytest.approx(1.0) for v in same.values())
    reverse = agreement(np.arange(1.0, 7.0), np.arange(6.0, 0.0, -1.0), 2)
    assert reverse["rank_correlation"] == pytest.approx(-1.0)
    assert reverse["pairwise_rank"] == 0.0 and reverse["feature"] == 0.0
    # signs from a signed variant when the maps are magnitudes
    assert agreement(np.abs(a), b, 2, sign_a=a)["sign"] == 0.5
    assert top_k_count(0.25, 10) == 3 and top_k_count(4, 10) == 4
    with pytest.raises(ConfigError, match="top_k: 11 pixels is not in"):
        top_k_count(11, 10)
    with pytest.raises(ConfigError, match="top_k: a fraction must be in"):
        top_k_count(1.5, 10)


def test_inversions_and_pairwise_rank_against_the_definition():
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 64, 301):
        values = rng.integers(0, 9, size)
        direct = sum(values[i] > values[j] for i in range(size) for j in range(i + 1, size))
        assert count_inversions(values) == direct, size
    for _ in range(20):
        a = rng.integers(0, 5, 40).astype(float)  # many ties
        b = rng.integers(0, 5, 40).astype(float)
        agree = sum(np.sign(a[i] - a[j]) == np.sign(b[i] - b[j])
                    for i in range(40) for j in range(i + 1, 40))
        assert pairwise_rank_agreement(a, b) == pytest.approx(agree / (40 * 39 / 2), abs=1e-15)
    # image-sized maps run in O(n log n)
    big = pairwise_rank_agreement(rng.random(224 * 224), rng.random(224 * 224))
    assert abs(big - 0.5) < 0.01


def test_equals_openxai_without_ties():
    rng = np.random.default_rng(1)
    for _ in range(10):
        a, b = rng.standard_normal(30), rng.standard_normal(30)
        b[:10] = a[:10] + 0.1 * rng.standard_normal(10)  # some agreement
        ours = agreement(a, b, 8)
        assert ours["pairwise_rank"] == pytest.approx(openxai_pairwise(a, b), abs=1e-12)
        assert ours["rank_correlation"] == pytest.approx(openxai_rankcorr(a, b), abs=1e-12)
        for measure, name in (("feature", "overlap"), ("rank", "rank"), ("sign", "sign"),
                              ("signed_rank", "ranksign")):
            assert ours[measure] == pytest.approx(openxai_topk(a, b, 8, name)), measure


def test_openxai_pairwise_depends_on_the_index_order_with_ties():
    """A pair tied in one map only: OpenXAI counts it as agreeing or not by the pixels' order."""
    a, b = np.array([1.0, 1.0]), np.array([2.0, 1.0])
    assert openxai_pairwise(a, b) == 0.0 and openxai_pairwise(a[::-1], b[::-1]) == 1.0
    assert pairwise_rank_agreement(a, b) == pairwise_rank_agreement(a[::-1], b[::-1]) == 0.0


def test_every_pair_of_methods_tables_and_figures(tmp_path):
    rng = np.random.default_rng(2)
    maps = {name: np.abs(rng.standard_normal((3, 8, 8))) for name in ("p", "q", "r")}
    maps["r"] = maps["p"] * 2.0  # same ranking as p
    signed = {"p": rng.standard_normal((3, 8, 8)), "q": None, "r": None}
    frame = pairwise_agreement(maps, 0.25, signed=signed, ids=["x", "y", "z"])
    assert len(frame) == 3 * 3 * len(MEASURES) and set(frame["top_k"]) == {16}
    pair = frame[(frame["method_a"] == "p") & (frame["method_b"] == "r")]
    by_measure = pair.groupby("measure")["value"].mean()
    assert by_measure["feature"] == 1.0 and by_measure["rank_correlation"] == pytest.approx(1)
    assert by_measure["sign"] < 1.0  # p's signs come from its signed maps, r's are all +
    matrix = agreement_matrix(frame, "feature", ["p", "q", "r"])
    assert matrix.loc["p", "r"] == matrix.loc["r", "p"] == 1.0 and matrix.loc["q", "q"] == 1.0
    paths = write_agreement(frame, ["p", "q", "r"], tmp_path, "Test.")
    assert (tmp_path / "figures" / "agreement" / "pairwise_rank.png").exists()
    text = (tmp_path / "tables" / "agreement_feature.md").read_text()
    assert "| p | 1.000 |" in text and "top-k = 16 pixels" in text
    assert len(paths) == 1 + 3 * len(MEASURES)


def test_config_names_a_bad_top_k():
    from harness.config import from_dict

    raw = {"name": "t", "methods": ["vanilla", "sobel"], "metrics": {"deletion": {"step": 100}}}
    assert from_dict({**raw, "agreement": {"top_k": 0.05}}).agreement.top_k == 0.05
    assert from_dict(raw).agreement.top_k is None  # off by default
    for bad in (0, 1.5, -2):
        with pytest.raises(ConfigError, match="agreement.top_k: pixels"):
            from_dict({**raw, "agreement": {"top_k": bad}})
    with pytest.raises(ConfigError, match="agreement.top_k: agreement compares the maps of two"):
        from_dict({**raw, "methods": ["vanilla"], "agreement": {"top_k": 10}})
    with pytest.raises(ConfigError, match="agreement.k: unknown key"):
        from_dict({**raw, "agreement": {"k": 10}})
    # the agreement settings change no record: the config hash (resume) ignores them
    assert from_dict({**raw, "agreement": {"top_k": 3}}).hash() == from_dict(raw).hash()
