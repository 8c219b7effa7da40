"""Camera drift on constructed score streams: quiet on correlated normal noise and short events, an alarm
within the stated time after a sustained shift, an end after it, and the settings refused when unsound."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.signal import lfilter
from scipy.stats import norm

from anomaly.drift import (
    DriftConfig,
    DriftMonitor,
    DriftReference,
    DriftTracker,
    drift_reference,
    profile_reference,
    time_to_alarm_s,
    time_to_clear_s,
)

FPS = 25.0
P99 = float(norm.ppf(0.99))  # the calibration distribution: standard normal scores
REFERENCE = DriftReference("p99", P99, 0.01)
THRESHOLD = P99


def normal_scores(seconds: float, seed: int, fps: float = FPS, phi: float = 0.98) -> np.ndarray:
    """Stationary scores with the calibration's distribution (N(0, 1)), AR(1)-correlated as video frames are
    (phi 0.98 at 25 fps: about 2 s of correlation)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * fps)
    noise = rng.normal(0.0, math.sqrt(1 - phi**2), n)
    return lfilter([1.0], [1.0, -phi], noise, zi=[phi * rng.normal()])[0]


def times(n: int, fps: float = FPS, start_s: float = 0.0) -> np.ndarray:
    return start_s + np.arange(n) / fps


@dataclass
class Run:
    fractions: np.ndarray
    started: list[float]
    ended: list[float]


def run(
    scores: np.ndarray, ts: np.ndarray, config: DriftConfig | None = None, monitor: DriftMonitor | None = None
) -> Run:
    m = monitor or DriftMonitor("cam", REFERENCE, config)
    fractions, started, ended = [], [], []
    for t, s in zip(ts.tolist(), scores.tolist(), strict=True):
        upd = m.update(t, s)
        fractions.append(upd.exceed_fraction)
        if upd.started:
            started.append(t)
        if upd.ended:
            ended.append(t)
    return Run(np.array(fractions), started, ended)


# ---- no alarm


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_alarm_on_30_minutes_of_correlated_normal_scores(seed: int) -> None:
    scores = normal_scores(30 * 60, seed)
    r = run(scores, times(len(scores)))
    assert r.started == []
    assert 0.002 < np.mean(r.fractions[-1000:]) < 0.05  # about the nominal 1% above p99
    assert r.fractions.max() < 0.5 * DriftConfig().max_exceed_fraction


def test_no_alarm_on_a_camera_a_few_times_noisier_than_its_calibration() -> None:
    """New drives see a few % above the calibrated p99, not 1%: still far from the bound."""
    scores = normal_scores(30 * 60, seed=3) * 1.25  # about 3.5% above p99
    r = run(scores, times(len(scores)))
    assert r.started == [] and 0.02 < r.fractions[-1] < 0.1


def test_short_anomaly_events_do_not_raise_drift() -> None:
    scores = normal_scores(30 * 60, seed=4)
    ts = times(len(scores))
    events_at = [5.0, *np.arange(60.0, 30 * 60, 150.0)]  # one right at the start, then every 2.5 minutes
    for start in events_at:
        scores[(ts >= start) & (ts < start + 3.0)] = THRESHOLD + 5.0  # 3 s far above threshold
    r = run(scores, ts)
    assert r.started == []
    assert r.fractions.max() < 0.1  # 3 s in the 60 s minimum window: 5%


def test_even_a_minute_long_event_stays_below_the_bound() -> None:
    """The bound is a share of the window: an event must fill max_exceed_fraction * window_s (60 s) to count."""
    scores = normal_scores(20 * 60, seed=5)
    ts = times(len(scores))
    scores[(ts >= 600) & (ts < 650)] = THRESHOLD + 5.0
    assert run(scores, ts).started == []


# ---- alarms after a shift


def shifted_run(shift: float, seed: int, config: DriftConfig, shift_at_s: float = 600.0, total_s: float = 1200.0):
    scores = normal_scores(total_s, seed)
    ts = times(len(scores))
    scores[ts >= shift_at_s] += shift
    return run(scores, ts, config), scores[ts >= shift_at_s]


def test_a_step_moving_every_frame_up_alarms_within_the_stated_time() -> None:
    config = DriftConfig()
    r, after = shifted_run(shift=8.0, seed=6, config=config)
    assert (after > P99).all()
    bound = time_to_alarm_s(config, 1.0)
    assert bound == pytest.approx(61.0)
    (start,) = r.started
    assert 0.8 * bound < start - 600.0 <= bound  # and the formula is not loose


@pytest.mark.parametrize("seed", [7, 8])
def test_a_step_putting_half_the_frames_above_p99_alarms_within_the_stated_time(seed: int) -> None:
    config = DriftConfig()
    r, after = shifted_run(shift=P99, seed=seed, config=config)  # the mean moves to the old p99
    window = after[: round(time_to_alarm_s(config, 0.5) * FPS)]
    realised = float((window > P99).mean())
    assert 0.4 < realised < 0.6
    assert r.started and r.started[0] > 600.0
    assert r.started[0] - 600.0 <= time_to_alarm_s(config, realised)


def test_a_shift_at_the_start_of_the_footage_alarms_soon_after_the_minimum_window() -> None:
    config = DriftConfig()
    scores = normal_scores(300, seed=9) + 8.0
    r = run(scores, times(len(scores)))
    # every bin above: the share is n / min_bins until the minimum window is seen
    assert r.started and r.started[0] == pytest.approx(config.max_exceed_fraction * config.min_window_s, abs=1.0)


def test_the_frame_rate_does_not_change_the_time_to_alarm() -> None:
    config = DriftConfig()
    delays = []
    for fps in (5.0, 25.0):
        scores = normal_scores(1200, seed=10, fps=fps)
        ts = times(len(scores), fps)
        scores[ts >= 600] += 8.0
        delays.append(run(scores, ts, config).started[0] - 600.0)
    assert delays[0] == pytest.approx(delays[1], abs=2 * config.decorrelation_s)


def test_the_alarm_ends_after_the_shift_goes_away_and_not_before_the_window_turns_over() -> None:
    config = DriftConfig()
    scores = normal_scores(1800, seed=11)
    ts = times(len(scores))
    shifted = (ts >= 300) & (ts < 900)
    scores[shifted] += 8.0
    r = run(scores, ts, config)
    assert len(r.started) == 1 and len(r.ended) == 1
    delay = r.ended[0] - 900.0
    worst = time_to_clear_s(config, 0.02)
    assert 0.8 * time_to_clear_s(config, 0.0) < delay <= worst  # hysteresis: the share must fall to 10%


def test_a_share_hovering_at_the_bound_does_not_flicker() -> None:
    config = DriftConfig()
    scores = normal_scores(3600, seed=12)
    scores += float(P99 - norm.ppf(0.8))  # 20% of the time above the old p99: right at the bound
    r = run(scores, times(len(scores)), config)
    assert len(r.started) <= 1 and len(r.ended) == 0


def test_a_new_stream_of_the_same_camera_continues_its_window() -> None:
    """Timestamps restarting at 0 (the camera reconnected) continue the monitor's clock and its window."""
    m = DriftMonitor("cam", REFERENCE)
    quiet = normal_scores(300, seed=13)
    run(quiet, times(len(quiet)), monitor=m)  # a full window of normal time
    part = normal_scores(40, seed=14) + 8.0
    first = run(part, times(len(part), start_s=300.0), monitor=m)  # 40 s above: 13% of the window
    second = run(part, times(len(part)), monitor=m)  # the new stream, from 0
    assert first.started == []
    # 60 s above p99 in all (20% of the window) is reached 20 s into the second stream, in its own time
    assert second.started and second.started[0] == pytest.approx(20.0, abs=2 * DriftConfig().decorrelation_s)


def test_the_event_says_what_was_exceeded() -> None:
    m = DriftMonitor("van7", REFERENCE)
    scores = normal_scores(400, seed=14)
    scores[: round(200 * FPS)] += 8.0
    updates = [m.update(t, s) for t, s in zip(times(len(scores)).tolist(), scores.tolist(), strict=True)]
    opened = next(u for u in updates if u.started)
    assert opened.event is not None and m.open_event() is not None  # still open: 200 s is too soon to clear
    d = opened.event.to_dict()
    assert d["type"] == "camera_drift" and d["camera"] == "van7" and d["reference"] == "p99"
    assert d["reference_score"] == pytest.approx(P99) and d["max_exceed_fraction"] == 0.2 and d["window_s"] == 300
    assert d["end_s"] is None and d["peak_exceed_fraction"] > 0.2


# ---- the tracker


class FakeProfile:
    def __init__(self, threshold: float, quantiles: dict[str, float] | None) -> None:
        self.threshold = threshold
        self.target_false_alarm_rate = 0.01
        self.signals = ("spatial",)
        self._quantiles = quantiles

    def summary(self) -> dict[str, Any]:
        return {} if self._quantiles is None else {"score_quantiles": self._quantiles}


class FakeScorer:
    """What `DriftTracker.for_scorer` reads of a scorer: each camera's profile."""

    def __init__(self, profiles: dict[str, FakeProfile]) -> None:
        self.profiles = profiles
        self.calibrated = profiles["fleet"]

    def for_camera(self, camera: str | None) -> FakeScorer:
        picked = FakeScorer(self.profiles)
        picked.calibrated = self.profiles.get(camera or "fleet", self.profiles["fleet"])
        return picked


def test_the_tracker_keeps_one_monitor_per_camera_with_its_profile_reference() -> None:
    scorer = FakeScorer(
        {"fleet": FakeProfile(3.0, {"p50": 0.1, "p90": 1.0, "p99": 2.5, "max": 4}), "van7": FakeProfile(4.0, None)}
    )
    tracker = DriftTracker.for_scorer(DriftConfig(), scorer)  # type: ignore[arg-type]
    for i in range(100):
        tracker.update("van7", i / FPS, 0.0)
        tracker.update(None, i / FPS, 0.0)
        tracker.update("truck-1", i / FPS, 0.0)
    refs = {m.camera: m.reference for m in tracker}
    assert refs["fleet"] == DriftReference("p99", 2.5, 0.01)
    assert refs["truck-1"] == refs["fleet"]  # no profile of its own: the fleet's
    assert refs["van7"] == DriftReference("threshold", 4.0, 0.01)  # calibrated before quantiles were stored
    assert sorted(s.camera for s in tracker.states()) == ["fleet", "truck-1", "van7"]


def test_the_tracker_collects_events_and_forgets_the_oldest_camera_past_its_bound() -> None:
    tracker = DriftTracker(DriftConfig(), lambda camera: REFERENCE, max_cameras=2)
    scores = normal_scores(900, seed=15)
    ts = times(len(scores))
    scores[(ts >= 100) & (ts < 400)] += 8.0
    for t, s in zip(ts.tolist(), scores.tolist(), strict=True):
        tracker.update("a", t, s)
        if t >= 300:
            tracker.update("b", t, 8.0)  # drifting from the start
    (done, still) = tracker.events()
    assert (done.camera, done.end_s is not None) == ("a", True) and done.start_s < 200
    assert (still.camera, still.end_s) == ("b", None)
    tracker.update("c", 0.0, 0.0)  # a third camera: "a" (updated before "b") is forgotten
    assert {m.camera for m in tracker} == {"b", "c"} and len(tracker) == 2


def test_reference_falls_back_to_the_threshold_and_profiles_are_read_through_their_summary() -> None:
    config = DriftConfig(reference="p90", max_exceed_fraction=0.5, clear_exceed_fraction=0.3)
    assert drift_reference({"p90": 1.5}, 3.0, 0.01, config) == DriftReference("p90", 1.5, 0.1)
    assert drift_reference({"p99": 2.0}, 3.0, 0.05, config) == DriftReference("threshold", 3.0, 0.05)
    assert profile_reference(FakeProfile(2.0, {"p99": 1.8}), DriftConfig()).score == 1.8  # type: ignore[arg-type]


# ---- settings


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"window_s": 0}, "greater than 0"),
        ({"window_s": 30}, "must not exceed window_s"),
        ({"decorrelation_s": 10}, "at least 10 decorrelation times"),
        ({"decorrelation_s": 1e-4}, "at most"),
        ({"max_exceed_fraction": 1.0}, "less than 1"),
        ({"clear_exceed_fraction": 0.3}, "below max_exceed_fraction"),
        ({"clear_exceed_fraction": 0.005}, "above 0.01"),
        ({"reference": "p90"}, "above 0.1"),
        ({"reference": "p50"}, "p90"),
        ({"bound": 0.3}, "Extra inputs"),
    ],
)
def test_unsound_settings_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DriftConfig(**changes)


def test_settings_are_frozen_and_a_reference_above_the_clearing_level_is_refused() -> None:
    config = DriftConfig()
    with pytest.raises(ValidationError):
        config.window_s = 10  # type: ignore[misc]
    with pytest.raises(ValueError, match="not below clear_exceed_fraction"):
        DriftMonitor("cam", DriftReference("threshold", 1.0, 0.2), config)
    assert time_to_alarm_s(config, 0.2) == math.inf and time_to_clear_s(config, 0.1) == math.inf
    with pytest.raises(ValueError, match="not finite"):
        DriftMonitor("cam", REFERENCE, config).update(math.nan, 0.0)


def test_frames_tagged_at_the_bin_rate_fill_one_bin_each() -> None:
    """i / 10 is not always a multiple of 0.1 in floating point (0.3 / 0.1 = 2.9999999999999996)."""
    config = DriftConfig(
        window_s=4.0, min_window_s=2.0, decorrelation_s=0.1, max_exceed_fraction=0.5, clear_exceed_fraction=0.25
    )
    m = DriftMonitor("cam", REFERENCE, config)
    for i in range(40):
        m.update(i / 10, 0.0)
    assert m.observed_bins == 40
