"""Issue 13: the failures found by attacking the service, each as a regression test on a real uvicorn server.

- a failure at any stage after admission gives the room back (the 400-digit frame_index that
  disabled the service for good, among them);
- out-of-range tags are refused with 422 before admission (query, multipart part, WebSocket text);
- /readyz reflects a queue stuck full, and recovers;
- idle, half-sent and slow connections cannot starve the health checks;
- a client that leaves mid-body is counted as 499, not as a server error, without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from factories import road_frames
from servers import Model, Running, png, receive_json, serving, settings_for, wait_until
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

import service.engine
import service.routers.score
from anomaly.events import EventTracker
from service.batcher import MicroBatcher
from service.engine import ScoringService
from service.settings import BatchSettings, ConnectionSettings, Limits
from service.streams import Stream

HUGE = "9" * 400  # the frame_index that overflowed `index / fps`


@pytest.fixture(scope="module")
def model(tiny_trained) -> Model:  # noqa: ANN001 - a conftest fixture
    detector, path = tiny_trained.detector, tiny_trained.path
    return Model(detector, path)


def scoring(srv: Running) -> ScoringService:
    return srv.server.app.state.service


def assert_empty(srv: Running) -> None:
    """Nothing admitted, nothing waiting to be answered: the service has all its capacity back."""
    svc = scoring(srv)
    wait_until(lambda: svc.admission.in_use == 0 and svc._unanswered == 0, timeout=10)


def frame_answers(ws, n: int) -> list[dict]:  # noqa: ANN001
    """The next `n` answers to frames (results or errors), skipping flow-control messages."""
    out: list[dict] = []
    while len(out) < n:
        message = json.loads(ws.recv(timeout=30))
        if message["type"] != "slow_down":
            out.append(message)
    return out


def http_statuses(m: dict[str, float], status: str) -> float:
    return sum(v for k, v in m.items() if k.startswith("anomaly_http_requests_total") and f'status="{status}"' in k)


# ---------------------------------------------------------------------------------------------
# admission is released on every path


def _boom(*_: object, **__: object) -> None:
    raise RuntimeError("injected failure")


def _bad_value(*_: object, **__: object) -> None:
    raise ValueError("injected failure")


def _overflow(*_: object, **__: object) -> None:
    raise OverflowError("integer division result too large for a float")


STAGES: dict[str, Callable[[pytest.MonkeyPatch, ScoringService], None]] = {
    "decode": lambda mp, svc: mp.setattr(service.engine, "decode_image", _boom),
    "submit": lambda mp, svc: mp.setattr(MicroBatcher, "submit", _bad_value),
    "model": lambda mp, svc: mp.setattr(svc.batcher, "score_batch", _boom),
    "tag": lambda mp, svc: mp.setattr(Stream, "tag", _overflow),
    "reserve": lambda mp, svc: mp.setattr(Stream, "reserve", _boom),
    "event tracker": lambda mp, svc: mp.setattr(EventTracker, "update", _boom),
    "heat map": lambda mp, svc: mp.setattr(service.engine, "heatmap_png_base64", _boom),
    "response": lambda mp, svc: mp.setattr(service.routers.score.Scores, "fields_of", _boom),
}


def test_a_failure_at_any_stage_after_admission_gives_the_room_back(model: Model) -> None:
    frames = road_frames(3, seed=21)
    good = png(frames[0])
    batching = BatchSettings(queue_size=4)
    settings = settings_for(model, batching=batching, log_level="critical")
    # uvicorn drops the connection after an unhandled error (the injected ones): one connection per request
    close = {"connection": "close"}
    with serving(settings) as srv, httpx.Client(base_url=srv.url, timeout=30, headers=close) as client:
        svc = scoring(srv)
        for stage, inject in STAGES.items():
            sid = stage.replace(" ", "-")
            with pytest.MonkeyPatch.context() as mp:
                inject(mp, svc)
                for _ in range(6):  # more than the queue holds: a leak would show as 503 queue_full
                    r = client.post("/v1/score", params={"heatmap": "true"}, content=good)
                    assert r.status_code != 503, (stage, r.text)
                    r = client.post(f"/v1/streams/{sid}/frames", content=good)
                    assert r.status_code != 503, (stage, r.text)
                    files = [("frames", ("a.png", good)), ("frames", ("b.png", png(frames[1])))]
                    r = client.post(f"/v1/streams/{sid}-multi/frames", files=files)
                    assert r.status_code != 503, (stage, r.text)
                with connect(f"{srv.ws_url}/v1/streams/{sid}-ws/ws") as ws:
                    for _ in range(6):
                        ws.send(good)
                    answers = frame_answers(ws, 6)  # every frame is answered, result or error
                assert all(a["type"] in ("result", "error") for a in answers), (stage, answers)
                assert_empty(srv)
            # with the failure gone, the same streams carry on
            assert client.post("/v1/score", content=good).status_code == 200, stage
            assert client.post(f"/v1/streams/{sid}/frames", content=good).status_code == 200, stage
            assert_empty(srv)
        assert client.get("/readyz").status_code == 200


# ---------------------------------------------------------------------------------------------
# tags: bounded, refused with 422 before admission


def test_out_of_range_tags_are_refused_with_422_before_admission(model: Model) -> None:
    good = png(road_frames(1, seed=2)[0])
    batching = BatchSettings(queue_size=2)
    with serving(settings_for(model, batching=batching)) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        bad_queries = [
            {"frame_index": HUGE},
            {"frame_index": str(2**63)},
            {"frame_index": "-1"},
            {"fps": "5e-324"},
            {"fps": "0"},
            {"fps": "nan"},
            {"timestamp_s": "inf"},
            {"timestamp_s": "1e300"},
        ]
        for _ in range(70):  # 140 > 128: before the fix, enough to disable every route for good
            for params in bad_queries[:2]:
                r = client.post("/v1/streams/cam/frames", params=params, content=good)
                assert r.status_code == 422
        for params in bad_queries:
            r = client.post("/v1/streams/cam/frames", params=params, content=good)
            assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), params
            assert "\n" not in r.json()["detail"] and list(params)[0] in r.json()["detail"]
        for fields in ({"frame_index": HUGE}, {"frame_index": "1.5"}, {"timestamp_s": "nan"}, {"timestamp_s": "-2"}):
            r = client.post("/v1/streams/cam/frames", files=[("frames", ("f.png", good))], data=fields)
            assert (r.status_code, r.json()["code"]) == (422, "invalid_tag"), (fields, r.text)
        assert_empty(srv)
        # the largest legal values work, and the stream carries on
        r = client.post("/v1/streams/edge/frames", params={"frame_index": str(2**63 - 1), "fps": "0.01"}, content=good)
        assert r.status_code == 200, r.text
        r = client.post("/v1/streams/cam/frames", params={"fps": "0.01"}, content=good)
        assert r.status_code == 200 and r.json()["results"][0]["timestamp_s"] == 0.0
        r = client.post("/v1/streams/cam/frames", params={"fps": "0.01"}, content=good)
        assert r.json()["results"][0]["timestamp_s"] == 100.0  # finite, never null

        with connect(f"{srv.ws_url}/v1/streams/ws-cam/ws") as ws:
            ws.send(json.dumps({"frame_index": int(HUGE)}))
            ws.send(good)  # before the fix this frame vanished and the connection closed with 1000
            ws.send('{"timestamp_s": 1e400}')
            ws.send(good)
            got = receive_json(ws, 4)
        assert [(g["type"], g.get("code")) for g in got] == [
            ("error", "invalid_tag"),
            ("result", None),
            ("error", "invalid_tag"),
            ("result", None),
        ]
        assert [g["frame_index"] for g in got] == [None, 0, None, 1]
        for fps in ("5e-324", "nan", "0", "1e9"):  # the WebSocket's ?fps= is refused at the handshake
            with pytest.raises(InvalidStatus) as refused:
                connect(f"{srv.ws_url}/v1/streams/ws-cam/ws?fps={fps}")
            assert refused.value.response.status_code == 422
            assert json.loads(refused.value.response.body)["code"] == "invalid_request"
        assert_empty(srv)
        assert client.get("/readyz").status_code == 200


# ---------------------------------------------------------------------------------------------
# readiness


def test_readyz_goes_503_while_the_queue_stays_full_and_recovers(model: Model) -> None:
    frame = png(road_frames(1)[0])
    # the batcher waits 3 s for a batch of 8: two frames keep the queue of 2 full that long
    batching = BatchSettings(max_batch=8, max_wait_ms=3000, queue_size=2, unready_after_s=1.0)
    with serving(settings_for(model, batching=batching)) as srv, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(httpx.post, f"{srv.url}/v1/score", content=frame, timeout=30) for _ in range(2)]
        wait_until(lambda: scoring(srv).admission.in_use == 2)
        assert httpx.get(f"{srv.url}/readyz").status_code == 200  # full, but not for long yet
        time.sleep(1.3)
        stuck = httpx.get(f"{srv.url}/readyz")
        assert stuck.status_code == 503 and "full for" in stuck.json()["detail"]
        assert httpx.get(f"{srv.url}/healthz").status_code == 200  # alive all along
        assert [f.result().status_code for f in held] == [200, 200]
        assert httpx.get(f"{srv.url}/readyz").status_code == 200


def test_requests_beyond_max_requests_get_503_busy_but_health_checks_answer(model: Model) -> None:
    frame = png(road_frames(1)[0])
    batching = BatchSettings(max_batch=8, max_wait_ms=1500)  # the first request is held 1.5 s
    connections = ConnectionSettings(max_requests=1)
    with serving(settings_for(model, batching=batching, connections=connections)) as srv, ThreadPoolExecutor(1) as pool:
        held = pool.submit(httpx.post, f"{srv.url}/v1/score", content=frame, timeout=30)
        wait_until(lambda: scoring(srv).admission.in_use == 1)
        busy = httpx.post(f"{srv.url}/v1/score", content=frame)
        assert (busy.status_code, busy.json()["code"]) == (503, "busy") and busy.headers["retry-after"] == "1"
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
        assert httpx.get(f"{srv.url}/readyz").status_code == 200
        assert held.result().status_code == 200


# ---------------------------------------------------------------------------------------------
# connections


@contextmanager
def raw_connections(port: int, n: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if first_bytes:
                s.sendall(first_bytes)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.01)
    try:
        s.recv(1024)  # EOF (b""), or an error response before the close
        return True
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def test_idle_and_half_sent_connections_do_not_starve_health_checks_and_are_closed(model: Model) -> None:
    header_timeout = 1.5
    connections = ConnectionSettings(header_timeout_s=header_timeout, max_connections=1000)
    with serving(settings_for(model, connections=connections)) as srv:
        port = srv.server.port
        with (
            raw_connections(port, 250) as idle,
            raw_connections(port, 50, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") as half,
        ):
            start = time.monotonic()
            for path in ("/healthz", "/readyz"):
                t = time.monotonic()
                r = httpx.get(f"{srv.url}{path}", timeout=5)
                assert r.status_code == 200 and time.monotonic() - t < 1.0, (path, r.status_code)
            # every idle and half-sent connection is closed within the header timeout (plus scheduling slack)
            deadline = start + header_timeout + 2.0
            pending = list(idle + half)
            while pending and time.monotonic() < deadline:
                pending = [s for s in pending if not closed_by_server(s)]
                time.sleep(0.05)
            assert not pending, f"{len(pending)} connection(s) still open after the header timeout"
            assert time.monotonic() - start >= header_timeout - 0.2  # not closed before it either


def test_at_the_connection_cap_the_longest_idle_connection_makes_room(model: Model) -> None:
    connections = ConnectionSettings(max_connections=40, header_timeout_s=60)
    with serving(settings_for(model, connections=connections)) as srv, raw_connections(srv.server.port, 120) as idle:
        t = time.monotonic()
        r = httpx.get(f"{srv.url}/healthz", timeout=5)
        assert r.status_code == 200 and time.monotonic() - t < 1.0
        wait_until(lambda: sum(closed_by_server(s) for s in idle) >= 120 - 40)
        assert not closed_by_server(idle[-1])  # the newest stays; the oldest went first


def read_response_head(s: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


def test_idle_keep_alive_and_oversized_headers_are_closed(model: Model) -> None:
    connections = ConnectionSettings(keep_alive_s=1, header_timeout_s=30, max_header_bytes=4096)
    with serving(settings_for(model, connections=connections)) as srv:
        port = srv.server.port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response_head(s).startswith(b"HTTP/1.1 200")
            t = time.monotonic()
            wait_until(lambda: closed_by_server(s), timeout=5)
            assert 0.8 < time.monotonic() - t < 2.5  # the keep-alive timeout, 1 s
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            t = time.monotonic()
            with contextlib.suppress(OSError):  # the server hangs up once past the cap
                for _ in range(10):  # 10 kB of headers, never finished
                    s.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
                    time.sleep(0.01)
            wait_until(lambda: closed_by_server(s), timeout=5)
            assert time.monotonic() - t < 5  # not the 30 s header timeout
        assert httpx.get(f"{srv.url}/healthz").status_code == 200


def test_a_body_still_arriving_after_its_early_answer_is_not_taken_for_headers(model: Model) -> None:
    """A 413 goes out before an oversized body is all in; the rest of that body is body, not the next headers."""
    connections = ConnectionSettings(max_header_bytes=4096)
    limits = Limits(max_body_bytes=64 * 1024)
    body = b"\x89PNG" + b"\0" * 300_000
    with (
        serving(settings_for(model, connections=connections, limits=limits)) as srv,
        socket.create_connection(("127.0.0.1", srv.server.port), timeout=10) as s,
    ):
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert read_response_head(s).startswith(b"HTTP/1.1 413")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response_head(s).startswith(b"HTTP/1.1 200")


def test_slow_body_gets_408_and_the_connection_is_closed(model: Model) -> None:
    connections = ConnectionSettings(body_timeout_s=0.5)
    with serving(settings_for(model, connections=connections)) as srv:
        with socket.create_connection(("127.0.0.1", srv.server.port), timeout=5) as s:
            s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"\x89PNG")
            t = time.monotonic()
            answer = read_response_head(s)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            assert 0.4 < time.monotonic() - t < 3.0
        m = srv.metrics()
        assert http_statuses(m, "408") == 1 and http_statuses(m, "500") == 0
        assert_empty(srv)


def test_client_leaving_mid_body_is_499_logged_at_debug_without_traceback(
    model: Model, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="anomaly.service"), serving(settings_for(model)) as srv:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", srv.server.port), timeout=5) as s:
                s.sendall(b"POST /v1/streams/cam/frames HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
                time.sleep(0.05)
        wait_until(lambda: http_statuses(srv.metrics(), "499") == 5)
        m = srv.metrics()
        assert http_statuses(m, "500") == 0
        assert httpx.post(f"{srv.url}/v1/score", content=png(road_frames(1)[0])).status_code == 200
        assert_empty(srv)
    service_records = [r for r in caplog.records if r.name == "anomaly.service"]
    assert not [r for r in service_records if r.levelno >= logging.WARNING or r.exc_info]
    assert any("client closed" in r.getMessage() for r in service_records if r.levelno == logging.DEBUG)
