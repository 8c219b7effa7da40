"""The streaming service end to end: a real uvicorn server on 127.0.0.1 (free port), real HTTP and WebSocket clients.

Each test starts its own server (in a thread, through the same `make_server` as `anomaly serve`)
with the settings it needs; the model is a tiny one trained once for this module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from factories import road_frames, with_square
from pydantic import SecretStr
from servers import Model, png, receive_json, serving, settings_for, wait_until
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from anomaly.events import EventConfig, EventTracker
from anomaly.scoring import score_frames
from cli.main import app as cli_app
from footage.scores_csv import read_scores_csv
from service.settings import BatchSettings, Limits, StreamSettings


@pytest.fixture(scope="module")
def model(tiny_trained) -> Model:  # noqa: ANN001 - a conftest fixture
    return Model(tiny_trained.detector, tiny_trained.path)


# ---------------------------------------------------------------------------------------------


def test_single_frame_matches_anomaly_score_on_the_same_frame(model: Model, tmp_path: Path) -> None:
    frame = with_square(road_frames(3, seed=4)[2])
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "f000.png").write_bytes(png(frame))
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        cli_app,
        ["score", str(folder), "--model", str(model.path), "--out", str(out), "--device", "cpu", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    expected = read_scores_csv(out)

    with serving(settings_for(model)) as srv:
        raw = httpx.post(f"{srv.url}/v1/score", content=png(frame), headers={"content-type": "image/png"})
        multi = httpx.post(f"{srv.url}/v1/score", files={"image": ("f.png", png(frame), "image/png")})
        with_map = httpx.post(f"{srv.url}/v1/score", params={"heatmap": "true"}, content=png(frame))
    assert raw.status_code == multi.status_code == with_map.status_code == 200
    body = raw.json()
    for column in ("score", "recon_error", "spatial_score", "latent_score"):
        # the CSV keeps 6 significant digits
        assert body[column] == pytest.approx(expected[column][0], rel=1e-5, abs=1e-6), column
    # the discriminator's score is computed when the model's score uses it: here neither gives it
    assert "disc_score" not in body and "disc_score" not in expected
    assert body["is_anomaly"] == bool(expected["is_anomaly"][0])
    assert body["threshold"] == pytest.approx(model.detector.threshold)
    assert body["model_version"] == hashlib.sha256(model.path.read_bytes()).hexdigest()[:12]
    assert "heatmap_png" not in body
    assert multi.json() == body
    heat = cv2.imdecode(np.frombuffer(base64.b64decode(with_map.json()["heatmap_png"]), np.uint8), cv2.IMREAD_COLOR)
    assert heat.shape == frame.shape and not np.array_equal(heat, frame)


def labeled_clip() -> tuple[np.ndarray, np.ndarray]:
    """40 road frames with an obvious anomaly at 15..24 (an obstacle, then a blacked-out sensor), and labels."""
    frames = road_frames(40, seed=7)
    labels = np.zeros(40, bool)
    labels[15:25] = True
    for i in range(15, 25):
        frames[i] = with_square(frames[i], frac=0.35) if i < 20 else np.zeros_like(frames[i])
    return frames, labels


def test_websocket_stream_answers_every_frame_in_order_with_event_transitions(model: Model) -> None:
    frames, labels = labeled_clip()
    events = EventConfig(window=3)
    # a small in-flight limit so the client (which sends everything at once) is slowed down on the way
    streams = StreamSettings(ws_max_in_flight=4, events=events)
    with serving(settings_for(model, streams=streams)) as srv:
        with connect(f"{srv.ws_url}/v1/streams/cam-7/ws") as ws:

            def send_all() -> None:
                for i, frame in enumerate(frames):
                    ws.send(json.dumps({"frame_index": 100 + i, "timestamp_s": i / 10}))
                    ws.send(png(frame))

            sender = threading.Thread(target=send_all)
            sender.start()
            messages = []
            while len([m for m in messages if m["type"] != "slow_down"]) < len(frames):
                messages.append(json.loads(ws.recv(timeout=30)))
            sender.join()
        slow_downs = [m for m in messages if m["type"] == "slow_down"]
        results = [m for m in messages if m["type"] != "slow_down"]
        scored_total = srv.metrics()["anomaly_frames_scored_total"]

    assert [r["type"] for r in results] == ["result"] * 40
    assert [r["frame_index"] for r in results] == [100 + i for i in range(40)]
    assert [r["timestamp_s"] for r in results] == pytest.approx([i / 10 for i in range(40)])
    assert slow_downs and all(m["limit"] == 4 for m in slow_downs)
    assert scored_total == 40  # slowed down, never dropped

    scores = np.array([r["score"] for r in results])
    direct = score_frames(model.detector, list(frames))
    np.testing.assert_allclose(scores, direct.score, rtol=1e-4, atol=1e-4)

    # the service's smoothing and event state is exactly the tracker's, fed in frame order
    tracker = EventTracker("cam-7", model.detector.threshold, events)
    for i, r in enumerate(results):
        upd = tracker.update(100 + i, i / 10, scores[i])
        assert r["smoothed_score"] == pytest.approx(upd.smoothed)
        assert r["event"] == {"open": upd.active, "started": upd.started, "ended": upd.ended}
        assert len(r["finished_events"]) == len(upd.finished)

    started = [i for i, r in enumerate(results) if r["event"]["started"]]
    ended = [i for i, r in enumerate(results) if r["event"]["ended"]]
    assert len(started) == 1 and len(ended) == 1, (started, ended)
    assert 15 <= started[0] <= 17  # opens within the labeled stretch
    assert 25 <= ended[0] <= 28  # and closes after it (the moving average lags a frame or two)
    (finished,) = results[ended[0]]["finished_events"]
    assert finished["start_frame"] == 100 + started[0] and finished["end_frame"] == 100 + ended[0] - 1
    flagged = np.array([r["is_anomaly"] for r in results])
    assert flagged[labels].all()
    assert flagged[~labels].mean() < 0.2


def test_concurrent_clients_are_batched_together(model: Model) -> None:
    frames = road_frames(6, seed=11)
    batching = BatchSettings(max_batch=8, max_wait_ms=400)
    with serving(settings_for(model, batching=batching)) as srv:

        def post(frame: np.ndarray) -> dict:
            with httpx.Client() as client:  # one connection per client
                r = client.post(f"{srv.url}/v1/score", content=png(frame), timeout=30)
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(len(frames)) as pool:
            answers = list(pool.map(post, frames))
        m = srv.metrics()
    assert m["anomaly_frames_scored_total"] == len(frames)
    assert m["anomaly_batch_size_sum"] / m["anomaly_batch_size_count"] > 1
    assert m['anomaly_batch_size_bucket{le="1.0"}'] < m["anomaly_batch_size_count"]
    # each client got its own frame's scores back
    direct = score_frames(model.detector, list(frames))
    np.testing.assert_allclose([a["score"] for a in answers], direct.score, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_full_queue_answers_503_with_retry_after_and_websockets_wait(model: Model) -> None:
    frame = png(road_frames(1)[0])
    # the batcher holds frames for 1.5 s waiting for a batch of 8, so two frames fill the queue
    batching = BatchSettings(max_batch=8, max_wait_ms=1500, queue_size=2, retry_after_s=3)
    with serving(settings_for(model, batching=batching)) as srv:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(httpx.post, f"{srv.url}/v1/score", content=frame, timeout=30) for _ in range(2)]
            wait_until(lambda: srv.metrics()["anomaly_queued_frames"] == 2)
            refused = httpx.post(f"{srv.url}/v1/score", content=frame)
            stream_refused = httpx.post(f"{srv.url}/v1/streams/s/frames", content=frame)
            with connect(f"{srv.ws_url}/v1/streams/w/ws") as ws:
                ws.send(frame)
                told = json.loads(ws.recv(timeout=10))
                answered = json.loads(ws.recv(timeout=30))  # once the queue drains, the frame is scored
            assert [f.result().status_code for f in held] == [200, 200]
        after = httpx.post(f"{srv.url}/v1/score", content=frame)
        m = srv.metrics()
    assert refused.status_code == 503 and stream_refused.status_code == 503
    assert refused.headers["retry-after"] == "3"
    assert refused.json()["code"] == "queue_full"
    assert told["type"] == "slow_down"
    assert answered["type"] == "result" and answered["frame_index"] == 0
    assert after.status_code == 200
    assert m['anomaly_frames_rejected_total{reason="queue_full"}'] == 2


def truncated_jpeg(frame: np.ndarray) -> bytes:
    data = cv2.imencode(".jpg", frame)[1].tobytes()
    return data[: len(data) // 2]


def test_bad_uploads_get_4xx_and_the_server_keeps_serving(model: Model) -> None:
    good = road_frames(2, seed=3)
    limits = Limits(max_body_bytes=256 * 1024, max_width=200, max_height=200, max_frames_per_message=3)
    noise = np.random.default_rng(0).integers(0, 256, (480, 480, 3), dtype=np.uint8)
    bad = {
        "empty": (b"", 400, "empty_body"),
        "text": (b"this is not an image", 415, "unsupported_image"),
        "truncated jpeg": (truncated_jpeg(good[0]), 400, "corrupt_image"),
        "truncated png": (png(good[0])[:300], 400, "corrupt_image"),
        "header only": (png(good[0])[:30], 400, "corrupt_image"),
        "too wide": (png(np.zeros((50, 300, 3), np.uint8)), 413, "image_too_large"),
        "too big": (png(noise), 413, "body_too_large"),
    }
    with serving(settings_for(model, limits=limits)) as srv, httpx.Client(base_url=srv.url) as client:
        for name, (data, status, code) in bad.items():
            r = client.post("/v1/score", content=data)
            assert (r.status_code, r.json()["code"]) == (status, code), name
            r = client.post("/v1/streams/cam/frames", content=data)
            assert (r.status_code, r.json()["code"]) == (status, code), name
        assert client.post("/v1/score", files={"note": (None, "x")}).status_code == 400
        malformed = client.post(
            "/v1/score", content=b"--xx\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=xx"}
        )
        assert malformed.status_code == 400
        too_many = client.post("/v1/streams/cam/frames", files=[("frames", ("f.png", png(good[0])))] * 4)
        assert (too_many.status_code, too_many.json()["code"]) == (413, "too_many_frames")
        # a message with one bad frame is refused whole, and the stream carries on from where it was
        mixed = client.post(
            "/v1/streams/cam/frames", files=[("frames", ("a.png", png(good[0]))), ("frames", ("b.jpg", b"junk"))]
        )
        assert mixed.status_code == 415 and "frame 1" in mixed.json()["detail"]
        ok = client.post("/v1/streams/cam/frames", content=png(good[1]))
        assert ok.status_code == 200 and ok.json()["results"][0]["frame_index"] == 0

        with connect(f"{srv.ws_url}/v1/streams/ws-cam/ws") as ws:
            ws.send("not json")
            ws.send(png(good[0]))
            ws.send(bad["truncated jpeg"][0])
            ws.send(bad["too wide"][0])
            ws.send(png(good[1]))
            got = receive_json(ws, 5)
        assert got[0]["type"] == "error" and got[0]["code"] == "bad_message"
        assert [g["type"] for g in got[1:]] == ["result", "error", "error", "result"]
        assert [g["frame_index"] for g in got[1:]] == [0, 1, 2, 3]
        assert [g.get("code") for g in got[2:4]] == ["corrupt_image", "image_too_large"]

        assert client.post("/v1/score", content=png(good[0])).status_code == 200
        assert client.get("/readyz").status_code == 200
        m = srv.metrics()
    assert not [k for k in m if k.startswith("anomaly_http_requests_total") and 'status="500"' in k]


def test_auth_rejects_missing_or_wrong_tokens(model: Model) -> None:
    token = "s3cret-token-for-tests"
    frame = png(road_frames(1)[0])
    with serving(settings_for(model, auth_token=SecretStr(token))) as srv, httpx.Client(base_url=srv.url) as client:
        good = {"authorization": f"Bearer {token}"}
        wrong = [{}, {"authorization": "Bearer nope"}, {"authorization": f"Basic {token}"}, {"authorization": token}]
        calls = [
            ("GET", "/v1/model", None),
            ("GET", "/metrics", None),
            ("GET", "/openapi.json", None),
            ("GET", "/docs", None),
            ("POST", "/v1/score", frame),
            ("POST", "/v1/streams/a/frames", frame),
            ("DELETE", "/v1/streams/a", None),
        ]
        for method, path, body in calls:
            for headers in wrong:
                r = client.request(method, path, content=body, headers=headers)
                assert r.status_code == 401, (method, path, headers)
                assert r.json()["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
            r = client.request(method, path, content=body, headers=good)
            assert r.status_code == 200, (method, path, r.text)
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200

        for headers in wrong:
            with pytest.raises(InvalidStatus) as refused:
                connect(f"{srv.ws_url}/v1/streams/a/ws", additional_headers=headers)
            assert refused.value.response.status_code == 401
        with connect(f"{srv.ws_url}/v1/streams/a/ws", additional_headers=good) as ws:
            ws.send(frame)
            assert json.loads(ws.recv(timeout=30))["type"] == "result"
        assert srv.metrics(**good)["anomaly_frames_scored_total"] == 3


def test_model_info_health_openapi_metrics_and_stream_lifecycle(model: Model) -> None:
    frames = road_frames(4, seed=5)
    streams = StreamSettings(idle_timeout_s=0.3, events=EventConfig(window=2))
    with serving(settings_for(model, streams=streams)) as srv, httpx.Client(base_url=srv.url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        info = client.get("/v1/model").json()
        assert ready["status"] == "ready" and ready["model_version"] == info["version"]
        assert (info["input_width"], info["input_height"]) == (32, 24)
        assert info["threshold"] == pytest.approx(model.detector.threshold)
        assert info["calibration"]["signals"] == ["spatial", "latent"]
        assert info["events"]["window"] == 2

        spec = client.get("/openapi.json").json()
        assert {"/v1/score", "/v1/streams/{stream_id}/frames", "/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
        score_op = spec["paths"]["/v1/score"]["post"]
        assert {"image/jpeg", "image/png", "multipart/form-data"} <= set(score_op["requestBody"]["content"])
        assert spec["components"]["schemas"]["ScoreResponse"]["examples"]
        assert spec["components"]["schemas"]["StreamFrameResult"]["examples"]

        # three frames in one multipart message, tagged by the client
        files = [("frames", (f"{i}.png", png(f))) for i, f in enumerate(frames[:3])]
        fields = {"frame_index": ["7", "8", "10"], "timestamp_s": ["0.7", "0.8", "1.0"]}
        r = client.post("/v1/streams/lot-3/frames", files=files, data=fields)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [(x["frame_index"], x["timestamp_s"]) for x in results] == [(7, 0.7), (8, 0.8), (10, 1.0)]
        assert results[1]["smoothed_score"] == pytest.approx((results[0]["score"] + results[1]["score"]) / 2)
        # untagged: the next index, timestamp from ?fps
        r = client.post("/v1/streams/lot-3/frames", params={"fps": 4}, content=png(frames[3]))
        assert (r.json()["results"][0]["frame_index"], r.json()["results"][0]["timestamp_s"]) == (11, 2.75)
        assert client.post("/v1/streams/bad id!/frames", content=png(frames[0])).status_code in (404, 422)

        m = srv.metrics()
        assert m["anomaly_open_streams"] == 1
        for name in (
            'anomaly_http_requests_total{method="POST",route="/v1/streams/{stream_id}/frames",status="200"}',
            'anomaly_frame_latency_seconds_count{endpoint="stream_http"}',
            "anomaly_anomalies_flagged_total",
            "anomaly_batch_size_count",
            "anomaly_websocket_connections",
        ):
            assert name in m, name
        closed = client.delete("/v1/streams/lot-3").json()
        assert closed == {"stream_id": "lot-3", "frames": 4, "events": closed["events"]}
        assert client.delete("/v1/streams/lot-3").status_code == 404

        client.post("/v1/streams/idle/frames", content=png(frames[0]))
        assert srv.metrics()["anomaly_open_streams"] == 1
        wait_until(lambda: srv.metrics()["anomaly_open_streams"] == 0)  # expired after 0.3 s idle
        assert client.delete("/v1/streams/idle").status_code == 404


@pytest.mark.slow
def test_graceful_shutdown_answers_accepted_frames_before_exit(model: Model) -> None:
    frames = road_frames(5, seed=9)
    # frames wait up to 1 s for a batch of 64: they are all still queued when shutdown starts
    batching = BatchSettings(max_batch=64, max_wait_ms=1000)
    with serving(settings_for(model, batching=batching)) as srv, connect(f"{srv.ws_url}/v1/streams/cam/ws") as ws:
        for f in frames:
            ws.send(png(f))
        with ThreadPoolExecutor(2) as pool:
            pending = [pool.submit(httpx.post, f"{srv.url}/v1/score", content=png(f), timeout=30) for f in frames[:2]]
            wait_until(lambda: srv.metrics()["anomaly_queued_frames"] == 7)
            srv.server.should_exit = True  # what SIGTERM does
            results = receive_json(ws, 5)
            http = [p.result() for p in pending]
        srv.thread.join(30)
        assert not srv.thread.is_alive()
        with pytest.raises(ConnectionClosed) as closed:  # by the server, once everything was answered
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)
    assert [r["type"] for r in results] == ["result"] * 5
    assert [r["frame_index"] for r in results] == list(range(5))
    assert [h.status_code for h in http] == [200, 200]
