"""Running the app on uvicorn, with a shutdown that answers accepted frames first.

uvicorn closes every WebSocket (1012) as soon as it starts shutting down, which would lose the
results of frames a camera already sent. `DrainingServer` first stops listening, lets the
service score and answer every accepted frame (HTTP and WebSocket; each WebSocket then closes
with 1001), then hands over to uvicorn's own shutdown. uvicorn re-raises SIGTERM after its
shutdown, so the process would end by the signal (status 143); here a complete drain exits 0.

uvicorn's shutdown also drops a WebSocket whose close frame was sent at once, before the client's
reply: with the client's frames still unread the kernel answers with a reset, which can destroy
the close frame and the last answers in the client's buffer. So the drain waits (bounded by the
WebSocket close timeout) for those closing handshakes to finish first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.logging import DefaultFormatter

from anomaly.frame_scores import FrameScorer
from anomaly.model_files import load_model
from service.app import create_app
from service.guard import guarded_protocol
from service.settings import ServiceSettings

log = logging.getLogger("anomaly.service")

CLOSING_HANDSHAKE_S = 10.0  # uvicorn's own WebSocket close timeout


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_timeout_s = drain_timeout_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting connections; the open ones carry on
        service = getattr(self.app.state, "service", None)
        if service is not None:
            await service.drain(self.drain_timeout_s)
        await self._closing_handshakes(CLOSING_HANDSHAKE_S)
        await super().shutdown(sockets=sockets)

    async def _closing_handshakes(self, timeout_s: float) -> None:
        """Wait until every WebSocket that sent its close frame has the client's reply (or times out)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.force_exit:
            if not any(getattr(c, "close_sent", False) for c in self.server_state.connections):
                return
            await asyncio.sleep(0.02)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM start the drain, as in uvicorn, but are not re-raised once it is done."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting
        else:
            self.should_exit = True

    @property
    def drained(self) -> bool:
        """Every accepted frame was answered before the process let go (False before a drain)."""
        service = getattr(self.app.state, "service", None)
        return bool(service is not None and service.drained)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self.servers[0].sockets[0].getsockname()[1]


def make_server(app: FastAPI, settings: ServiceSettings) -> DrainingServer:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        # messages between the app's limit and this one get a JSON 413; beyond it the protocol closes (1009)
        ws_max_size=2 * settings.limits.max_body_bytes,
        # connection limits are the guard's (service/guard.py): uvicorn's limit_concurrency would 503 health checks
        http=guarded_protocol(settings.connections),
        limit_concurrency=None,
        timeout_keep_alive=settings.connections.keep_alive_s,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        access_log=settings.access_log,
        log_level=settings.log_level,
        server_header=False,
    )
    return DrainingServer(config, app, settings.shutdown_timeout_s)


def configure_logging(level: str) -> None:
    """The service's own log lines, formatted like uvicorn's (the library never configures logging itself)."""
    logger = logging.getLogger("anomaly.service")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())


def serve(settings: ServiceSettings, detector: FrameScorer | None = None) -> None:
    """Load the model (errors surface before the port opens), then serve until SIGINT/SIGTERM."""
    if detector is None:
        detector = load_model(settings.model_path, settings.device, settings.torch_threads)
    configure_logging(settings.log_level)
    server = make_server(create_app(settings, detector), settings)
    server.run()
    if not server.started:
        raise OSError(f"the server could not start on {settings.host}:{settings.port} (see the log above)")
    if not server.drained:
        # an OSError, so `anomaly serve` reports it in one line and exits non-zero
        raise TimeoutError(f"shutdown did not answer every accepted frame within {settings.shutdown_timeout_s:g} s")
