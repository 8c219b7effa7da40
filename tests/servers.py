"""Running the service for tests: a real uvicorn server on 127.0.0.1 (a free port) in a thread, and small clients.

The server is built by the same `make_server` as `anomaly serve`, with the settings a test needs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection

from anomaly.detector import Detector
from service.app import create_app
from service.server import DrainingServer, make_server
from service.settings import ServiceSettings


@dataclass
class Model:
    detector: Detector
    path: Path


@dataclass
class Running:
    server: DrainingServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    def metrics(self, **headers: str) -> dict[str, float]:
        """Samples of /metrics as {'name{label="v",...}': value}."""
        text = httpx.get(f"{self.url}/metrics", headers=headers).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out


def settings_for(model: Model, **overrides: object) -> ServiceSettings:
    base: dict[str, object] = {
        "model_path": model.path,
        "device": "cpu",
        "host": "127.0.0.1",
        "port": 0,
        "access_log": False,
        "log_level": "warning",
    }
    base.update(overrides)
    return ServiceSettings(**base)  # type: ignore[arg-type]


@contextmanager
def serving(settings: ServiceSettings) -> Iterator[Running]:
    server = make_server(create_app(settings), settings)
    thread = threading.Thread(target=server.run, name="uvicorn-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the server exited during startup"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    running = Running(server, thread)
    try:
        yield running
    finally:
        server.should_exit = True
        thread.join(60)
        assert not thread.is_alive(), "the server did not shut down"


def png(frame: np.ndarray) -> bytes:
    return cv2.imencode(".png", frame)[1].tobytes()


def wait_until(condition, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def receive_json(ws: ClientConnection, n: int, timeout: float = 30.0) -> list[dict]:
    return [json.loads(ws.recv(timeout=timeout)) for _ in range(n)]
