"""Running the review app on uvicorn, and the URL to open."""

from __future__ import annotations

import socket
from collections.abc import Callable
from urllib.parse import quote

import uvicorn

from review.app import create_review_app
from review.run import ReviewRun
from review.settings import ReviewSettings


class ReviewServer(uvicorn.Server):
    """uvicorn's server that says where to open the page once its port is bound (port 0 included)."""

    def __init__(
        self, config: uvicorn.Config, settings: ReviewSettings, on_ready: Callable[[str], None] | None = None
    ) -> None:
        super().__init__(config)
        self.settings = settings
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_ready is not None:
            self.on_ready(page_url(self.settings, self.port))

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self.servers[0].sockets[0].getsockname()[1]


def make_review_server(
    settings: ReviewSettings, run: ReviewRun | None = None, on_ready: Callable[[str], None] | None = None
) -> ReviewServer:
    config = uvicorn.Config(
        create_review_app(settings, run),
        host=settings.host,
        port=settings.port,
        lifespan="off",
        access_log=settings.access_log,
        log_level=settings.log_level,
        server_header=False,
    )
    return ReviewServer(config, settings, on_ready)


def page_url(settings: ReviewSettings, port: int) -> str:
    """What to open: with a token, the one-time login URL that sets the page's session cookie."""
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
    token = settings.auth_token
    query = f"?token={quote(token.get_secret_value(), safe='')}" if token is not None else ""
    return f"http://{host}:{port}/{query}"
