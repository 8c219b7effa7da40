import json

import cv2
import numpy as np
import pytest
from factories import road_frames, with_square, write_video

from anomaly.scoring import score_frames
from batch.local import score_sources
from footage.sampling import SamplingConfig
from footage.scores_csv import CSV_COLUMNS, read_scores_csv


@pytest.fixture(scope="module")
def detector(tiny_trained):
    return tiny_trained.detector


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    (d / "broken.mp4").write_text("not a video")
    frames = road_frames(30, seed=1)
    frames[10:15] = [with_square(f) for f in frames[10:15]]
    return {
        "mp4": write_video(d / "a.mp4", frames),
        "avi": write_video(d / "b.avi", road_frames(12, seed=2)),
        "frames": frames,
        "bad": d / "broken.mp4",
    }


def test_csv_has_one_row_per_frame_with_the_documented_columns(detector, clips, tmp_path):
    out = tmp_path / "scores.csv"
    summary = score_sources(detector, [str(clips["mp4"]), str(clips["avi"])], out, batch_size=7, progress=False)
    header = out.read_text().splitlines()[0].split(",")
    assert tuple(header) == CSV_COLUMNS
    cols = read_scores_csv(out)
    assert len(cols["score"]) == summary.frames == 42
    assert list(cols["frame_index"][:30]) == list(range(30))
    np.testing.assert_allclose(cols["timestamp_s"][:3], [0.0, 0.1, 0.2], atol=1e-4)
    assert set(cols["source"]) == {str(clips["mp4"]), str(clips["avi"])}
    assert (cols["is_anomaly"] == (cols["score"] > detector.threshold)).all()


def test_rows_match_the_scoring_core_on_the_decoded_frames(detector, clips, tmp_path):
    out = tmp_path / "scores.csv"
    score_sources(detector, [str(clips["mp4"])], out, progress=False)
    cols = read_scores_csv(out)
    cap = cv2.VideoCapture(str(clips["mp4"]))
    decoded = [cap.read()[1] for _ in range(30)]
    direct = score_frames(detector, decoded)
    np.testing.assert_allclose(cols["score"], direct.score, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cols["recon_error"], direct.recon_error, rtol=1e-4, atol=1e-6)


def test_obstacle_frames_score_above_clean_ones(detector, clips, tmp_path):
    out = tmp_path / "scores.csv"
    score_sources(detector, [str(clips["mp4"])], out, progress=False)
    spatial = read_scores_csv(out)["spatial_score"]
    assert spatial[10:15].min() > np.median(np.r_[spatial[:10], spatial[15:]])


def test_bad_source_is_reported_and_the_others_are_scored(detector, clips, tmp_path):
    errors = {}
    out = tmp_path / "scores.csv"
    summary = score_sources(
        detector,
        [str(clips["bad"]), str(clips["avi"])],
        out,
        progress=False,
        on_error=lambda src, err: errors.setdefault(src, str(err)),
    )
    assert str(clips["bad"]) in summary.errors and str(clips["bad"]) in errors
    assert "broken.mp4" in errors[str(clips["bad"])]
    assert summary.frames == 12


def test_sampling_events_and_annotated_video(detector, clips, tmp_path):
    events_path, ann = tmp_path / "events.json", tmp_path / "ann"
    low = detector.with_threshold(-1e9)  # every frame anomalous: one event spanning the clip
    summary = score_sources(
        low,
        [str(clips["mp4"])],
        tmp_path / "s.csv",
        sampling=SamplingConfig(stride=3),
        events_path=events_path,
        annotate_dir=ann,
        progress=False,
    )
    assert summary.frames == 10
    events = json.loads(events_path.read_text())["events"]
    assert len(events) == 1 and events[0]["start_frame"] == 0 and events[0]["end_frame"] == 27
    cap = cv2.VideoCapture(str(ann / "a.annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    ok, frame = cap.read()
    assert ok and frame.shape == clips["frames"][0].shape
