"""The app factory: `create_app(settings)` builds the FastAPI app around one loaded model.

The model is loaded (if not handed in), the batcher's worker thread started and the stream
expiry task scheduled in the lifespan; on shutdown the service first answers every frame it
accepted, then stops the worker. Settings and state live on `app.state`, never in globals, so
several apps can run in one process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import ClientDisconnect

from anomaly import __version__
from anomaly.frame_scores import FrameScorer
from anomaly.model_files import load_model
from service.auth import require_browser_session, require_token
from service.engine import ScoringService, describe_model
from service.errors import (
    ClientClosed,
    ServiceError,
    client_closed_handler,
    service_error_handler,
    validation_error_handler,
)
from service.guard import RequestLimit
from service.metrics import RequestMetricsMiddleware, ServiceMetrics
from service.routers import health, live, model, score, streams
from service.routers.common import error_responses
from service.settings import ServiceSettings

log = logging.getLogger("anomaly.service")

DESCRIPTION = """
Anomaly scores for dashcam frames, from the same scoring core as `anomaly score`.

* `POST /v1/score`: one frame, stateless.
* `POST /v1/streams/{stream_id}/frames` and the WebSocket `/v1/streams/{stream_id}/ws`: frames of a
  stream; the service keeps each stream's smoothing and event state and answers in send order.
  The stream id names the camera: when its scores drift from its calibration for minutes (a dirty
  lens, a knocked mount), a `camera_drift` message follows the frame's result.

Frames from all clients are scored together in micro-batches. When the queue is full, HTTP calls
get `503` with `Retry-After`; WebSocket clients get a `slow_down` message and the server stops
reading them until results catch up (no frame is dropped). Errors are JSON `{"detail", "code"}`.
When the service runs with a token, every endpoint but `/healthz` and `/readyz` needs
`Authorization: Bearer <token>` (this documentation included).
"""

TAGS = [
    {"name": "scoring", "description": "stateless scoring of single frames"},
    {"name": "streams", "description": "stateful streams: smoothing, events, in-order results"},
    {"name": "model", "description": "the model being served"},
    {"name": "health", "description": "liveness and readiness probes (no auth)"},
    {"name": "monitoring", "description": "Prometheus metrics"},
    {"name": "live", "description": "the live view of open streams (with --live-view)"},
]


def create_app(settings: ServiceSettings, detector: FrameScorer | None = None) -> FastAPI:
    """The service app. `detector`: an already loaded model (the CLI loads it first, so a bad model file
    fails with a clear message before the port opens); None loads `settings.model_path` at startup."""
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        det = detector
        if det is None:
            det = await asyncio.to_thread(load_model, settings.model_path, settings.device, settings.torch_threads)
        info = await asyncio.to_thread(describe_model, settings, det)
        service = ScoringService(settings, det, info, metrics)
        await service.start()
        app.state.service = service
        try:
            yield
        finally:
            await service.stop(settings.shutdown_timeout_s)
            log.info("stopped after answering every accepted frame")

    app = FastAPI(
        title="anomaly streaming detection",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=None,  # served below, behind the token when one is set
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(
        RequestLimit, max_requests=settings.connections.max_requests, retry_after_s=settings.batching.retry_after_s
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)  # outermost: counts the 503 `busy` too
    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(ClientClosed, client_closed_handler)
    app.add_exception_handler(ClientDisconnect, client_closed_handler)
    app.add_exception_handler(Exception, _internal_error)

    # With a token, the guarded routes document the bearer scheme and their 401; without one, neither.
    guarded = [Depends(require_token)] if settings.auth_token is not None else []
    denied = error_responses(401) if settings.auth_token is not None else {}
    app.include_router(health.router)
    app.include_router(score.router, dependencies=guarded, responses=denied)
    app.include_router(streams.router, dependencies=guarded, responses=denied)
    app.include_router(streams.ws_router)
    app.include_router(model.router, dependencies=guarded, responses=denied)
    if settings.live_view:
        include_live_view(app, denied)

    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    async def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    return app


def include_live_view(app: FastAPI, denied: dict[int | str, dict[str, Any]]) -> None:
    """The live page and its data routes; with a token they take the bearer header or the browser session."""
    app.state.live_page = live.page_html()  # read once: a missing file fails at startup, not on a request
    browser_guarded = [Depends(require_browser_session)] if app.state.settings.auth_token is not None else []
    app.include_router(live.page_router)
    app.include_router(live.router, dependencies=browser_guarded, responses=denied)


async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"detail": "internal error", "code": "internal_error"}, status_code=500)
