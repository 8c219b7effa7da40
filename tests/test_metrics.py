import numpy as np
import pytest

from anomaly.metrics import auroc, frame_summary, per_kind_auroc


def test_auroc_by_hand():
    # positive/negative pairs ranked correctly: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_auroc_ties_count_half():
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_auroc_perfect_and_reversed():
    assert auroc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    assert auroc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0


def test_auroc_accepts_bool_and_lists():
    assert auroc([False, False, True, True], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1], []])
def test_auroc_is_none_with_one_class(labels):
    assert auroc(np.array(labels), np.arange(len(labels), dtype=float)) is None


def test_per_kind_auroc_ignores_other_kinds():
    labels = [0, 0, 1, 1, 1]
    kinds = ["", None, "fog", "fog", "obstacle"]
    scores = [0.1, 0.5, 0.9, 0.3, 0.0]
    result = per_kind_auroc(np.array(labels), kinds, np.array(scores))
    # fog vs normals: 0.9 beats both, 0.3 beats 0.1 -> 3/4; the obstacle's low score does not count
    assert result == {"fog": pytest.approx(0.75), "obstacle": pytest.approx(0.0)}


def test_per_kind_auroc_skips_kinds_of_normal_frames_and_unnamed_anomalies():
    labels = [0, 0, 1, 1]
    kinds = ["normal", "", "fog", ""]
    assert list(per_kind_auroc(np.array(labels), kinds, np.array([0.1, 0.2, 0.9, 0.0]))) == ["fog"]


def test_per_kind_auroc_needs_normal_frames():
    assert per_kind_auroc(np.array([1, 1]), ["fog", "fog"], np.array([0.1, 0.2])) == {"fog": None}


def test_frame_summary_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1])
    kinds = ["", "", "", "", "debris", "debris"]
    scores = np.array([0.1, 0.2, 0.6, 0.3, 0.7, 0.4])
    s = frame_summary(labels, kinds, scores, threshold=0.5)
    assert s["frames"] == 6
    assert s["normal_frames"] == 4
    assert s["anomalous_frames"] == 2
    assert s["false_alarm_rate"] == pytest.approx(1 / 4)  # only 0.6 of the normals is above 0.5
    assert s["detection_rate"] == pytest.approx(1 / 2)  # 0.7 yes, 0.4 no
    assert s["auroc"] == pytest.approx(7 / 8)  # 0.7 beats 4 normals, 0.4 beats 3
    # precision at the ranks of the positives: 0.7 is 1st (1/1), 0.4 is 3rd (2/3)
    assert s["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["auroc_per_kind"] == {"debris": pytest.approx(7 / 8)}
    assert s["threshold"] == 0.5


def test_frame_summary_threshold_is_strict():
    s = frame_summary(np.array([0, 1]), ["", "x"], np.array([0.5, 0.5]), threshold=0.5)
    assert s["false_alarm_rate"] == 0.0
    assert s["detection_rate"] == 0.0


def test_frame_summary_with_only_normal_frames():
    s = frame_summary(np.array([0, 0, 0]), ["", "", ""], np.array([0.1, 0.9, 2.0]), threshold=1.0)
    assert s["auroc"] is None
    assert s["average_precision"] is None
    assert s["detection_rate"] is None
    assert s["false_alarm_rate"] == pytest.approx(1 / 3)
    assert s["auroc_per_kind"] == {}


def test_frame_summary_with_only_anomalies():
    s = frame_summary(np.array([1, 1]), ["fog", "fog"], np.array([0.1, 2.0]), threshold=1.0)
    assert s["false_alarm_rate"] is None
    assert s["detection_rate"] == pytest.approx(0.5)
    assert s["auroc"] is None
