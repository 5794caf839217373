"""Paired differences and their intervals, against hand computations."""

import math

import numpy as np
import pytest

from camri.significance import format_difference, paired_difference


def test_t_interval_matches_hand_computation():
    # Differences on the shared seeds 0, 1, 2: 0.1, 0.0, 0.1 (seed 3 and 5 are unpaired and ignored).
    # mean = 0.2/3 = 0.066667; s = sqrt(((1/30)^2 * 2 + (2/30)^2) / 2) = sqrt(6/900 / 2) = 0.057735;
    # t_{0.975, 2} = 4.302653 → half-width = 4.302653 * 0.057735 / sqrt(3) = 0.143422.
    result = paired_difference({0: 0.8, 1: 0.7, 2: 0.9, 3: 0.6}, {0: 0.7, 1: 0.7, 2: 0.8, 5: 0.1})
    assert result["n_pairs"] == 3
    assert result["diff_mean"] == pytest.approx(0.0666667, abs=1e-6)
    assert result["diff_std"] == pytest.approx(0.0577350, abs=1e-6)
    assert result["ci_low"] == pytest.approx(0.0666667 - 0.143422, abs=1e-5)
    assert result["ci_high"] == pytest.approx(0.0666667 + 0.143422, abs=1e-5)
    assert result["interval"] == "t" and result["excludes_zero"] is False


def test_interval_that_excludes_zero_and_its_sign():
    # Differences 0.10, 0.12, 0.11: mean 0.11, s = 0.01, half = 4.302653 * 0.01 / sqrt(3) = 0.024841.
    up = paired_difference({0: 0.6, 1: 0.62, 2: 0.61}, {0: 0.5, 1: 0.5, 2: 0.5})
    assert up["ci_low"] == pytest.approx(0.11 - 0.024841, abs=1e-5) and up["excludes_zero"]
    down = paired_difference({0: 0.5, 1: 0.5, 2: 0.5}, {0: 0.6, 1: 0.62, 2: 0.61})
    assert down["ci_high"] == pytest.approx(-0.11 + 0.024841, abs=1e-5) and down["excludes_zero"]


def test_one_pair_has_no_interval_and_none_has_nothing():
    one = paired_difference({0: 0.8}, {0: 0.5})
    assert one["n_pairs"] == 1 and one["diff_mean"] == pytest.approx(0.3)
    assert math.isnan(one["ci_low"]) and one["interval"] == "" and one["excludes_zero"] is False
    none = paired_difference({0: 0.8}, {1: 0.5})
    assert none["n_pairs"] == 0 and math.isnan(none["diff_mean"])
    assert format_difference(none) == "no paired seeds"
    assert "no interval" in format_difference(one)


def test_bootstrap_from_ten_pairs_is_seeded_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    a = {s: float(v) for s, v in enumerate(rng.normal(0.6, 0.05, 12))}
    b = {s: float(v) for s, v in enumerate(rng.normal(0.5, 0.05, 12))}
    first, second = paired_difference(a, b), paired_difference(a, b)
    assert first["interval"] == "bootstrap" and first == second
    diff = np.array([a[s] - b[s] for s in range(12)])
    # The percentile interval of the bootstrap mean, recomputed independently with the same seed.
    means = diff[np.random.default_rng(0).integers(0, 12, size=(10_000, 12))].mean(axis=1)
    assert first["ci_low"] == pytest.approx(np.quantile(means, 0.025))
    assert first["ci_high"] == pytest.approx(np.quantile(means, 0.975))
    assert first["ci_low"] < diff.mean() < first["ci_high"]
    # Below ten pairs the same data get a t interval.
    assert paired_difference({s: a[s] for s in range(9)}, b)["interval"] == "t"


def test_bad_confidence_is_an_error():
    with pytest.raises(ValueError, match="confidence"):
        paired_difference({0: 1.0}, {0: 0.0}, confidence=95)
