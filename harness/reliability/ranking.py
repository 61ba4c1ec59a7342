"""Robust aggregate ranking of methods (LATEC: Klein et al., NeurIPS 2024 Datasets & Benchmarks,
reference code ``IML-DKFZ/latec`` ``src/main/main_rank.py`` ``compute_full_ranking`` and
``create_ranking_table``), and where the control methods land.

- Per table column: the median over images of each method's value; the methods ranked by it
  (rank 1 the best, by the column's direction).
- Per criterion (the metric's registry ``criterion``: faithfulness, robustness, localisation,
  complexity, randomisation): the mean of a method's ranks over the columns of that criterion
  (columns where the method has no value are left out, as LATEC's ``x[~np.isnan(x)]``).
- Bootstrap intervals: the images resampled with replacement (the same resample for every
  column, so paired columns stay paired; ``numpy.random.default_rng(seed)``), medians, ranks and
  mean ranks recomputed; percentile intervals.

Known differences from LATEC's code: tied medians get the average of their ranks (LATEC's
``argsort`` breaks ties by the methods' order in its arrays, so a tie's ranks depended on the
order methods were listed); the mean rank is reported unrounded (LATEC's table rounds it to an
integer); LATEC's criteria are faithfulness, robustness and complexity, the harness adds its
localisation and randomisation metrics as criteria of their own.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
from scipy import stats


def column_ranks(medians: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """``[..., methods, columns]`` rank of each method per column (1 the best; ties averaged;
    NaN where the median is NaN) from ``medians`` ``[..., methods, columns]``."""
    sign = np.where(np.asarray(directions) == "down", 1.0, -1.0)  # ascending "badness"
    return stats.rankdata(medians * sign, axis=-2, method="average", nan_policy="omit")


def criterion_means(ranks: np.ndarray, criteria: Sequence[str], order: Sequence[str]
                    ) -> np.ndarray:
    """``[..., methods, len(order)]`` mean rank per criterion over that criterion's columns (NaN
    where a method has no ranked column of it) from ``ranks`` ``[..., methods, columns]``."""
    criteria = np.asarray(criteria)
    out = np.full((*ranks.shape[:-1], len(order)), np.nan)
    for index, criterion in enumerate(order):
        part = ranks[..., criteria == criterion]
        counts = np.isfinite(part).sum(axis=-1)
        total = np.where(np.isfinite(part), part, 0.0).sum(axis=-1)
        out[..., index] = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
    return out


def value_cube(table: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """(``[methods, columns, images]`` values, NaN where undefined or not run; the methods,
    columns and images in the table's order)."""
    methods = list(dict.fromkeys(table["method"]))
    columns = list(dict.fromkeys(table["metric"]))
    images = list(dict.fromkeys(table["image_id"]))
    cube = np.full((len(methods), len(columns), len(images)), np.nan)
    m = pd.Index(methods).get_indexer(table["method"])
    c = pd.Index(columns).get_indexer(table["metric"])
    i = pd.Index(images).get_indexer(table["image_id"])
    cube[m, c, i] = table["value"].to_numpy(dtype=float, na_value=np.nan)
    return cube, methods, columns, images


def _medians(cube: np.ndarray) -> np.ndarray:
    """``[methods, columns]`` median over the images axis, NaN values left out."""
    if np.isnan(cube).any():
        with _quiet():
            return np.nanmedian(cube, axis=2)
    return np.median(cube, axis=2)


@contextmanager
def _quiet() -> Iterator[None]:
    """numpy's "All-NaN slice" warnings silenced (a method without values in a resample: NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def aggregate_ranking(table: pd.DataFrame, criteria: Mapping[str, str], *,
                      n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """LATEC's ranking of the methods of ``table`` (per_image_table); ``criteria`` maps each
    column to its criterion. Returns (per column: ``method``, ``metric``, ``criterion``,
    ``median``, ``rank``, ``low``, ``high``; per criterion: ``method``, ``criterion``,
    ``mean_rank``, ``low``, ``high``, ``n_columns``)."""
    cube, methods, columns, images = value_cube(table)
    directions = [table.loc[table["metric"] == c, "direction"].iloc[0] for c in columns]
    column_criteria = [criteria[c] for c in columns]
    order = list(dict.fromkeys(column_criteria))
    medians = _medians(cube)
    ranks = column_ranks(medians, directions)
    means = criterion_means(ranks, column_criteria, order)
    rng = np.random.default_rng(seed)
    boot_medians = np.empty((n_resamples, *medians.shape))
    for b in range(n_resamples):
        boot_medians[b] = _medians(cube[:, :, rng.integers(0, len(images), len(images))])
    boot_ranks = column_ranks(boot_medians, directions)
    boot_means = criterion_means(boot_ranks, column_criteria, order)
    levels = [(1 - confidence) / 2, (1 + confidence) / 2]
    with _quiet():
        rank_low, rank_high = np.nanquantile(boot_ranks, levels, axis=0)
        mean_low, mean_high = np.nanquantile(boot_means, levels, axis=0)
    per_column = pd.DataFrame([
        {"method": method, "metric": column, "criterion": column_criteria[c],
         "median": medians[m, c], "rank": ranks[m, c], "low": rank_low[m, c],
         "high": rank_high[m, c]}
        for c, column in enumerate(columns) for m, method in enumerate(methods)])
    counts = {criterion: [np.isfinite(ranks[m, np.asarray(column_criteria) == criterion]).sum()
                          for m in range(len(methods))] for criterion in order}
    per_criterion = pd.DataFrame([
        {"method": method, "criterion": criterion, "mean_rank": means[m, k],
         "low": mean_low[m, k], "high": mean_high[m, k],
         "n_columns": int(counts[criterion][m])}
        for k, criterion in enumerate(order) for m, method in enumerate(methods)])
    return per_column, per_criterion


def control_ranks(table: pd.DataFrame, controls: Sequence[str]) -> pd.DataFrame:
    """Where each control method lands per column: ``rank`` of its mean value among the methods
    (1 the best, ties averaged), ``of`` methods ranked, and ``below_all``: whether it ranks
    strictly below every method that is not a control (where a faithful metric should put it)."""
    rows = []
    for column, part in table.groupby("metric", sort=False):
        finite = part[np.isfinite(part["value"].to_numpy(dtype=float, na_value=np.nan))]
        means = finite.groupby("method", sort=False)["value"].mean()
        if means.empty:
            continue
        sign = -1.0 if part["direction"].iloc[0] == "up" else 1.0
        ranks = pd.Series(stats.rankdata(sign * means.to_numpy(), method="average"),
                          index=means.index)
        others = [m for m in ranks.index if m not in controls]
        for control in controls:
            if control not in ranks.index:
                continue
            below = bool(others) and all(ranks[control] > ranks[m] for m in others)
            rows.append({"metric": column, "control": control, "rank": float(ranks[control]),
                         "of": int(len(ranks)), "below_all": below})
    return pd.DataFrame(rows, columns=["metric", "control", "rank", "of", "below_all"])
