"""Post-hoc threshold tuning: a bias b added to the important class's logit of a trained model.

The paper names threshold tuning (Margineantu & Dietterich, 2000) as the classic way to raise one class's
recall and says it sacrifices accuracy, but reports no number for it. Here it is a baseline with numbers:
``CE+bias`` (and ``<method>+bias`` for any trained setting). It needs no training: every run stores its
validation and test logits (angles.npz, docs/run-format.md).

The rule, the same as the protocol's "maintaining accuracy" for trained settings:
- b is tuned on the selection split (validation by default; the test set under the paper's test-set
  protocol): the b with the highest mean recall of the class over the setting's seeds among those whose
  mean accuracy is >= the threshold (CE's mean accuracy − tolerance on that split). Ties: higher mean
  accuracy, then smaller |b|, so b = 0 (the plain model) wins whenever a bias changes nothing.
- One b per setting (not per seed), as one threshold would be deployed; it is then applied to each seed's
  test logits and reported on test like any other setting.
- The search is exact: predictions change only where b crosses a per-sample gap g = (best other logit) −
  (the class's logit), so one candidate per interval between consecutive distinct gaps (its midpoint),
  plus 0 and one beyond each end, covers every distinct outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# Mean accuracies are sums of fractions; a bias exactly at the threshold must not fail on rounding.
_ACCURACY_EPS = 1e-9

SPLIT_KEYS = {"test": ("logits", "labels"), "validation": ("val_logits", "val_labels")}


def gaps(logits: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample (N,): best other logit − logit of ``class_index``, and the index of that best other class.

    logits: (N, K). Class ``class_index`` is predicted with bias b when b > gap (on an exact tie, when its
    index is lower than the other's: argmax takes the lowest index).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K); got shape {logits.shape}")
    if not 0 <= class_index < logits.shape[1]:
        raise ValueError(f"class_index must be in [0, {logits.shape[1]}); got {class_index}")
    others = np.delete(logits, class_index, axis=1)
    best_other = others.argmax(axis=1)
    best_other += best_other >= class_index  # back to the full class index
    return others.max(axis=1) - logits[:, class_index], best_other


def candidate_biases(gap: np.ndarray) -> np.ndarray:
    """Sorted biases covering every distinct outcome: 0, the midpoints of consecutive distinct gaps, and one
    bias 1 below the smallest gap (no sample goes to the class) and 1 above the largest (every sample does)."""
    distinct = np.unique(np.asarray(gap, dtype=np.float64))
    if distinct.size == 0:
        return np.array([0.0])
    midpoints = (distinct[:-1] + distinct[1:]) / 2
    return np.unique(np.concatenate([[distinct[0] - 1.0, 0.0, distinct[-1] + 1.0], midpoints]))


def bias_outcomes(
    logits: np.ndarray, labels: np.ndarray, class_index: int, biases: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Recall of ``class_index`` and overall accuracy at each bias: two arrays of shape (B,).

    logits: (N, K); labels: (N,). Recall is NaN when no sample is of the class.
    """
    gap, best_other = gaps(logits, class_index)
    labels = np.asarray(labels)
    if labels.shape != gap.shape:
        raise ValueError(f"labels must be (N,) = {gap.shape}, one per row of logits; got {labels.shape}")
    biases = np.asarray(biases, dtype=np.float64)
    # (N, B): is class_index predicted at each bias? On an exact tie it wins only if its index is lower.
    wins = (biases[None, :] > gap[:, None]) | ((biases[None, :] == gap[:, None]) & (class_index < best_other)[:, None])
    target = labels == class_index
    correct = np.where(wins, target[:, None], (best_other == labels)[:, None])
    recall = wins[target].mean(axis=0) if target.any() else np.full(len(biases), np.nan)
    return recall, correct.mean(axis=0)


def tune_bias(pairs: Sequence[tuple[np.ndarray, np.ndarray]], class_index: int, min_accuracy: float) -> dict | None:
    """The bias of the module's rule for one setting: ``pairs`` = (logits (N, K), labels (N,)) per seed on the
    tuning split; ``min_accuracy`` = the accuracy threshold on that split.

    Returns {"bias", "recall", "accuracy"} (means over the seeds at that bias), or None when no bias reaches
    the threshold (not even b = 0: the setting itself does not maintain accuracy).
    """
    if not pairs:
        raise ValueError("tune_bias needs the logits of at least one run")
    biases = candidate_biases(np.concatenate([gaps(x, class_index)[0] for x, _ in pairs]))
    outcomes = [bias_outcomes(x, y, class_index, biases) for x, y in pairs]
    recall = np.mean([r for r, _ in outcomes], axis=0)
    accuracy = np.mean([a for _, a in outcomes], axis=0)
    feasible = np.flatnonzero(accuracy >= min_accuracy - _ACCURACY_EPS)
    if feasible.size == 0:
        return None
    # lexsort: the last key is the primary one. Highest recall, then highest accuracy, then smallest |b|.
    best = feasible[np.lexsort((np.abs(biases[feasible]), -accuracy[feasible], -recall[feasible]))[0]]
    return {"bias": float(biases[best]), "recall": float(recall[best]), "accuracy": float(accuracy[best])}


def load_logits(run_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A run's stored (logits (N, K) float64, labels (N,)) on ``split`` ("test" or "validation")."""
    if split not in SPLIT_KEYS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_KEYS)}; got {split!r}")
    path = Path(run_dir) / "angles.npz"
    logits_key, labels_key = SPLIT_KEYS[split]
    with np.load(path) as npz:
        if logits_key not in npz:
            raise ValueError(
                f"{path} holds no {split} logits ({logits_key!r}): the run was trained without a "
                "validation split (before camri stored one). Re-run it with the current camri, "
                "or use the paper's test-set selection (protocol.selection: test in the profile)"
            )
        return npz[logits_key].astype(np.float64), npz[labels_key]


def bias_setting(setting: dict, class_index: int, split: str, threshold: float) -> dict | None:
    """The ``<method>+bias`` row of ``setting`` (a ``protocol.cell_settings`` row): one bias on the class's
    logit tuned on ``split`` by this module's rule (highest mean recall at accuracy >= ``threshold``), then
    reported on test per seed. None when no bias, not even 0, maintains accuracy."""
    tuned = tune_bias([load_logits(p, split) for p in setting["paths"]], class_index, threshold)
    if tuned is None:
        return None
    outcomes = [bias_outcomes(*load_logits(p, "test"), class_index, [tuned["bias"]]) for p in setting["paths"]]
    recalls = pd.Series([float(r[0]) for r, _ in outcomes])
    accuracies = pd.Series([float(a[0]) for _, a in outcomes])
    text = f"b={tuned['bias']:+.3g}"
    return {
        **setting,
        "method": setting["method"] + "+bias",
        "hyperparameters": ", ".join(filter(None, [setting["hyperparameters"], text])),
        "recalls": tuple(recalls),
        "accuracies": tuple(accuracies),
        "recall_mean": recalls.mean(),
        "recall_std": recalls.std(ddof=1),
        "accuracy_mean": accuracies.mean(),
        "accuracy_std": accuracies.std(ddof=1),
        "selection_recall_mean": tuned["recall"],
        "selection_accuracy_mean": tuned["accuracy"],
        "qualified": True,
        "bias": tuned["bias"],
    }


# ---- the recall–accuracy curve of a bias, for the trade-off figures ----------------------------------


def _default_biases(gap: np.ndarray, points: int = 201) -> np.ndarray:
    # Quantiles of the gaps put a plot's grid where predictions change; 0 is the plain model; below the
    # smallest gap no sample goes to the class (recall 0), above the largest every sample does (recall 1).
    ends = [gap.min() - 1.0, 0.0, gap.max() + 1.0]
    return np.unique(np.concatenate([np.quantile(gap, np.linspace(0, 1, points)), ends]))


def threshold_curve(
    logits: np.ndarray, labels: np.ndarray, class_index: int, biases: np.ndarray | None = None
) -> pd.DataFrame:
    """Recall of ``class_index`` and overall accuracy when ``bias`` is added to that class's logit.

    logits: (N, K); labels: (N,) true classes. biases: 1-D, in logit units (default: 201 quantiles of the
    per-sample gaps, plus 0 and a bias beyond each end). Ties are broken as argmax does (lowest class
    index), so bias 0 reproduces the plain prediction. Returns columns bias, recall, accuracy, sorted by
    bias; recall is NaN when no sample is of the class.
    """
    if biases is None:
        biases = _default_biases(gaps(logits, class_index)[0])
    biases = np.sort(np.asarray(biases, dtype=np.float64))
    recall, accuracy = bias_outcomes(logits, labels, class_index, biases)
    return pd.DataFrame({"bias": biases, "recall": recall, "accuracy": accuracy})


def ce_threshold_curve(
    runs: pd.DataFrame, dataset: str, class_index: int, biases: np.ndarray | None = None, *, split: str = "test"
) -> pd.DataFrame:
    """``threshold_curve`` of every CE run of ``dataset`` (its stored logits on ``split``), averaged over
    seeds at each bias, so it compares with the methods' mean points of ``protocol.cell_settings``. The
    default bias grid is built from the gaps of all seeds together. Columns: bias, recall, accuracy,
    n_seeds."""
    ce = runs[(runs["dataset"] == dataset) & (runs["loss"] == "ce")]
    if ce.empty:
        raise ValueError(f"no finished 'ce' runs of data set {dataset!r}")
    arrays = [load_logits(path, split) for path in ce["path"]]
    if biases is None:
        biases = _default_biases(np.concatenate([gaps(logits, class_index)[0] for logits, _ in arrays]))
    curves = [threshold_curve(logits, labels, class_index, biases) for logits, labels in arrays]
    mean = pd.concat(curves).groupby("bias", as_index=False)[["recall", "accuracy"]].mean()
    return mean.assign(n_seeds=len(curves))
