"""camri.metrics: the relative angle variance, checked by hand, including the cases where it is undefined."""

from __future__ import annotations

import math

import torch

from camri.io import atomic_write_json, read_json
from camri.metrics import angle_statistics, relative_angle_variance


def test_relative_angle_variance_by_hand():
    # var 2 / mean(1, 3) = 1; var 1 / mean(2, 3) = 0.4; a NaN variance (empty class) is left out of the mean.
    assert relative_angle_variance([2.0, 1.0, 3.0], [0, 1]) == {"0": 1.0, "1": 0.4}
    assert relative_angle_variance([1.0, math.nan, 4.0], [0]) == {"0": 0.25}
    assert math.isnan(relative_angle_variance([math.nan, 1.0, 3.0], [0])["0"])  # c itself has no samples
    assert math.isnan(relative_angle_variance([1.0, math.nan], [0])["0"])  # no other class has samples


def test_relative_angle_variance_is_nan_when_the_others_do_not_vary(tmp_path):
    # One test image per class: every population variance is 0, so the ratio's denominator is 0.
    theta_deg = torch.tensor([10.0, 20.0, 30.0])
    _, variances = angle_statistics(theta_deg, torch.tensor([0, 1, 2]), 3)
    assert variances == [0.0, 0.0, 0.0]
    relative = relative_angle_variance(variances, [0, 1, 2])
    assert list(relative) == ["0", "1", "2"] and all(math.isnan(v) for v in relative.values())
    assert math.isnan(relative_angle_variance([5.0, 0.0, 0.0], [0])["0"])
    # summary.json is written with camri.io: NaN is the bare token NaN and reads back as NaN.
    atomic_write_json(tmp_path / "summary.json", {"relative_angle_variance": relative})
    assert '"0": NaN' in (tmp_path / "summary.json").read_text()
    assert all(math.isnan(v) for v in read_json(tmp_path / "summary.json")["relative_angle_variance"].values())
