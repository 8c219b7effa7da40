"""Connection limits below the app: idle and half-sent connections cannot hold the server.

uvicorn has a keep-alive timeout, but none for a connection that never sends a request, or sends
its headers a byte at a time; and its `limit_concurrency` answers 503 to *every* request once too
many connections are open, health checks included, so 1000 silent sockets would make an
orchestrator restart a healthy service. This protocol (uvicorn's httptools one, extended) adds:

- a header timeout: from connecting, or from the end of the previous response, to complete headers;
- a cap on header bytes;
- a cap on open connections that closes the longest-idle connection to make room for a new one
  (and refuses the new one only when none is idle).

The body timeout is the app's (`service.bodies.read_body`, a 408). `RequestLimit` bounds requests
in progress, leaving the health checks out of the count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import ConnectionSettings

log = logging.getLogger("anomaly.service")

HEALTH_PATHS = frozenset({"/healthz", "/readyz"})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a header size cap and a connection cap."""

    limits: ConnectionSettings = ConnectionSettings()  # set per server by `guarded_protocol`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        # the next bytes start a request's headers: not while a request's body is still arriving, which it
        # can after its response went out (a 413 for a body over the limit)
        self._awaiting_headers = True
        self.idle_since: float | None = None  # waiting for a request (None while one is being handled)

    # -- between requests: the header timer runs, and the connection may be evicted

    def _await_request(self) -> None:
        self.idle_since = time.monotonic()
        self._header_bytes = 0
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        # no request's headers completed since the timer started (a body still trickling in after its
        # early response counts as no request either)
        if not self.transport.is_closing():
            log.debug("closing a connection that sent no complete request in %g s", self.limits.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_request()
        if len(self.connections) > self.limits.max_connections and not self._evict_idle():
            log.warning("refusing a connection: %d open, none idle", len(self.connections) - 1)
            transport.close()

    def _evict_idle(self) -> bool:
        """Close the longest-idle other connection; False when every other one is busy."""
        idle = [
            c
            for c in self.connections
            if c is not self and isinstance(c, GuardedHttpToolsProtocol) and c.idle_since is not None
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since or 0.0)
        log.debug("connection cap reached: closing the connection idle longest")
        oldest.idle_since = None
        oldest.transport.close()
        return True

    def data_received(self, data: bytes) -> None:
        counted = self._awaiting_headers  # the parser below may complete the headers within `data`
        super().data_received(data)
        if counted and self._awaiting_headers:  # still no complete headers: these bytes were (partial) headers
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
                log.debug("closing a connection whose headers exceed %d bytes", self.limits.max_header_bytes)
                self.send_400_response("Request headers too large.")

    # -- a request is being handled: the app's body timeout applies

    def on_headers_complete(self) -> None:
        self.idle_since = None
        self._awaiting_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True
        self._header_bytes = 0
        if self._header_timer is not None:  # answered before its body was all in: idle from here
            self.idle_since = time.monotonic()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            if self._awaiting_headers:
                self._await_request()
            else:  # the body is still arriving: not idle, but the next headers are due all the same
                self._cancel_header_timer()
                self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle_since = None
        self._cancel_header_timer()
        super().connection_lost(exc)


def guarded_protocol(limits: ConnectionSettings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for one server's limits (uvicorn instantiates it per connection)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class RequestLimit:
    """At most `max_requests` HTTP requests in progress (health checks excepted); beyond it a 503 `busy`
    with Retry-After. Replaces uvicorn's `limit_concurrency`, which would refuse the health checks too."""

    def __init__(self, app: ASGIApp, max_requests: int, retry_after_s: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.retry_after_s = retry_after_s
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.max_requests:
            await self._refuse(send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"{self.max_requests} requests are in progress; retry later", "code": "busy"})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})
