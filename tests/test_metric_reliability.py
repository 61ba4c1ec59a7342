"""Metric reliability from a run's records: Krippendorff's alpha equals the ``krippendorff``
package's (its own documented examples; attrbench's convention on records), the bootstrap equals
the package on explicitly resampled rows, the agreement matrix and LATEC's ranks equal direct pandas
computations, and ``harness reliability`` reads a run folder of harness 0.1 without writing."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import krippendorff
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import norm, rankdata

import harness
from harness.cli import main
from harness.config import from_dict
from harness.errors import ConfigError
from harness.metrics.registry import CRITERIA, METRICS, per_image_table, register_metric
from harness.reliability import (
    aggregate_ranking,
    agreement,
    alpha_interval,
    consistency,
    control_ranks,
    krippendorff_alpha,
    reliability,
    reliability_for,
    score_matrix,
)
from harness.reliability.agreement import image_ranks, rank_counts
from harness.reliability.report import verdict

from .conftest import tiny_run

SNAPSHOT = Path(__file__).parent / "snapshots"

# the krippendorff package's docstring examples (krippendorff.alpha), with their printed values
DOC_NOMINAL = [[np.nan, np.nan, np.nan, np.nan, np.nan, 3, 4, 1, 2, 1, 1, 3, 3, np.nan, 3],
               [1, np.nan, 2, 1, 3, 3, 4, 3, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan,
                np.nan],
               [np.nan, np.nan, 2, 1, 3, 4, 4, np.nan, 2, 1, 1, 3, 3, np.nan, 4]]
DOC_ORDINAL = [[1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
               [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
               [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
               [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan]]


def records(values: np.ndarray, metric: str = "deletion", methods=None) -> list[dict]:
    """Records of ``values`` ``[images, methods]`` for one metric."""
    methods = methods or [f"m{j}" for j in range(values.shape[1])]
    return [{"method": methods[j], "metric": metric, "image_id": f"img{i:02d}",
             "value": None if np.isnan(values[i, j]) else float(values[i, j])}
            for i in range(values.shape[0]) for j in range(values.shape[1])]


def synthetic(seed: int = 0, images: int = 12) -> list[dict]:
    """Five methods (two controls) x five metrics of three criteria; method quality drives every
    metric, plus per-image noise and a NaN."""
    rng = np.random.default_rng(seed)
    quality = np.array([0.8, 0.6, 0.5, 0.1, 0.2])  # vanilla, gradcam, smoothgrad, random, sobel
    methods = ["vanilla", "gradcam", "smoothgrad", "random", "sobel"]
    out = []
    for metric, sign, noise in [("deletion", -1, 0.2), ("insertion", 1, 0.3), ("morf", -1, 0.5),
                                ("sparseness", 1, 1.0), ("max_sensitivity", -1, 0.4)]:
        values = sign * quality[None, :] + rng.normal(0, noise, (images, len(methods)))
        values[3, 1] = np.nan
        out += records(values, metric, methods)
    return out


def test_alpha_machinery_reproduces_the_packages_documented_examples():
    # the value-counts path the bootstrap uses, on the package's own examples
    for data, level, expected in [(DOC_NOMINAL, "interval", 0.810845),
                                  (DOC_ORDINAL, "ordinal", 0.815)]:
        data = np.asarray(data, dtype=float)
        onehot, domain = rank_counts(data)
        counts = onehot.sum(axis=0).astype(np.int64)
        value = krippendorff.alpha(value_counts=counts, value_domain=domain,
                                   level_of_measurement=level)
        assert round(value, 6 if level == "interval" else 3) == expected
        assert value == pytest.approx(krippendorff.alpha(data, level_of_measurement=level),
                                      abs=1e-12)


@pytest.mark.parametrize("level", ["ordinal", "interval"])
def test_alpha_equals_the_package_on_run_records(level):
    rng = np.random.default_rng(1)
    values = rng.normal(0, 1, (15, 5)) + np.arange(5)  # methods separated, noisy per image
    table = per_image_table(records(values))
    ours = krippendorff_alpha(score_matrix(table, "deletion"), level)
    # attrbench's convention (krippendorff_alpha_bar_plot.py): rankdata over the methods of each
    # image (ascending; alpha is the same for reversed ranks), then the package
    assert ours == pytest.approx(krippendorff.alpha(rankdata(values, axis=1),
                                                    level_of_measurement=level), abs=1e-12)
    assert 0 < ours < 1
    # with undefined values: the package on our ranks (NaN = missing)
    values[2, 1] = values[7, 4] = np.nan
    table = per_image_table(records(values))
    ranks = image_ranks(score_matrix(table, "deletion")).to_numpy()
    assert np.isnan(ranks[2, 1]) and sorted(ranks[2][~np.isnan(ranks[2])]) == [1, 2, 3, 4]
    assert krippendorff_alpha(score_matrix(table, "deletion"), level) == pytest.approx(
        krippendorff.alpha(ranks, level_of_measurement=level), abs=1e-12)


def test_alpha_closed_forms():
    same = np.tile(np.arange(4.0), (6, 1))  # every image ranks the methods alike
    assert krippendorff_alpha(score_matrix(per_image_table(records(same)), "deletion")) == 1.0
    # a "down" column ranks the other way round: still perfect agreement
    table = per_image_table(records(same, "deletion"))
    assert (image_ranks(score_matrix(table, "deletion")).iloc[0].tolist() == [1, 2, 3, 4])
    one_method = per_image_table(records(np.ones((5, 1))))
    assert math.isnan(krippendorff_alpha(score_matrix(one_method, "deletion")))
    ties = per_image_table(records(np.ones((5, 3))))  # every image ties every method
    assert math.isnan(krippendorff_alpha(score_matrix(ties, "deletion")))
    assert verdict(0.9) == "reliable" and verdict(0.7) == "tentative"
    assert verdict(0.5) == "unreliable" and verdict(math.nan) == "undefined"
    assert verdict(0.85, 0.4, 0.9) == "reliable, uncertain"
    assert verdict(0.6, 0.5, 0.7) == "unreliable, uncertain" and verdict(0.6, 0.5, 0.66) == \
        "unreliable"


def test_bootstrap_interval_equals_the_package_on_resampled_rows():
    rng = np.random.default_rng(2)
    values = rng.normal(0, 1, (10, 4)) + np.arange(4) * 0.7
    values[4, 2] = np.nan
    matrix = score_matrix(per_image_table(records(values)), "deletion")
    result = alpha_interval(matrix, "ordinal", n_resamples=200, seed=7, method="percentile")
    ranks = image_ranks(matrix).to_numpy()
    domain = np.unique(ranks[np.isfinite(ranks)])
    draws = np.random.default_rng(7).integers(0, 10, (200, 10))
    direct = np.array([krippendorff.alpha(ranks[row], level_of_measurement="ordinal",
                                          value_domain=domain) for row in draws])
    low, high = np.quantile(direct, [0.025, 0.975])
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-12)
    assert result.low <= result.alpha <= result.high and result.resamples == 200
    # BCa (the default): Efron's levels from the same resamples and the leave-one-image-out
    # alphas, each computed by the package on the rows themselves
    bca = alpha_interval(matrix, "ordinal", n_resamples=200, seed=7)
    point = krippendorff.alpha(ranks, level_of_measurement="ordinal")
    jackknife = np.array([krippendorff.alpha(np.delete(ranks, i, axis=0), value_domain=domain,
                                             level_of_measurement="ordinal") for i in range(10)])
    z0 = norm.ppf((np.sum(direct < point) + 0.5 * np.sum(direct == point)) / 200)
    d = jackknife.mean() - jackknife
    a = np.sum(d**3) / (6 * np.sum(d**2) ** 1.5)
    z = norm.ppf([0.025, 0.975])
    expected = np.quantile(direct, norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))
    assert (bca.low, bca.high) == pytest.approx(tuple(expected), abs=1e-12)
    assert bca.alpha == result.alpha


def test_agreement_matrix_equals_direct_pandas():
    table = per_image_table(synthetic())
    pairs = agreement(table).set_index(["first", "second"])
    frame = table.assign(score=np.where(table["direction"] == "down", -1, 1) * table["value"])
    means = frame.groupby(["method", "metric"], sort=False)["score"].mean().unstack()
    wide = frame.pivot_table(index=["image_id", "method"], columns="metric", values="score")
    per_image = wide.groupby(level="image_id").corr(method="spearman")
    per_image = per_image.groupby(level=1).mean()
    for (first, second), row in pairs.iterrows():
        assert row["spearman_means"] == pytest.approx(
            means[first].corr(means[second], method="spearman"), abs=1e-12)
        assert row["kendall_means"] == pytest.approx(
            means[first].corr(means[second], method="kendall"), abs=1e-12)
        assert row["per_image"] == pytest.approx(per_image.loc[first, second], abs=1e-12)
    assert pairs.loc[("deletion", "insertion"), "spearman_means"] > 0.8, "aligned directions"


def test_consistency_of_variants():
    table = per_image_table(synthetic())
    pairs = agreement(table)
    result = consistency(table, [("deletion", "morf")], pairs)
    row = result.iloc[0]
    assert (row["first"], row["second"]) == ("deletion", "morf")
    assert row["per_image"] == pytest.approx(
        pairs.set_index(["first", "second"]).loc[("deletion", "morf"), "per_image"])
    cells = table.pivot_table(index=["method", "image_id"], columns="metric", values="value")
    expected = cells[["deletion", "morf"]].dropna().corr(method="spearman").iloc[0, 1]
    assert row["cells"] == pytest.approx(expected, abs=1e-12)  # both "down": same sign


def test_aggregate_ranking_equals_direct_pandas():
    table = per_image_table(synthetic())
    criteria = {"deletion": "faithfulness", "insertion": "faithfulness", "morf": "faithfulness",
                "sparseness": "complexity", "max_sensitivity": "robustness"}
    per_column, per_criterion = aggregate_ranking(table, criteria, n_resamples=50, seed=0)
    medians = table.groupby(["metric", "method"], sort=False)["value"].median()
    directions = table.groupby("metric")["direction"].first()
    ranks = medians.groupby(level="metric", group_keys=False).apply(
        lambda s: s.rank(ascending=directions[s.name] == "down", method="average"))
    ranked = ranks.rename("rank").reset_index()
    ranked["criterion"] = ranked["metric"].map(criteria)
    expected = ranked.groupby(["method", "criterion"])["rank"].mean()
    got = per_criterion.set_index(["method", "criterion"])["mean_rank"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    got = per_column.set_index(["metric", "method"])["rank"]
    pd.testing.assert_series_equal(got.sort_index(), ranks.sort_index(), check_names=False)
    assert (per_criterion["low"] <= per_criterion["mean_rank"] + 1e-12).all()
    assert (per_criterion["mean_rank"] <= per_criterion["high"] + 1e-12).all()
    faithfulness = per_criterion[per_criterion["criterion"] == "faithfulness"]
    assert faithfulness.set_index("method")["mean_rank"].idxmin() == "vanilla"


def test_controls_and_the_whole_section():
    table = per_image_table(synthetic())
    placed = control_ranks(table, ["random", "sobel"]).set_index(["metric", "control"])
    assert placed.loc[("deletion", "random"), "rank"] == 5  # the worst quality: last
    assert placed.loc[("deletion", "random"), "below_all"]
    result = reliability(synthetic(), methods={"vanilla": "vanilla", "gradcam": "gradcam",
                                               "smoothgrad": "smoothgrad", "random": "random",
                                               "sobel": "sobel"},
                         variants=[["deletion", "morf"]], n_resamples=100)
    columns = result.columns.set_index("metric")
    assert columns.loc["deletion", "criterion"] == "faithfulness"
    assert columns.loc["max_sensitivity", "criterion"] == "robustness"
    # deletion (little noise) ranks the methods far more consistently than sparseness (much)
    assert columns.loc["deletion", "alpha_ordinal"] > columns.loc["sparseness", "alpha_ordinal"]
    assert "random 5/5 (last)" in columns.loc["deletion", "controls"]
    assert list(result.consistency["group"]) == ["deletion / morf"]
    assert "Krippendorff" in result.note and "`deletion`" in result.note
    with pytest.raises(ConfigError, match="variants: 'nope' is not a column"):
        reliability(synthetic(), variants=[["deletion", "nope"]], n_resamples=10)


def test_every_metric_has_a_criterion():
    assert all(entry.criterion in CRITERIA for entry in METRICS.values())
    assert METRICS["pointing_game"].criterion == "localisation"
    assert METRICS["model_randomization"].criterion == "randomisation"
    with pytest.raises(ConfigError, match="criterion 'speed' is not one of"):
        register_metric("never_registered", settings=object, direction="up", citation="x",
                        criterion="speed")


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_harness_reliability_reads_a_harness_01_run_folder_without_writing(tmp_path, capsys):
    folder = tmp_path / "old-run"
    folder.mkdir()
    shutil.copy(SNAPSHOT / "registry_records.jsonl", folder / "records.jsonl")
    shutil.copy(SNAPSHOT / "registry_config.yaml", folder / "config.resolved.yaml")
    before = folder_digest(folder)
    assert main(["reliability", str(folder), "--resamples", "50", "--variants",
                 "deletion,morf"]) == 0
    out = capsys.readouterr().out
    assert "Krippendorff" in out and "| deletion ↓ | faithfulness |" in out
    assert "rand_spearman_abs" in out and "deletion vs morf" in out
    assert "sobel 4/4 (last)" in out  # sobel ignores the model: last under randomization
    assert folder_digest(folder) == before, "the reader wrote nothing"
    out_folder = tmp_path / "report"
    assert main(["reliability", str(folder), "--resamples", "50", "--out",
                 str(out_folder)]) == 0
    assert folder_digest(folder) == before
    written = {p.name for p in out_folder.rglob("*") if p.is_file()}
    assert {"reliability.md", "reliability.csv", "reliability_agreement.csv",
            "reliability_ranking.csv", "agreement.png"} <= written
    result, markdown = reliability_for(folder, n_resamples=50)
    assert result.n_images == 2 and result.methods == ("vanilla", "smoothgrad", "gradcam",
                                                        "sobel")
    assert main(["reliability", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_a_run_writes_the_section_and_harness_reliability_reads_its_folder(tmp_path, capsys):
    raw = tiny_run(tmp_path, methods=["vanilla", "sobel", {"name": "random", "params": {}}],
                   metrics={"deletion": {"step": 32}, "sparseness": {}})
    result = harness.run(from_dict(raw), progress=False, log=lambda *a: None)
    output = Path(result.output_dir)
    markdown = (output / "tables" / "reliability.md").read_text()
    assert "| deletion ↓ | faithfulness |" in markdown
    assert "| sparseness ↑ | complexity |" in markdown
    assert (output / "figures" / "agreement.png").stat().st_size > 0
    before = folder_digest(output)
    assert main(["reliability", str(output)]) == 0, "a folder of this harness's runner"
    assert "| deletion ↓ | faithfulness |" in capsys.readouterr().out
    assert folder_digest(output) == before, "the reader wrote nothing"
    again, _ = reliability_for(output, n_resamples=1000)  # the CLI's numbers are the run's
    written = pd.read_csv(output / "tables" / "reliability.csv")
    np.testing.assert_allclose(written["alpha_ordinal"], again.columns["alpha_ordinal"])
    assert main(["reliability", str(output), "--resamples", "0"]) == 2
    assert "--resamples: must be an integer >= 1" in capsys.readouterr().err
    assert main(["reliability", str(output), "--seed", "-1"]) == 2
    assert "--seed: must be an integer in [0, " in capsys.readouterr().err
    assert main(["reliability", str(output), "--variants", "deletion,nope"]) == 2
    assert "variants: 'nope' is not a column" in capsys.readouterr().err


@pytest.mark.slow  # a run with MLflow (a new sqlite store): about 10 s on 2 cores
def test_every_finished_run_shows_the_section_on_the_mlflow_parent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = tiny_run(tmp_path, methods=["vanilla", "sobel", {"name": "random", "params": {}}],
                   metrics={"deletion": {"step": 32}, "sparseness": {}},
                   tracking={"uri": uri, "experiment": "trust"})
    result = harness.run(from_dict(raw), progress=False, log=lambda *a: None)
    parent = MlflowClient(uri).get_run(result.run_id)
    assert "Reliability (tables/reliability.md" in parent.data.tags["mlflow.note.content"]
    logged = {a.path for a in MlflowClient(uri).list_artifacts(result.run_id, "tables")}
    assert "tables/reliability.md" in logged
