"""Running the app on uvicorn, with a shutdown that answers accepted frames first.

uvicorn closes every WebSocket (1012) as soon as it starts shutting down, which would lose the
results of frames a camera already sent. `DrainingServer` first stops listening, lets the
service score and answer every accepted frame (HTTP and WebSocket), then hands over to uvicorn's
own shutdown.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from fastapi import FastAPI
from uvicorn.logging import DefaultFormatter

from anomaly.checkpoint import load_detector
from anomaly.detector import Detector
from anomaly.device import resolve_device, set_torch_threads
from service.app import create_app
from service.settings import ServiceSettings


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
        await super().shutdown(sockets=sockets)

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
        limit_concurrency=settings.max_connections,
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


def serve(settings: ServiceSettings, detector: Detector | None = None) -> None:
    """Load the model (errors surface before the port opens), then serve until SIGINT/SIGTERM."""
    if detector is None:
        detector = load_detector(settings.model_path, resolve_device(settings.device))
    set_torch_threads(settings.torch_threads)
    configure_logging(settings.log_level)
    server = make_server(create_app(settings, detector), settings)
    server.run()
    if not server.started:
        raise OSError(f"the server could not start on {settings.host}:{settings.port} (see the log above)")
