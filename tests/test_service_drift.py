"""Camera drift in the service: each stream's frames feed its camera's monitor (the stream id names the camera);
a drift that starts or ends is a `camera_drift` message (WebSocket) or entry (HTTP), and a gauge per camera."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from factories import frame_score, road_frames
from servers import Model, png, serving, settings_for
from typer.testing import CliRunner
from websockets.sync.client import ClientConnection, connect

import service.server
from anomaly.drift import DriftConfig, DriftReference, DriftTracker
from cli.main import app as cli_app
from service.schemas import CameraDrift, drift_message
from service.settings import ServiceSettings, StreamSettings
from service.streams import StreamRegistry

FPS = 10.0
# a window of a few seconds of stream time (frames are tagged at 10 fps, so the test runs in well under a second
# of model time): drift when over half of the last 4 s scored above the camera's p99, over at a quarter
TINY_DRIFT = DriftConfig(
    window_s=4.0, min_window_s=2.0, decorrelation_s=0.1, max_exceed_fraction=0.5, clear_exceed_fraction=0.25
)


@pytest.fixture(scope="module")
def model(tiny_trained) -> Model:  # noqa: ANN001 - a conftest fixture
    return Model(tiny_trained.detector, tiny_trained.path)


def blurred(frames: np.ndarray) -> np.ndarray:
    """A smeared lens: every frame heavily blurred (the tiny model scores these far above its p99)."""
    return np.stack([cv2.GaussianBlur(f, (0, 0), 6) for f in frames])


def send_tagged(ws: ClientConnection, frames: np.ndarray, start_index: int) -> None:
    for i, frame in enumerate(frames, start_index):
        ws.send(json.dumps({"frame_index": i, "timestamp_s": i / FPS}))
        ws.send(png(frame))


def receive_results(ws: ClientConnection, n: int) -> tuple[list[dict], list[dict]]:
    """n frame answers, and the camera_drift messages among them (each right after its frame's result)."""
    results: list[dict] = []
    drift: list[dict] = []
    while len(results) < n:
        message = json.loads(ws.recv(timeout=30))
        if message["type"] == "camera_drift":
            assert results and results[-1]["frame_index"] == message["frame_index"]
            drift.append(message)
        elif message["type"] != "slow_down":
            results.append(message)
    return results, drift


def gauges(srv, camera: str) -> tuple[float, float]:  # noqa: ANN001 - servers.Running
    m = srv.metrics()
    return m[f'anomaly_camera_exceed_fraction{{camera="{camera}"}}'], m[f'anomaly_camera_drift{{camera="{camera}"}}']


def test_a_smeared_lens_raises_camera_drift_over_the_websocket_and_its_gauge_then_clears(model: Model) -> None:
    normal, smeared, again = road_frames(25, seed=21), blurred(road_frames(30, seed=22)), road_frames(45, seed=23)
    streams = StreamSettings(drift=TINY_DRIFT, ws_max_in_flight=128)
    with serving(settings_for(model, streams=streams)) as srv, connect(f"{srv.ws_url}/v1/streams/van7/ws") as ws:
        send_tagged(ws, normal, 0)
        results, drift = receive_results(ws, len(normal))
        assert drift == [] and all(r["type"] == "result" for r in results)
        exceed, drifting = gauges(srv, "van7")
        assert exceed < TINY_DRIFT.clear_exceed_fraction and drifting == 0

        send_tagged(ws, smeared, len(normal))
        results, drift = receive_results(ws, len(smeared))
        assert all(r["is_anomaly"] for r in results)
        (started,) = drift
        exceed, drifting = gauges(srv, "van7")
        assert drifting == 1 and exceed > TINY_DRIFT.max_exceed_fraction

        send_tagged(ws, again, len(normal) + len(smeared))
        _, drift = receive_results(ws, len(again))
        (ended,) = drift
        assert gauges(srv, "van7")[1] == 0

    assert started["camera"] == "van7" and started["started"] and started["drifting"] and not started["ended"]
    assert started["reference"] == "p99" and started["end_s"] is None
    assert started["reference_score"] == pytest.approx(model.detector.calibrated.score_quantiles["p99"])
    # the smear began at 2.5 s; over half of a 4 s window: between 2 and 2.5 s later (a young window is quicker)
    assert 2.5 < started["timestamp_s"] <= 2.5 + 2.1 and started["exceed_fraction"] > 0.5
    assert ended["ended"] and not ended["drifting"] and ended["start_s"] == started["timestamp_s"]
    assert ended["end_s"] == ended["timestamp_s"] > 5.5  # after the smear ended, once a quarter or less remained
    assert ended["peak_exceed_fraction"] >= started["exceed_fraction"]


def test_http_stream_messages_carry_the_drift_they_started_and_the_model_shows_the_settings(model: Model) -> None:
    smeared = blurred(road_frames(16, seed=24))
    streams = StreamSettings(drift=TINY_DRIFT)
    with serving(settings_for(model, streams=streams)) as srv, httpx.Client(base_url=srv.url) as client:
        assert client.get("/v1/model").json()["drift"] == TINY_DRIFT.model_dump()
        files = [("frames", (f"{i}.png", png(f))) for i, f in enumerate(smeared)]
        fields = {"timestamp_s": [str(i / FPS) for i in range(len(smeared))]}
        r = client.post("/v1/streams/truck-1/frames", files=files, data=fields)
        assert r.status_code == 200, r.text
        (drift,) = r.json()["camera_drift"]
        quiet = client.post("/v1/streams/truck-2/frames", content=png(road_frames(1, seed=25)[0])).json()
        assert gauges(srv, "truck-1")[1] == 1 and gauges(srv, "truck-2") == (0.0, 0.0)
    # from the first frame: half of the 2 s minimum window (20 bins) must be above: the 11th frame raises it
    assert (drift["camera"], drift["frame_index"], drift["started"]) == ("truck-1", 10, True)
    assert quiet["camera_drift"] == []


def test_drift_off_keeps_no_monitors_and_no_gauges(model: Model) -> None:
    with serving(settings_for(model, streams=StreamSettings(drift=None))) as srv:
        r = httpx.post(f"{srv.url}/v1/streams/van7/frames", content=png(road_frames(1)[0]))
        assert r.status_code == 200 and r.json()["camera_drift"] == []
        assert not [k for k in srv.metrics() if k.startswith("anomaly_camera_")]


def test_streams_feed_their_cameras_monitor_in_send_order() -> None:
    tracker = DriftTracker(TINY_DRIFT, lambda camera: DriftReference("p99", 1.0, 0.01))

    async def main() -> list:
        reg = StreamRegistry(StreamSettings(), threshold=1.0, drift=tracker)
        s = reg.open("cam", retry_after_s=1)
        slots = [s.reserve(s.tag(None, None, FPS), now=0.0) for _ in range(20)]
        for i in reversed(range(20)):  # scored in reverse: published, and counted, in order
            s.fill(slots[i], frame_score(5.0), now=0.0)
        return [slot.future.result() for slot in slots]

    outcomes = asyncio.run(main())
    fractions = [o.drift.exceed_fraction for o in outcomes]
    assert fractions == sorted(fractions) and fractions[0] == pytest.approx(1 / TINY_DRIFT.min_bins)
    messages = [m for o in outcomes if (m := drift_message(o)) is not None]
    assert [(m.frame_index, m.started) for m in messages] == [(10, True)]
    assert isinstance(messages[0], CameraDrift) and messages[0].model_dump()["type"] == "camera_drift"
    assert [s.camera for s in tracker.states()] == ["cam"]


def test_drift_options_reach_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANOMALY_API_TOKEN", raising=False)
    seen: list[ServiceSettings] = []
    monkeypatch.setattr(service.server, "serve", lambda settings: seen.append(settings))
    runner = CliRunner()
    args = ["serve", "--model", "m.pt", "--drift-window", "600", "--drift-bound", "0.3", "--drift-reference", "p99"]
    result = runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert seen[-1].streams.drift == DriftConfig(window_s=600, max_exceed_fraction=0.3)
    assert runner.invoke(cli_app, ["serve", "--model", "m.pt", "--no-drift"]).exit_code == 0
    assert seen[-1].streams.drift is None
    bad = runner.invoke(cli_app, ["serve", "--model", "m.pt", "--drift-bound", "0.05"])
    assert bad.exit_code == 2 and "below max_exceed_fraction" in bad.output
