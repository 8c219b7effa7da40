"""A run's camera drift over its sources (batch.run_events.RunDrift through `score_sources`)."""

from __future__ import annotations

import json
from pathlib import Path

from factories import road_frames, write_video

from anomaly.calibrate import fit_camera_profile
from anomaly.drift import DriftConfig
from batch.local import score_sources
from footage.events_json import read_events_json

# a small window, so a few seconds of video can drift: 10 bins of 0.2 s before any verdict
DRIFT = DriftConfig(window_s=4.0, min_window_s=2.0, decorrelation_s=0.2)


def test_drift_is_found_across_the_sources_of_a_camera(tiny_trained, tmp_path: Path) -> None:
    from footage.sampling import SamplingConfig
    from footage.training_frames import load_named_prepared_frames

    normal = write_video(tmp_path / "normal.mp4", road_frames(120, seed=4))
    detector = tiny_trained.detector
    named = load_named_prepared_frames([str(normal)], SamplingConfig(), detector.preprocessor, 1000)
    detector = detector.with_profile("dash", fit_camera_profile(detector, [f for _, f in named])).for_camera("dash")
    first = write_video(tmp_path / "a_first.mp4", road_frames(60, seed=6))  # 6 s normal
    dirty = road_frames(80, seed=7) // 3  # then a lens that stays dark: every frame above the camera's normal
    second = write_video(tmp_path / "b_second.mp4", dirty)
    events = tmp_path / "events.json"
    summary = score_sources(
        detector,
        [str(first), str(second)],
        tmp_path / "scores.csv",
        events_path=events,
        camera="dash",
        drift=DRIFT,
        progress=False,
    )
    assert len(summary.drift) == 1
    drift = summary.drift[0]
    assert drift["type"] == "camera_drift" and drift["camera"] == "dash"
    assert Path(drift["source"]).name == "b_second.mp4"  # it started in the second file ...
    assert drift["end_s"] is None and drift["peak_exceed_fraction"] > DRIFT.max_exceed_fraction  # ... and lasted
    # within the stated time of the shift (every frame above the reference after it)
    assert drift["start_s"] <= DRIFT.window_s * DRIFT.max_exceed_fraction + DRIFT.decorrelation_s + 0.2
    assert read_events_json(events)["drift"] == json.loads(json.dumps(summary.drift))

    third = write_video(tmp_path / "c_third.mp4", road_frames(80, seed=8))  # the lens cleaned: drift ends
    again = score_sources(
        detector,
        [str(first), str(second), str(third)],
        tmp_path / "again.csv",
        camera="dash",
        drift=DRIFT,
        progress=False,
    )
    assert len(again.drift) == 1
    ended = again.drift[0]
    assert Path(ended["source"]).name == "b_second.mp4" and Path(ended["end_source"]).name == "c_third.mp4"
    assert ended["end_s"] is not None and ended["end_s"] <= DRIFT.window_s + DRIFT.decorrelation_s

    quiet = score_sources(
        detector, [str(first)], tmp_path / "quiet.csv", events_path=tmp_path / "quiet.json", camera="dash", drift=DRIFT
    )
    assert quiet.drift == [] and read_events_json(tmp_path / "quiet.json")["drift"] == []
