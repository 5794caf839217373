"""Beyond the paper: paired comparisons of the chosen settings by seed, and post-hoc threshold tuning of
CE (a bias on the important class's logit) as a recall–accuracy curve to hold the methods against."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from camri.protocol import _dataset_runs

def paired_gain(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> dict:
    """Mean of a[seed] − b[seed] over the seeds both have, with a two-sided t confidence interval.

    Returns n_pairs, gain_mean, gain_std (sample, ddof=1), ci_low, ci_high; the std and interval are NaN
    for fewer than 2 pairs, everything is NaN for none.
    """
    seeds = sorted(set(a) & set(b))
    diff = np.array([a[s] - b[s] for s in seeds], dtype=float)
    n = len(diff)
    mean = diff.mean() if n else np.nan
    std = diff.std(ddof=1) if n > 1 else np.nan
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n) if n > 1 else np.nan
    return {"n_pairs": n, "gain_mean": mean, "gain_std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired_comparisons(selections: pd.DataFrame, *, method: str = "CAMRI",
                       versus: Sequence[str] = ("CE", "ArcFace"), confidence: float = 0.95) -> pd.DataFrame:
    """Per cell of ``select_all``, ``method`` against each of ``versus`` (their "maintaining" choices),
    paired by seed: the recall gain of the important class, ``paired_gain``'s columns plus dataset, role,
    class_name, method, versus and both hyperparameters. Cells missing either method are left out."""
    maintaining = selections[selections["selection"] == "maintaining"]
    rows = []
    for (dataset, role, class_name), cell in maintaining.groupby(["dataset", "role", "class_name"], sort=False):
        chosen = cell.set_index("method")
        for other in versus:
            if method not in chosen.index or other not in chosen.index:
                continue
            mine, theirs = chosen.loc[method], chosen.loc[other]
            gain = paired_gain(dict(zip(mine["seeds"], mine["recalls"])),
                               dict(zip(theirs["seeds"], theirs["recalls"])), confidence)
            rows.append({"dataset": dataset, "role": role, "class_name": class_name, "method": method,
                         "versus": other, **gain, "method_hyperparameters": mine["hyperparameters"],
                         "versus_hyperparameters": theirs["hyperparameters"]})
    return pd.DataFrame(rows, columns=["dataset", "role", "class_name", "method", "versus", "n_pairs",
                                       "gain_mean", "gain_std", "ci_low", "ci_high", "method_hyperparameters",
                                       "versus_hyperparameters"])


# ---- beyond the paper: post-hoc threshold tuning -------------------------------------------------------

def _gap(logits: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: (best other logit − logit of class_index, index of that best other class)."""
    others = np.delete(logits, class_index, axis=1)
    best_other = others.argmax(axis=1)
    best_other += best_other >= class_index  # back to the full class index
    return others.max(axis=1) - logits[:, class_index], best_other


def _default_biases(gaps: np.ndarray, points: int = 201) -> np.ndarray:
    # Quantiles of the gaps put the grid where predictions change; 0 is the plain model; below the smallest
    # gap no sample goes to the class (recall 0), above the largest every sample does (recall 1).
    ends = [gaps.min() - 1.0, 0.0, gaps.max() + 1.0]
    return np.unique(np.concatenate([np.quantile(gaps, np.linspace(0, 1, points)), ends]))


def threshold_curve(logits: np.ndarray, labels: np.ndarray, class_index: int,
                    biases: np.ndarray | None = None) -> pd.DataFrame:
    """Recall of ``class_index`` and overall accuracy when ``bias`` is added to that class's logit.

    logits: (N, K) test logits; labels: (N,) true classes. biases: 1-D, in logit units (default: 201
    quantiles of the per-sample gaps, plus 0 and a bias beyond each end). Ties are broken as argmax
    does (lowest class index), so bias 0 reproduces the plain prediction. Returns columns bias, recall,
    accuracy, sorted by bias; recall is NaN when no sample is of the class.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (N, K) and labels (N,); got {logits.shape} and {labels.shape}")
    if not 0 <= class_index < logits.shape[1]:
        raise ValueError(f"class_index must be in [0, {logits.shape[1]}); got {class_index}")
    gap, best_other = _gap(logits, class_index)
    biases = np.sort(np.asarray(biases, dtype=np.float64)) if biases is not None else _default_biases(gap)
    # (N, B): is class_index predicted at each bias? On an exact tie it wins only if its index is lower.
    wins = (biases[None, :] > gap[:, None]) | ((biases[None, :] == gap[:, None])
                                               & (class_index < best_other)[:, None])
    target = labels == class_index
    correct = np.where(wins, target[:, None], (best_other == labels)[:, None])
    recall = wins[target].mean(axis=0) if target.any() else np.full(len(biases), np.nan)
    return pd.DataFrame({"bias": biases, "recall": recall, "accuracy": correct.mean(axis=0)})


def ce_threshold_curve(runs: pd.DataFrame, dataset: str, class_index: int,
                       biases: np.ndarray | None = None) -> pd.DataFrame:
    """``threshold_curve`` of every CE run of ``dataset`` (from its angles.npz), averaged over seeds at
    each bias, so it compares with the methods' mean points of ``cell_settings``. The default bias grid
    is built from the gaps of all seeds together. Columns: bias, recall, accuracy, n_seeds."""
    ce = _dataset_runs(runs, dataset)
    ce = ce[ce["loss"] == "ce"]
    if ce.empty:
        raise ValueError(f"no finished 'ce' runs of data set {dataset!r}")
    arrays = []
    for path in ce["path"]:
        with np.load(Path(path) / "angles.npz") as npz:
            arrays.append((npz["logits"].astype(np.float64), npz["labels"]))
    if biases is None:
        biases = _default_biases(np.concatenate([_gap(logits, class_index)[0] for logits, _ in arrays]))
    curves = [threshold_curve(logits, labels, class_index, biases) for logits, labels in arrays]
    mean = pd.concat(curves).groupby("bias", as_index=False)[["recall", "accuracy"]].mean()
    return mean.assign(n_seeds=len(curves))
