"""The live view (`--live-view`): a page, server-sent snapshots of the open streams, and their preview frames.

A browser cannot put a bearer header on an `<img>` or an `EventSource`, so with a token the page is
opened once as `/live?token=...`: the answer sets the session cookie (`service.auth.session_value`) and
redirects to `/live`, and the routes below take that cookie as well as the header (as the review app does).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from importlib.resources import files

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from service.auth import PRIVATE, browser_page
from service.dependencies import ServiceDep
from service.engine import ScoringService
from service.errors import ServiceError, unavailable
from service.live import LiveView
from service.routers.common import error_responses
from service.routers.streams import StreamId

# the page: no auth dependency (it answers the token itself); the data routes get the app's browser guard
page_router = APIRouter()
router = APIRouter(tags=["live"])


def page_html() -> str:
    return files("service").joinpath("static/live.html").read_text(encoding="utf-8")


def live_of(service: ScoringService) -> LiveView:
    """The service's live view (these routes are only mounted when it is on)."""
    if service.live is None:  # pragma: no cover - the router is not included without --live-view
        raise ServiceError(404, "not_found", "the live view is off (start the service with --live-view)")
    return service.live


@page_router.get("/live", include_in_schema=False)
async def live_page(request: Request, token: str | None = None) -> Response:
    """The page; `?token=` (the right one) is traded for the session cookie and a redirect to a clean URL."""
    return browser_page(request, token, request.app.state.live_page, here="live", title="anomaly live")


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its generator, so the generator's `finally` runs at once
    on every path (client gone, server stopping, an error), not whenever it is garbage-collected."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def snapshots(service: ScoringService, live: LiveView) -> AsyncIterator[str]:
    """Server-sent events: a snapshot of every open stream each push interval, until the client leaves
    (starlette then cancels this) or the service drains (it stops accepting; the wait ends on `stopping`)."""
    if live.full:  # a viewer that started since the route checked: end at once (EventSource retries later)
        return
    with live.viewing():
        yield "retry: 2000\n\n"
        while service.accepting and not service.stopping.is_set():
            yield f"data: {live.snapshot_json(service.streams, time.monotonic())}\n\n"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(service.stopping.wait(), live.settings.push_interval_s)


@router.get(
    "/v1/live/events",
    summary="Server-sent snapshots of the open streams",
    description="`text/event-stream`: every push interval (0.5 s) one `data:` line with a JSON snapshot "
    "`{history_s, streams: [{stream_id, profile, threshold, score, timestamp_s, frame_index, is_anomaly, "
    "smoothed_score, event_open, event_since_s, drift, frames, websockets, idle_s, history: {t, score, anomaly}, "
    "frame_url}]}`. Ends when the service shuts down.",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(503)},
)
async def live_events(service: ServiceDep) -> StreamingResponse:
    live = live_of(service)
    if not service.accepting:
        raise unavailable("shutting_down", "the service is shutting down", service.settings.batching.retry_after_s)
    if live.full:
        detail = f"{live.settings.max_viewers} live views are open; close one or retry later"
        raise unavailable("too_many_viewers", detail, service.settings.batching.retry_after_s)
    headers = {**PRIVATE, "X-Accel-Buffering": "no"}  # a proxy must pass each event on at once
    return EventStreamResponse(snapshots(service, live), media_type="text/event-stream", headers=headers)


@router.get(
    "/v1/live/streams/{stream_id}/frame.jpg",
    summary="The stream's latest preview frame with its heat map",
    description="A JPEG at most 480 px wide (`frame_url` in the snapshot adds a version for cache-busting).",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **error_responses(404, 422)},
)
async def live_frame(stream_id: StreamId, service: ServiceDep) -> Response:
    live = live_of(service)
    stream = service.streams.get(stream_id)
    job = None if stream is None or stream.live is None else live.jpeg_job(stream.live)
    if stream is None or stream.live is None or job is None:
        raise ServiceError(404, "unknown_stream", f"no stream {stream_id!r} with a scored frame")
    preview, jpeg = job
    if jpeg is None:
        jpeg = await anyio.to_thread.run_sync(live.encode, preview, limiter=live.limiter)
        stream.live.jpeg = (preview.version, jpeg)
    return Response(jpeg, media_type="image/jpeg", headers=PRIVATE)
