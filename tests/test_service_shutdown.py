"""Issue 13, item 5: SIGTERM while two WebSocket clients flood the real `anomaly serve` process.

Every frame the server read gets exactly one answer, in order: a result for the frames accepted
before shutdown, an explicit `shutting_down` error (with its index) for those read after; then a
close frame (1001), and the process exits 0 once the drain is complete.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import pytest
from factories import road_frames
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


@pytest.fixture(scope="module")
def model_path(tiny_trained) -> Path:  # noqa: ANN001 - a conftest fixture
    return tiny_trained.path


@dataclass
class Flood:
    """One client sending frames as fast as the server reads them, and reading every answer."""

    url: str
    frame: bytes
    answers: list[dict] = field(default_factory=list)
    sent: int = 0
    close_code: int | None = None
    results_seen: threading.Event = field(default_factory=threading.Event)

    def run(self, limit: int = 5000) -> None:
        with connect(self.url, open_timeout=30, close_timeout=10) as ws:
            sender = threading.Thread(target=self._send, args=(ws, limit), daemon=True)
            sender.start()
            try:
                while True:
                    message = json.loads(ws.recv(timeout=60))
                    if message["type"] != "slow_down":
                        self.answers.append(message)
                    if len(self.answers) >= 20:
                        self.results_seen.set()
            except ConnectionClosed as closed:
                self.close_code = closed.rcvd.code if closed.rcvd is not None else None
            sender.join(30)

    def _send(self, ws, limit: int) -> None:  # noqa: ANN001
        try:
            while self.sent < limit:
                ws.send(self.frame)
                self.sent += 1
        except (ConnectionClosed, OSError, RuntimeError):
            pass


def start(model_path: Path) -> tuple[subprocess.Popen[str], int, list[str]]:
    cmd = [sys.executable, "-m", "anomaly", "serve", "--model", str(model_path), "--port", "0", "--device", "cpu"]
    cmd += ["--max-batch", "4", "--batch-wait-ms", "10", "--queue-size", "16", "--ws-max-in-flight", "8"]
    cmd += ["--no-access-log", "--shutdown-timeout", "30"]
    env = {k: v for k, v in os.environ.items() if k != "ANOMALY_API_TOKEN"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.put(line)
            log.append(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 90
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if m := re.search(r"running on http://127\.0\.0\.1:(\d+)", line):
            return proc, int(m.group(1)), log


@pytest.mark.slow
def test_sigterm_under_a_websocket_flood_answers_every_read_frame_closes_1001_and_exits_0(model_path: Path) -> None:
    proc, port, log = start(model_path)
    frame = cv2.imencode(".png", road_frames(1, seed=3)[0])[1].tobytes()
    floods = [Flood(f"ws://127.0.0.1:{port}/v1/streams/cam-{i}/ws", frame) for i in range(2)]
    threads = [threading.Thread(target=f.run, daemon=True) for f in floods]
    try:
        for t in threads:
            t.start()
        for f in floods:
            assert f.results_seen.wait(60), "the flood never got going"
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    text = "".join(log)
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors_after_stop = 0
    for f in floods:
        indices = [a["frame_index"] for a in f.answers]
        assert indices == list(range(len(indices))), "an answer is missing or out of order"
        kinds = [a["type"] for a in f.answers]
        first_error = kinds.index("error") if "error" in kinds else len(kinds)
        assert set(kinds[:first_error]) == {"result"} and set(kinds[first_error:]) <= {"error"}
        assert all(a["code"] == "shutting_down" for a in f.answers[first_error:])
        errors_after_stop += len(kinds) - first_error
        assert f.close_code in (1001, 1012), f.close_code
        assert len(f.answers) <= f.sent  # every answer is for a frame sent; unanswered ones were never read
    assert errors_after_stop >= 1, "no frame arrived between stop-accepting and the close"
