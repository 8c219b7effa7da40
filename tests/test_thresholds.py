import math

import numpy as np
import pytest
from factories import DISTRIBUTIONS, N

from anomaly.thresholds import (
    OperatingPoint,
    ThresholdChoice,
    best_f1,
    midpoints,
    operating_point,
    sweep,
    threshold_for_fpr,
    threshold_for_rate,
    threshold_from_flags,
)

# four normal frames, two anomalous; distinct scores 0.7 > 0.6 > 0.4 > 0.3 > 0.2 > 0.1
LABELS = np.array([0, 0, 0, 0, 1, 1])
SCORES = np.array([0.1, 0.2, 0.6, 0.3, 0.7, 0.4])


def test_sweep_by_hand():
    s = sweep(LABELS, SCORES)
    # candidates: the top score (flags nothing), then halfway between neighbouring distinct scores
    assert s.thresholds == pytest.approx([0.7, 0.65, 0.5, 0.35, 0.25, 0.15])
    assert s.tp.tolist() == [0, 1, 1, 2, 2, 2]
    assert s.fp.tolist() == [0, 0, 1, 1, 2, 3]
    assert s.fn.tolist() == [2, 1, 1, 0, 0, 0]
    assert s.tn.tolist() == [4, 4, 3, 3, 2, 1]
    np.testing.assert_allclose(s.precision, [np.nan, 1, 1 / 2, 2 / 3, 1 / 2, 2 / 5])
    np.testing.assert_allclose(s.recall, [0, 1 / 2, 1 / 2, 1, 1, 1])
    np.testing.assert_allclose(s.false_positive_rate, [0, 0, 1 / 4, 1 / 4, 1 / 2, 3 / 4])
    # F1 = 2TP / (2TP + FP + FN)
    np.testing.assert_allclose(s.f1, [0, 2 / 3, 2 / 4, 4 / 5, 4 / 6, 4 / 7])


def test_sweep_counts_match_the_strict_rule_at_every_threshold():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.normal(size=200) + labels, 1)  # many ties
    s = sweep(labels, scores)
    for i, row in enumerate(s.rows()):
        assert row == operating_point(labels, scores, s.thresholds[i]).to_dict()


def test_rows_are_json_ready_with_undefined_precision_as_none():
    first = sweep(LABELS, SCORES).rows()[0]
    assert first["precision"] is None
    assert first == {
        "threshold": 0.7,
        "tp": 0,
        "fp": 0,
        "fn": 2,
        "tn": 4,
        "precision": None,
        "recall": 0.0,
        "false_positive_rate": 0.0,
        "f1": 0.0,
    }


def test_best_f1_by_hand():
    p = best_f1(sweep(LABELS, SCORES))
    assert p.threshold == pytest.approx(0.35)
    assert (p.tp, p.fp, p.fn, p.tn) == (2, 1, 0, 3)
    assert p.f1 == pytest.approx(0.8)


def test_threshold_for_target_false_positive_rate():
    s = sweep(LABELS, SCORES)
    assert threshold_for_fpr(s, 0.0).threshold == pytest.approx(0.65)  # the most recall with no normal flagged
    assert threshold_for_fpr(s, 0.25).threshold == pytest.approx(0.35)
    assert threshold_for_fpr(s, 0.6).threshold == pytest.approx(0.25)
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        threshold_for_fpr(s, 1.5)


def test_operating_point_by_hand():
    p = operating_point(LABELS, SCORES, 0.4)  # strictly above: 0.6 and 0.7; 0.4 itself is not flagged
    assert (p.tp, p.fp, p.fn, p.tn) == (1, 1, 1, 3)
    assert (p.precision, p.recall, p.false_positive_rate) == (0.5, 0.5, 0.25)
    assert OperatingPoint(1.0, 0, 0, 0, 5).to_dict()["precision"] is None


def test_sweep_with_one_class():
    normal_only = sweep(np.zeros(4), np.array([1.0, 2.0, 2.0, 3.0]))
    assert normal_only.thresholds.tolist() == [3.0, 2.5, 1.5]
    assert normal_only.fp.tolist() == [0, 1, 3] and normal_only.tp.tolist() == [0, 0, 0]
    assert np.isnan(normal_only.recall).all()
    with pytest.raises(ValueError, match="no normal frames"):
        threshold_for_fpr(sweep(np.ones(3), np.array([1.0, 2.0, 3.0])), 0.1)


def test_sweep_rejects_empty_and_non_finite_scores():
    with pytest.raises(ValueError, match="no scored frames"):
        sweep(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        sweep(np.array([0, 1]), np.array([0.1, np.nan]))


def test_midpoints():
    assert midpoints(np.array([4.0, 2.0, 1.0])).tolist() == [4.0, 3.0, 1.5]


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("2.5", "value", 2.5),
        ("-1", "value", -1.0),
        ("best-f1", "best-f1", None),
        ("BEST-F1", "best-f1", None),
        ("far:0.01", "far", 0.01),
        ("calibrated", "calibrated", None),
    ],
)
def test_threshold_choice_parses(text, kind, value):
    assert ThresholdChoice.parse(text) == ThresholdChoice(kind, value)


@pytest.mark.parametrize("text", ["best", "far:", "far:2", "far:x", "nan", "inf", ""])
def test_threshold_choice_rejects_nonsense(text):
    with pytest.raises(ValueError, match="threshold"):
        ThresholdChoice.parse(text)


def test_threshold_choice_resolves():
    s = sweep(LABELS, SCORES)
    assert ThresholdChoice.parse("0.45").resolve(s, calibrated=9.0) == 0.45
    assert ThresholdChoice.parse("best-f1").resolve(s, calibrated=9.0) == pytest.approx(0.35)
    assert ThresholdChoice.parse("far:0").resolve(s, calibrated=9.0) == pytest.approx(0.65)
    assert ThresholdChoice.parse("calibrated").resolve(s, calibrated=9.0) == 9.0


def test_best_f1_needs_anomalous_frames():
    with pytest.raises(ValueError, match="no anomalous frames"):
        best_f1(sweep(np.zeros(3), np.array([1.0, 2.0, 3.0])))


# --- threshold_for_rate --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.01, 0.05])
@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_threshold_hits_the_target_rate(dist, rate):
    draw = DISTRIBUTIONS[dist]
    scores = draw(np.random.default_rng(0), N)
    threshold = threshold_for_rate(scores, rate)
    assert math.isfinite(threshold)
    assert (scores > threshold).mean() == pytest.approx(rate, rel=0.2)
    # and on new frames from the same distribution: the promise a user actually cares about
    fresh = draw(np.random.default_rng(12345), N)
    assert (fresh > threshold).mean() == pytest.approx(rate, rel=0.2)


def test_lower_rate_gives_higher_threshold():
    scores = np.random.default_rng(0).exponential(1.0, N)
    assert threshold_for_rate(scores, 0.01) > threshold_for_rate(scores, 0.05) > threshold_for_rate(scores, 0.2)


def test_threshold_accepts_lists_and_float32():
    scores = np.arange(101, dtype=np.float32)
    assert threshold_for_rate(scores, 0.1) == pytest.approx(90.0)
    assert threshold_for_rate(list(range(101)), 0.1) == pytest.approx(90.0)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.01, 1.5, float("nan")])
def test_invalid_rate_raises(rate):
    with pytest.raises(ValueError, match="false alarm rate"):
        threshold_for_rate(np.ones(10), rate)


def test_no_scores_raises():
    with pytest.raises(ValueError, match="no normal scores"):
        threshold_for_rate(np.array([]), 0.01)


def test_threshold_from_flags_reproduces_the_flags():
    scores = np.array([0.1, 2.0, 0.5, 3.0, 1.0])
    flags = scores > 0.9
    t = threshold_from_flags(scores, flags)
    assert t == pytest.approx(0.75)  # halfway between the highest calm score and the lowest flagged one
    assert ((scores > t) == flags).all()
    assert threshold_from_flags(scores, np.zeros(5, bool)) == 3.0
    everything = threshold_from_flags(scores, np.ones(5, bool))
    assert (scores > everything).all()
    with pytest.raises(ValueError, match="does not follow from one threshold"):
        threshold_from_flags(scores, np.array([True, False, False, False, False]))
