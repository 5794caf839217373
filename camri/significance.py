"""Paired differences between two methods over the same seeds, with a 95 % interval.

The protocol compares a method with CE seed by seed (the same seed gives both runs the same data order and,
for the backbone, the same initialisation), so the unit of evidence is the per-seed difference
d_i = a_i − b_i, i over the seeds both have. This module turns those differences into a mean and an
interval and says whether the interval excludes 0:

- n < 10: Student t, mean ± t_{(1+c)/2, n−1} · s/√n (s = sample std of the d_i, ddof = 1). Exact when the
  d_i are normal; with 3–5 seeds it is the usual choice, and wide, as it should be.
- n ≥ 10: percentile bootstrap of the mean (10,000 resamples with replacement, seeded, so the interval is
  the same on every machine). It needs no normality, and at n ≥ 10 the resamples are varied enough for the
  percentile interval to be usable; below that it is too narrow (it cannot see beyond the observed
  values), so t is used there.

With one pair there is no interval (NaN), and ``excludes_zero`` is False: one seed is never evidence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_FROM = 10  # pairs at which the interval switches from t to the bootstrap
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0

PAIRED_COLUMNS = ("n_pairs", "diff_mean", "diff_std", "ci_low", "ci_high", "interval", "excludes_zero")


def paired_difference(
    a: Mapping[int, float],
    b: Mapping[int, float],
    *,
    confidence: float = CONFIDENCE,
    bootstrap_from: int = BOOTSTRAP_FROM,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Mean of a[s] − b[s] over the seeds s both have, with a two-sided interval (module doc).

    Returns ``PAIRED_COLUMNS``: n_pairs, diff_mean, diff_std (sample, ddof = 1), ci_low, ci_high, interval
    ("t", "bootstrap", or "" without one) and excludes_zero (the interval lies wholly above or below 0).
    NaN where undefined (std and interval for fewer than 2 pairs, everything for none).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    seeds = sorted(set(a) & set(b))
    diff = np.array([a[s] - b[s] for s in seeds], dtype=float)
    n = len(diff)
    result = {
        "n_pairs": n,
        "diff_mean": diff.mean() if n else math.nan,
        "diff_std": diff.std(ddof=1) if n > 1 else math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "interval": "",
        "excludes_zero": False,
    }
    if n < 2:
        return result
    if n >= bootstrap_from:
        rng = np.random.default_rng(seed)
        means = diff[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
        interval = "bootstrap"
    else:
        half = stats.t.ppf((1 + confidence) / 2, n - 1) * result["diff_std"] / math.sqrt(n)
        low, high = result["diff_mean"] - half, result["diff_mean"] + half
        interval = "t"
    result.update(ci_low=float(low), ci_high=float(high), interval=interval, excludes_zero=bool(low > 0 or high < 0))
    return result


def format_difference(result: Mapping, digits: int = 3) -> str:
    """ "+0.051 [+0.012, +0.090], n=5 (t)": the mean difference, its interval and how it was made."""
    if result["n_pairs"] == 0:
        return "no paired seeds"
    mean = f"{result['diff_mean']:+.{digits}f}"
    if not result["interval"]:
        return f"{mean}, n={result['n_pairs']} (no interval with one seed)"
    return (
        f"{mean} [{result['ci_low']:+.{digits}f}, {result['ci_high']:+.{digits}f}], "
        f"n={result['n_pairs']} ({result['interval']})"
    )


def paired_comparisons(
    selections: pd.DataFrame,
    *,
    method: str = "CAMRI",
    versus: Sequence[str] = ("CE", "ArcFace"),
    metric: str = "recalls",
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Per cell of ``protocol.select_all``, ``method`` against each of ``versus`` (their "maintaining"
    choices), paired by seed on ``metric`` (a per-seed column: "recalls" = the important class's test
    recall, "accuracies", "angle_variances"). Columns: dataset, role, class_name, method, versus, metric,
    ``PAIRED_COLUMNS``, and both hyperparameters. Cells missing either method are left out."""
    maintaining = selections[selections["selection"] == "maintaining"]
    rows = []
    for (dataset, role, class_name), cell in maintaining.groupby(["dataset", "role", "class_name"], sort=False):
        chosen = cell.set_index("method")
        for other in versus:
            if method not in chosen.index or other not in chosen.index:
                continue
            mine, theirs = chosen.loc[method], chosen.loc[other]
            result = paired_difference(
                dict(zip(mine["seeds"], mine[metric])),
                dict(zip(theirs["seeds"], theirs[metric])),
                confidence=confidence,
            )
            rows.append(
                {
                    "dataset": dataset,
                    "role": role,
                    "class_name": class_name,
                    "method": method,
                    "versus": other,
                    "metric": metric,
                    **result,
                    "method_hyperparameters": mine["hyperparameters"],
                    "versus_hyperparameters": theirs["hyperparameters"],
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "role",
            "class_name",
            "method",
            "versus",
            "metric",
            *PAIRED_COLUMNS,
            "method_hyperparameters",
            "versus_hyperparameters",
        ],
    )
