"""`anomaly serve`: settings built from the options, clear errors, and the real command serving and stopping."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import pytest
from factories import road_frames
from typer.testing import CliRunner

import service.server
from cli.main import app
from service.settings import ServiceSettings

runner = CliRunner()


@pytest.fixture(scope="module")
def model_path(tiny_trained) -> Path:  # noqa: ANN001 - a conftest fixture
    return tiny_trained.path


def captured_settings(monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str] | None = None):  # noqa: ANN201
    seen: list[ServiceSettings] = []
    monkeypatch.setattr(service.server, "serve", lambda settings: seen.append(settings))
    result = runner.invoke(app, ["serve", *args], env=env)
    return result, seen


def test_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANOMALY_API_TOKEN", raising=False)
    result, seen = captured_settings(monkeypatch, ["--model", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    assert seen == [ServiceSettings(model_path=tmp_path / "m.pt")]


def test_options_reach_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok\n")
    monkeypatch.delenv("ANOMALY_API_TOKEN", raising=False)
    args = ["--model", "m.pt", "--port", "0", "--max-batch", "4", "--batch-wait-ms", "2", "--queue-size", "9"]
    args += ["--max-body-mb", "1", "--smooth", "5", "--hysteresis", "0.5", "--token-file", str(token)]
    result, (s,) = captured_settings(monkeypatch, args)
    assert result.exit_code == 0, result.output
    assert (s.port, s.batching.max_batch, s.batching.max_wait_ms, s.batching.queue_size) == (0, 4, 2.0, 9)
    assert s.limits.max_body_bytes == 2**20
    assert (s.streams.events.window, s.streams.events.hysteresis) == (5, 0.5)
    assert s.auth_token is not None and s.auth_token.get_secret_value() == "tok"
    result, (s,) = captured_settings(monkeypatch, ["--model", "m.pt", "--token-env", "MY_TOKEN"], env={"MY_TOKEN": "x"})
    assert s.auth_token is not None and s.auth_token.get_secret_value() == "x"


def test_bad_model_or_empty_token_exit_2_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANOMALY_API_TOKEN", raising=False)
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "missing.pt"), "--device", "cpu"])
    assert result.exit_code == 2 and "model file not found" in result.output
    result = runner.invoke(app, ["serve", "--model", "m.pt"], env={"ANOMALY_API_TOKEN": ""})
    assert result.exit_code == 2 and "set but empty" in result.output


@pytest.mark.slow
def test_the_command_serves_with_auth_and_stops_cleanly_on_sigterm(model_path: Path) -> None:
    env = {**os.environ, "ANOMALY_API_TOKEN": "cli-token"}
    cmd = [sys.executable, "-m", "anomaly", "serve", "--model", str(model_path), "--port", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    log: list[str] = []
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None:
            log.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            if m := re.search(r"running on http://127\.0\.0\.1:(\d+)", log[-1]):
                port = int(m.group(1))
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/readyz").status_code == 200
        frame = cv2.imencode(".png", road_frames(1)[0])[1].tobytes()
        assert httpx.post(f"{url}/v1/score", content=frame).status_code == 401
        r = httpx.post(f"{url}/v1/score", content=frame, headers={"authorization": "Bearer cli-token"})
        assert r.status_code == 200 and "score" in r.json()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    time.sleep(0.2)
    while not lines.empty():
        log.append(lines.get())
    text = "".join(log)
    # a complete drain exits 0 (uvicorn alone would re-raise SIGTERM: status 143)
    assert code == 0, text
    assert "Application shutdown complete" in text
    assert "auth: bearer token required" in text and "threshold" in text
    assert "stopped after answering every accepted frame" in text
