import numpy as np
import pytest

from anomaly.events import EventConfig, find_events
from anomaly.metrics import (
    Stretch,
    auroc,
    average_precision,
    event_metrics,
    frame_summary,
    kind_metrics,
    kind_parts,
    labeled_stretches,
    match_events,
    normal_hours,
    per_kind_auroc,
    pr_points,
    roc_points,
)


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


def test_average_precision_by_hand_and_one_class():
    # ranks: 0.8 (pos, 1/1), 0.4 (neg), 0.35 (pos, 2/3) -> (1 + 2/3) / 2
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    assert average_precision([0, 0], [0.1, 0.2]) is None


def test_curve_points():
    fpr, tpr = roc_points(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    recall, precision = pr_points(np.array([0, 1]), np.array([0.2, 0.9]))
    assert recall[0] == 1.0 and precision[0] == 0.5
    assert roc_points(np.array([1, 1]), np.array([0.1, 0.2])) is None
    assert pr_points(np.array([0, 0]), np.array([0.1, 0.2])) is None


def test_kind_parts():
    assert kind_parts("fog+obstacle") == ("fog", "obstacle")
    assert kind_parts("") == () and kind_parts(None) == () and kind_parts("normal") == ()


def test_kind_metrics_counts_combined_kinds_for_each_part():
    labels = np.array([0, 0, 1, 1, 1])
    kinds = ["", "", "fog", "fog+obstacle", "obstacle"]
    scores = np.array([0.1, 0.5, 0.9, 0.3, 0.0])
    m = kind_metrics(labels, kinds, scores)
    assert set(m) == {"fog", "obstacle"}
    assert m["fog"]["frames"] == 2
    assert m["fog"]["auroc"] == pytest.approx(0.75)  # 0.9 beats both normals, 0.3 beats one
    assert m["obstacle"]["frames"] == 2
    assert m["obstacle"]["auroc"] == pytest.approx(0.25)  # 0.3 beats 0.1; 0.0 beats none
    # ranked 0.5 (normal), 0.3 (obstacle: 1/2), 0.1 (normal), 0.0 (obstacle: 2/4); the fog frames are left out
    assert m["obstacle"]["average_precision"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def frames(labels, kinds=None, source="a.mp4", fps=10.0):
    n = len(labels)
    return [source] * n, list(range(n)), [i / fps for i in range(n)], np.array(labels, bool), kinds or [""] * n


def test_labeled_stretches_are_runs_of_anomalous_frames_per_source():
    a = frames([0, 1, 1, 0, 1, 0], ["", "fog", "fog+obstacle", "", "glare", ""])
    b = frames([1, 1, 0], ["night", "night", ""], source="b.mp4")
    cols = [x + y for x, y in zip(a[:3], b[:3], strict=True)]
    stretches = labeled_stretches(*cols, np.r_[a[3], b[3]], a[4] + b[4])
    assert stretches == [
        Stretch("a.mp4", 1, 2, 0.1, 0.2, "fog+obstacle", 2),
        Stretch("a.mp4", 4, 4, 0.4, 0.4, "glare", 1),
        Stretch("b.mp4", 0, 1, 0.0, 0.1, "night", 2),
    ]


def test_labeled_stretches_follow_frame_order_not_row_order():
    stretches = labeled_stretches(["a"] * 4, [3, 0, 2, 1], [0.3, 0.0, 0.2, 0.1], np.array([1, 0, 1, 0]), [""] * 4)
    assert [(s.start_frame, s.end_frame) for s in stretches] == [(2, 3)]


def test_normal_hours_uses_each_sources_frame_spacing():
    # a: 40 frames 1 s apart (a stride-10 run on a 10 fps clip), the first 36 normal;
    # b: 3600 frames at 10 fps, the first 1800 normal
    a_ts = list(np.arange(40.0))
    b_ts = list(np.arange(3600) / 10.0)
    anomalous = np.r_[np.arange(40) >= 36, np.arange(3600) >= 1800]
    hours = normal_hours(["a"] * 40 + ["b"] * 3600, a_ts + b_ts, anomalous)
    assert hours == pytest.approx((36 * 1.0 + 1800 * 0.1) / 3600)


def run_events(scores, threshold=1.0, fps=10.0, source="a.mp4", **config):
    rows = [(i, i / fps, float(s)) for i, s in enumerate(scores)]
    return list(find_events(source, rows, threshold, EventConfig(**config)))


def test_event_metrics_on_a_constructed_sequence():
    #            0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17 18 19
    labels = [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    kinds = ["obstacle" if 2 <= i <= 5 else "fog" if 12 <= i <= 14 else "" for i in range(20)]
    scores = [0, 0, 0, 0, 3, 3, 2, 0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    # events: frames 4-6 (inside the obstacle, 0.2 s late), frames 9-10 (a false alarm); the fog is missed
    events = run_events(scores)
    assert [(e.start_frame, e.end_frame) for e in events] == [(4, 6), (9, 10)]
    src, idx, ts, lab, _ = frames(labels)
    stretches = labeled_stretches(src, idx, ts, lab, kinds)
    m = event_metrics(stretches, events, normal_hours(src, ts, lab))
    assert m["labeled_events"] == 2 and m["detected_events"] == 1 and m["event_recall"] == 0.5
    assert m["predicted_events"] == 2 and m["false_alarms"] == 1
    assert m["normal_hours"] == pytest.approx(13 * 0.1 / 3600)
    assert m["false_alarms_per_hour"] == pytest.approx(3600 / 1.3)
    assert m["delay_s"]["median"] == pytest.approx(0.2)
    assert m["per_kind"]["obstacle"]["recall"] == 1.0
    assert m["per_kind"]["fog"] == {
        "labeled": 1,
        "detected": 0,
        "recall": 0.0,
        "delay_s": {"mean": None, "median": None, "max": None},
    }


def test_event_settings_change_event_level_figures():
    labels = [0] * 5 + [1] * 5 + [0] * 10
    scores = [0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0]  # one true stretch, one 1-frame blip
    src, idx, ts, lab, kinds = frames(labels)
    stretches = labeled_stretches(src, idx, ts, lab, kinds)
    hours = normal_hours(src, ts, lab)
    raw = event_metrics(stretches, run_events(scores), hours)
    assert (raw["detected_events"], raw["false_alarms"]) == (1, 1)
    # min duration drops the blip; smoothing over 3 frames delays the detection by one frame
    cleaned = event_metrics(stretches, run_events(scores, window=3, min_duration_s=0.15), hours)
    assert (cleaned["detected_events"], cleaned["false_alarms"]) == (1, 0)
    assert cleaned["delay_s"]["max"] == pytest.approx(0.1)


def test_an_event_under_way_before_the_labeled_start_has_no_delay():
    stretch = Stretch("a.mp4", 5, 8, 0.5, 0.8, "", 4)
    (ev,) = run_events([0, 0, 0, 2, 2, 2, 2, 0])
    matches, false_alarms = match_events([stretch], [ev])
    assert matches[0].detected and matches[0].delay_s == 0.0 and false_alarms == []
    other_clip = run_events([0, 0, 0, 2, 2, 2, 2, 0], source="b.mp4")
    matches, false_alarms = match_events([stretch], other_clip)
    assert not matches[0].detected and matches[0].delay_s is None and false_alarms == [0]
    assert matches[0].to_dict()["detected"] is False


def test_event_metrics_without_stretches_or_normal_time():
    m = event_metrics([], [], 0.0)
    assert m["event_recall"] is None and m["false_alarms_per_hour"] is None and m["per_kind"] == {}


def test_per_kind_auroc_and_kind_metrics_follow_one_rule_for_combined_kinds():
    labels = np.array([0, 0, 1, 1])
    kinds = ["", "", "fog+obstacle", "fog"]
    scores = np.array([0.1, 0.5, 0.9, 0.3])
    per_kind = per_kind_auroc(labels, kinds, scores)
    assert per_kind == {k: v["auroc"] for k, v in kind_metrics(labels, kinds, scores).items()}
    assert per_kind["obstacle"] == pytest.approx(1.0)  # the combined frame counts as an obstacle frame too
    assert per_kind["fog"] == pytest.approx(0.75)
