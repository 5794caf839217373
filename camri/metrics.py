"""Test-set metrics of a run: accuracy, per-class recall, confusion matrix and the paper's angle statistics.

θ of a test sample is the angle between its L2-normalised feature and the weight vector of its own class,
reported in **degrees** (the paper's histograms). The relative angle variance of an important class c is
var(θ | c) / mean_{k ≠ c} var(θ | k): below 1 means c's features gather tighter around W_c than the
other classes' around theirs (the paper's analysis of CAMRI).
"""

from __future__ import annotations

import math

import torch

from camri.losses import ACOS_EPS


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts; rows = true class, columns = predicted class."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def recall_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """(K,) float64 recall of each class; NaN for a class with no test samples."""
    support = confusion.sum(dim=1).double()
    return confusion.diagonal().double() / support.where(support > 0, torch.tensor(math.nan).double())


def angles_deg(cosines: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) θ in degrees between each sample's feature and its own class's weight. cosines: (N, K)."""
    cos_t = cosines.gather(1, labels.long().unsqueeze(1)).squeeze(1).double()
    return torch.rad2deg(torch.acos(cos_t.clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS)))


def angle_statistics(theta_deg: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class mean (degrees) and population variance (degrees²) of θ; NaN for an empty class."""
    means, variances = [], []
    for k in range(num_classes):
        values = theta_deg[labels == k].double()
        means.append(values.mean().item() if len(values) else math.nan)
        variances.append(values.var(unbiased=False).item() if len(values) else math.nan)
    return means, variances


def others_mean_variance(variances: list[float], c: int) -> float:
    """The mean of the classes' variances other than c's (the relative angle variance's denominator);
    classes with a NaN variance (no test samples) are left out; 0.0 when no other class has one."""
    others = [v for k, v in enumerate(variances) if k != c and not math.isnan(v)]
    return sum(others) / len(others) if others else 0.0


def relative_angle_variance(variances: list[float], important) -> dict[str, float]:
    """{str(c): var_c / ``others_mean_variance``} for each important class c.

    The ratio is NaN where it is undefined: c has no test samples, no other class has any, or the other
    classes' mean variance is 0 (every other class has a single test sample, or all its angles are equal).
    """
    result = {}
    for c in important:
        mean_others = others_mean_variance(variances, c)
        result[str(c)] = variances[c] / mean_others if mean_others > 0 else math.nan
    return result
