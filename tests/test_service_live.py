"""The live view (`anomaly serve --live-view`): server-sent snapshots of the open streams, their preview
frames with the heat map, the browser session, the routes' absence without the flag, a prompt shutdown
with a viewer connected, the bounded per-stream state, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable

import cv2
import httpx
import numpy as np
import pytest
from factories import frame_score, road_frames
from pydantic import SecretStr
from servers import Model, png, serving, settings_for
from typer.testing import CliRunner
from websockets.sync.client import connect

import service.server
from anomaly.events import TrackerUpdate
from cli.main import app as cli_app
from service.auth import SESSION_COOKIE
from service.live import LiveState
from service.settings import LiveSettings, ServiceSettings
from service.streams import FrameTag, StreamOutcome

TOKEN = "live-test-token"
FAST = LiveSettings(push_interval_s=0.1)  # snapshots every 0.1 s keep the tests short


@pytest.fixture(scope="module")
def model(tiny_trained) -> Model:  # noqa: ANN001 - a conftest fixture
    return Model(tiny_trained.detector, tiny_trained.path)


def live_settings(model: Model, **overrides: object) -> ServiceSettings:
    return settings_for(model, **{"live_view": True, "live": FAST, **overrides})


def snapshot_where(
    url: str, condition: Callable[[dict], bool], headers: dict[str, str] | None = None, timeout: float = 10.0
) -> dict:
    """The first server-sent snapshot that meets `condition` (the stream is closed on the way out)."""
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", f"{url}/v1/live/events", headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < deadline, "no snapshot met the condition in time"
            if line.startswith("data: "):
                snapshot = json.loads(line[len("data: ") :])
                if condition(snapshot):
                    return snapshot
    raise AssertionError("the event stream ended")


def stream_entry(snapshot: dict, stream_id: str) -> dict | None:
    return next((s for s in snapshot["streams"] if s["stream_id"] == stream_id), None)


def jpeg(frame: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def post_frames(url: str, stream_id: str, frames: np.ndarray, headers: dict[str, str] | None = None) -> list[dict]:
    files = [("frames", (f"{i}.jpg", jpeg(f), "image/jpeg")) for i, f in enumerate(frames)]
    response = httpx.post(f"{url}/v1/streams/{stream_id}/frames?fps=10", files=files, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_snapshots_carry_the_stream_and_its_scores_and_the_frame_is_a_shrunk_overlay(model: Model) -> None:
    frames = road_frames(10, seed=5, size=(960, 540))
    with serving(live_settings(model)) as srv:
        results = post_frames(srv.url, "truck-1.front", frames)
        snap = snapshot_where(srv.url, lambda s: stream_entry(s, "truck-1.front") is not None)
        entry = stream_entry(snap, "truck-1.front")
        assert entry is not None and snap["history_s"] == 60
        last = results[-1]
        assert entry["frame_index"] == 9 and entry["timestamp_s"] == pytest.approx(0.9)
        assert entry["score"] == pytest.approx(last["score"]) and entry["threshold"] == pytest.approx(last["threshold"])
        assert entry["profile"] == "fleet" and entry["frames"] == 10
        assert entry["event_open"] is last["event"]["open"]
        assert entry["drift"] is not None and entry["drift"]["drifting"] is False
        # 10 frames over 0.9 s of stream time pooled into 0.25 s bins, each keeping its highest score
        assert entry["history"]["t"][0] == 0.0 and len(entry["history"]["t"]) == 4
        assert max(entry["history"]["score"]) == pytest.approx(max(r["score"] for r in results), abs=1e-3)
        # one preview kept for the burst (at most 2 per second), its JPEG shrunk to 480 px wide
        url, version = entry["frame_url"].split("?v=")
        assert url == "v1/live/streams/truck-1.front/frame.jpg" and int(version) <= 2
        jpeg = httpx.get(f"{srv.url}/{entry['frame_url']}")
        assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(jpeg.content, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (270, 480, 3)
        assert not np.array_equal(image, cv2.resize(frames[0], (480, 270), interpolation=cv2.INTER_AREA))

        unknown = httpx.get(f"{srv.url}/v1/live/streams/nobody/frame.jpg")
        assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_stream"
        # a closed stream leaves the live view with its state
        assert httpx.delete(f"{srv.url}/v1/streams/truck-1.front").status_code == 200
        snapshot_where(srv.url, lambda s: stream_entry(s, "truck-1.front") is None)
        assert httpx.get(f"{srv.url}/v1/live/streams/truck-1.front/frame.jpg").status_code == 404


def test_websocket_frames_show_up_too(model: Model) -> None:
    with serving(live_settings(model)) as srv, connect(f"{srv.ws_url}/v1/streams/cam-ws/ws") as ws:
        for frame in road_frames(3, seed=2):
            ws.send(png(frame))
        answers = [json.loads(ws.recv(timeout=30)) for _ in range(3)]
        snap = snapshot_where(srv.url, lambda s: (stream_entry(s, "cam-ws") or {}).get("frames") == 3)
        entry = stream_entry(snap, "cam-ws")
        assert entry is not None and entry["websockets"] == 1
        assert entry["score"] == pytest.approx(answers[-1]["score"])
        image = cv2.imdecode(np.frombuffer(httpx.get(f"{srv.url}/{entry['frame_url']}").content, np.uint8), 1)
        assert image.shape == (64, 96, 3)  # narrower than 480 px: kept at its size


def test_a_token_guards_the_live_view_and_the_page_trades_it_for_a_session_cookie(model: Model) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with serving(live_settings(model, auth_token=SecretStr(TOKEN))) as srv:
        post_frames(srv.url, "cam", road_frames(2, seed=1), headers=bearer)
        frame = f"{srv.url}/v1/live/streams/cam/frame.jpg"
        for path in ("/v1/live/events", "/v1/live/streams/cam/frame.jpg"):
            assert httpx.get(f"{srv.url}{path}").status_code == 401
        page = httpx.get(f"{srv.url}/live")
        assert page.status_code == 401 and "Token needed" in page.text
        assert httpx.get(f"{srv.url}/live?token=wrong").status_code == 401
        assert stream_entry(snapshot_where(srv.url, lambda s: bool(s["streams"]), headers=bearer), "cam") is not None
        assert httpx.get(frame, headers=bearer).status_code == 200

        with httpx.Client(base_url=srv.url) as browser:
            opened = browser.get("/live", params={"token": TOKEN})
            assert opened.status_code == 303 and opened.headers["location"] == "live"
            cookie = opened.cookies[SESSION_COOKIE]
            assert TOKEN not in cookie and "httponly" in opened.headers["set-cookie"].lower()
            page = browser.get("/live")
            assert page.status_code == 200 and "EventSource" in page.text
            assert browser.get("/v1/live/streams/cam/frame.jpg").status_code == 200
            assert browser.get("/v1/model").status_code == 401  # the cookie opens the live view only
        cookies = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
        assert stream_entry(snapshot_where(srv.url, lambda s: bool(s["streams"]), headers=cookies), "cam") is not None


def test_without_the_flag_the_routes_do_not_exist(model: Model) -> None:
    with serving(settings_for(model)) as srv:
        post_frames(srv.url, "cam", road_frames(1))
        for path in ("/live", "/v1/live/events", "/v1/live/streams/cam/frame.jpg"):
            assert httpx.get(f"{srv.url}{path}").status_code == 404, path
        assert "/v1/live/events" not in httpx.get(f"{srv.url}/openapi.json").json()["paths"]


def test_shutdown_with_a_viewer_connected_is_prompt_and_ends_its_stream(model: Model) -> None:
    lines: list[str] = []
    connected = threading.Event()

    def view(url: str) -> None:
        with httpx.stream("GET", f"{url}/v1/live/events", timeout=30) as response:
            connected.set()
            for line in response.iter_lines():
                lines.append(line)

    with serving(live_settings(model)) as srv:
        post_frames(srv.url, "cam", road_frames(2))
        viewer = threading.Thread(target=view, args=(srv.url,), daemon=True)
        viewer.start()
        assert connected.wait(10)
        while not any(line.startswith("data: ") for line in lines):
            time.sleep(0.02)
        start = time.monotonic()
        srv.server.should_exit = True
        srv.thread.join(10)
        stopped = time.monotonic() - start
        viewer.join(5)
    assert stopped < 3.0, f"the server took {stopped:.1f} s to stop with a viewer connected"
    assert not viewer.is_alive()  # its event stream ended with the server
    assert srv.server.drained


def test_viewers_are_bounded_and_released(model: Model) -> None:
    with serving(live_settings(model, live=LiveSettings(push_interval_s=0.1, max_viewers=1))) as srv:
        with httpx.stream("GET", f"{srv.url}/v1/live/events", timeout=10) as first:
            lines = first.iter_lines()  # held: dropping the iterator would close the connection
            assert first.status_code == 200 and next(lines) == "retry: 2000"
            with httpx.stream("GET", f"{srv.url}/v1/live/events", timeout=10) as second:
                assert second.status_code == 503 and json.loads(second.read())["code"] == "too_many_viewers"
        # the first viewer left: its slot is free again
        snapshot_where(srv.url, lambda s: True)


def outcome(index: int, ts: float, score: float, active: bool = False) -> StreamOutcome:
    update = TrackerUpdate(smoothed=score, active=active, started=active)
    return StreamOutcome(FrameTag(index, ts), scored=frame_score(score), update=update)


def test_history_is_binned_by_the_max_bounded_to_its_window_and_restarts_with_the_clock() -> None:
    state = LiveState.of(LiveSettings(history_s=10.0, history_points=10))  # 1 s bins
    for i in range(250):  # 25 s at 10 fps, with a one-frame spike at 20.3 s
        state.record(outcome(i, i / 10, 5.0 if i == 203 else 0.1), None)
    t = [p[0] for p in state.points]
    assert len(state.points) <= 10 and t[0] >= 24.9 - 10.0 and t[-1] == pytest.approx(24.0)
    assert [p[1] for p in state.points if p[0] == pytest.approx(20.0)] == [5.0]  # the spike survives its bin
    assert [p[2] for p in state.points if p[0] == pytest.approx(20.0)] == [True]
    state.record(outcome(0, 0.0, 0.2, active=True), None)  # a new clip: the stream's clock went back
    assert list(state.points) == [(0.0, 0.2, False)] and state.event_since_s == 0.0
    assert state.preview is None
    frame = np.zeros((4, 6, 3), np.uint8)
    state.record(outcome(1, 0.1, 0.2), frame)
    assert state.preview is not None and state.preview.version == 1 and state.event_since_s is None
    heat = state.preview.heatmap
    assert heat.base is None or heat.base.size == heat.size  # its own pixels, not a view into a batch's


def test_previews_are_throttled_per_stream() -> None:
    state = LiveState.of(LiveSettings())
    due = [state.preview_due(t / 25, frames_per_s=2.0) for t in range(50)]  # 2 s of frames at 25 fps
    assert sum(due) == 4 and due[0]


def test_live_options_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServiceSettings] = []
    monkeypatch.setattr(service.server, "serve", lambda settings: seen.append(settings))
    monkeypatch.delenv("ANOMALY_API_TOKEN", raising=False)
    args = ["serve", "--model", "m.pt", "--live-view", "--live-history", "30", "--live-fps", "1"]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    (s,) = seen
    assert s.live_view and (s.live.history_s, s.live.frames_per_s) == (30.0, 1.0)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs chromium and chromedriver from the system's packages (apt-get install chromium chromium-driver)",
)
def test_the_live_page_in_a_real_browser_shows_the_stream_with_its_frame_and_score(model: Model) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with serving(live_settings(model, auth_token=SecretStr(TOKEN))) as srv:
            driver.get(f"{srv.url}/live?token={TOKEN}")
            assert "token" not in driver.current_url
            post_frames(srv.url, "dash.front", road_frames(5, seed=7, size=(640, 360)), headers=bearer)
            card = '[data-stream="dash.front"]'
            script = f"""const c = document.querySelector('{card}');
                if (!c) return null;
                const img = c.querySelector('img.frame');
                return [img.complete && img.naturalWidth, c.querySelector('.score').textContent];"""
            deadline = time.monotonic() + 20
            while not ((state := driver.execute_script(script)) and state[0] and "score" in state[1]):
                assert time.monotonic() < deadline, f"the card did not show a frame and a score: {state}"
                time.sleep(0.05)
            assert state[0] == 480 and "threshold" in state[1]
            assert driver.find_element(By.ID, "status").text == "live"
            assert driver.execute_script("return document.querySelector(arguments[0] + ' canvas').width", card) > 0
    finally:
        driver.quit()
