"""The service scores each stream with its camera's profile: the stream id names the camera."""

import numpy as np
import pytest

from anomaly.calibrate import fit_camera_profile
from service.batcher import detector_scorer
from service.settings import StreamSettings
from service.streams import StreamRegistry


@pytest.fixture(scope="module")
def with_camera(tiny_trained, training_data):
    det = tiny_trained.detector
    frames = np.clip(training_data.holdout.astype(int) + 40, 0, 255).astype(np.uint8)
    return det.with_profile("truck-12.front", fit_camera_profile(det, [frames]))


def test_batches_mixing_streams_are_scored_per_camera_profile(with_camera, training_data):
    frames = list(training_data.holdout[:4])
    score = detector_scorer(with_camera)
    results = score([(frames[0], "truck-12.front"), (frames[1], "van-3"), frames[2], (frames[3], "truck-12.front")])
    assert [r.profile for r in results] == ["truck-12.front", "fleet", "fleet", "truck-12.front"]
    cam = with_camera.for_camera("truck-12.front")
    assert results[0].threshold == pytest.approx(cam.threshold)
    assert results[1].threshold == pytest.approx(with_camera.threshold)
    # the same frame scores as it does alone with that profile
    alone = detector_scorer(cam)([frames[3]])[0]
    assert results[3].score == pytest.approx(alone.score, rel=1e-5, abs=1e-5)


def test_a_stream_tracks_events_at_its_camera_threshold_and_says_which_profile(with_camera):
    opened = []
    reg = StreamRegistry(
        StreamSettings(), lambda sid: with_camera.for_camera(sid).threshold, on_open=lambda sid: opened.append(sid)
    )
    truck, van = reg.open("truck-12.front", 1), reg.open("van-3", 1)
    assert truck.tracker.threshold == pytest.approx(with_camera.for_camera("truck-12.front").threshold)
    assert van.tracker.threshold == pytest.approx(with_camera.threshold)
    assert opened == ["truck-12.front", "van-3"]
    assert "fleet profile" in with_camera.profile_note("van-3")
