"""The post-hoc bias search on hand-made logits, with the hand-computed answer."""

import numpy as np
import pytest

from camri import posthoc

# Five samples, three classes; the important class is 1.
# gaps = best other − logit of class 1: [1.0, 0.5, -1.0, 2.0, 0.25]
LOGITS = np.array(
    [
        [2.0, 1.0, 0.0],  # label 1: needs b > 1.0
        [1.5, 1.0, 0.0],  # label 1: needs b > 0.5
        [0.0, 1.0, 0.0],  # label 1: already right (gap −1)
        [3.0, 1.0, 0.0],  # label 0: lost when b > 2.0
        [1.25, 1.0, 0.0],
    ]
)  # label 0: lost when b > 0.25
LABELS = np.array([1, 1, 1, 0, 0])


def test_gaps_and_candidates():
    gap, other = posthoc.gaps(LOGITS, 1)
    np.testing.assert_allclose(gap, [1.0, 0.5, -1.0, 2.0, 0.25])
    np.testing.assert_array_equal(other, [0, 0, 0, 0, 0])
    # Distinct gaps −1, 0.25, 0.5, 1, 2 → midpoints −0.375, 0.375, 0.75, 1.5; ends −2 and 3; and 0.
    np.testing.assert_allclose(posthoc.candidate_biases(gap), [-2.0, -0.375, 0.0, 0.375, 0.75, 1.5, 3.0])


def test_bias_outcomes_by_hand():
    recall, accuracy = posthoc.bias_outcomes(LOGITS, LABELS, 1, [0.0, 0.375, 0.75, 1.5, 3.0])
    # b=0: class 1 only for sample 2 → recall 1/3; correct: 2, 3, 4 → 3/5.
    # b=0.375: sample 4 lost → recall 1/3, accuracy 2/5. b=0.75: sample 1 won → 2/3, 3/5.
    # b=1.5: sample 0 won → 1, 4/5. b=3: sample 3 lost → 1, 3/5.
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(accuracy, [0.6, 0.4, 0.6, 0.8, 0.6])


def test_tune_bias_gives_the_hand_computed_bias():
    # Threshold 0.6: feasible b ∈ {−2 (0/3, 0.6)?}: at −2 recall 0, accuracy 2/5 → infeasible; the feasible
    # ones are 0, 0.75, 1.5, 3 (accuracy 0.6, 0.6, 0.8, 0.6); the highest recall (1.0) at 1.5 and 3, and
    # the higher accuracy picks 1.5.
    assert posthoc.tune_bias([(LOGITS, LABELS)], 1, 0.6) == {"bias": 1.5, "recall": 1.0, "accuracy": 0.8}
    # Threshold 0.85: nothing reaches it, not even the plain model.
    assert posthoc.tune_bias([(LOGITS, LABELS)], 1, 0.85) is None


def test_tune_bias_prefers_zero_when_a_bias_changes_nothing():
    # Class 2 is never near: every bias between −1 and 1 gives the plain predictions; 0 is chosen.
    logits = np.array([[3.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
    labels = np.array([0, 1])
    assert posthoc.tune_bias([(logits, labels)], 2, 0.0)["bias"] == 0.0


def test_tune_bias_averages_the_seeds():
    # Seed 2: the same samples with sample 4's logit of class 0 raised to 3.5 (gap 2.5), so the pooled
    # candidates add 2.25 and 3.5. At b = 1.5 both seeds have recall 1; accuracy 0.8 (sample 4 lost) and
    # 1.0 → mean 0.9. At 2.25 recall is 1 too, but sample 3 is lost in both: 0.6 and 0.8 → mean 0.7.
    second = LOGITS.copy()
    second[4, 0] = 3.5
    best = posthoc.tune_bias([(LOGITS, LABELS), (second, LABELS)], 1, 0.7)
    assert best == {"bias": 1.5, "recall": 1.0, "accuracy": pytest.approx(0.9)}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="class_index"):
        posthoc.gaps(LOGITS, 3)
    with pytest.raises(ValueError, match="labels"):
        posthoc.bias_outcomes(LOGITS, LABELS[:2], 1, [0.0])
    with pytest.raises(ValueError, match="at least one run"):
        posthoc.tune_bias([], 1, 0.5)


def test_load_logits_without_validation_says_how_to_fix(tmp_path):
    np.savez(tmp_path / "angles.npz", logits=LOGITS.astype(np.float32), labels=LABELS)
    logits, labels = posthoc.load_logits(tmp_path, "test")
    np.testing.assert_allclose(logits, LOGITS)
    with pytest.raises(ValueError, match="selection: test"):
        posthoc.load_logits(tmp_path, "validation")
    with pytest.raises(ValueError, match="split"):
        posthoc.load_logits(tmp_path, "train")
