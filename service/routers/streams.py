"""Streams with state: frames over HTTP or a WebSocket, results in send order with smoothing and events."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, WebSocket
from fastapi.responses import JSONResponse

from service.auth import websocket_auth_error
from service.dependencies import ServiceDep, current_service
from service.errors import ServiceError, bad_request
from service.routers.common import error_responses, file_parts, image_body, read_upload
from service.schemas import (
    FinishedEvent,
    StreamClosed,
    StreamFrameResult,
    StreamFramesResponse,
    drift_message,
    outcome_message,
    parse_form_tag,
    parse_fps,
)
from service.settings import MAX_FPS, MAX_FRAME_INDEX, MAX_TIMESTAMP_S, MIN_FPS
from service.websocket import StreamSocket, close_quietly

router = APIRouter(tags=["streams"])
# The WebSocket route checks the token itself (answering a 401 denial before the handshake): router
# dependencies would run with no Request to read the header from.
ws_router = APIRouter(tags=["streams"])

StreamId = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
        description="the client's name for the stream (a camera, a vehicle): letters, digits, _ . : -",
        examples=["truck-12.front"],
    ),
]
Fps = Annotated[
    float | None,
    Query(
        ge=MIN_FPS,
        le=MAX_FPS,
        description="frame rate for timestamps the client does not send (default: the service's)",
    ),
]
FrameIndexQuery = Annotated[
    int | None, Query(ge=0, le=MAX_FRAME_INDEX, description="index of the (first) frame, 0 .. 2**63-1")
]
TimestampQuery = Annotated[
    float | None,
    Query(ge=0, le=MAX_TIMESTAMP_S, allow_inf_nan=False, description="its time in seconds (finite, 0 .. 1e12)"),
]


def parse_tags(
    parts_values: list[str], name: Literal["frame_index", "timestamp_s"], n: int
) -> list[int | float | None]:
    """Per-frame form fields: none, or one per frame, each validated like its query parameter (422)."""
    if not parts_values:
        return [None] * n
    if len(parts_values) != n:
        raise bad_request(f"{len(parts_values)} {name} field(s) for {n} frame(s): send one per frame or none")
    return [parse_form_tag(raw, name, i) for i, raw in enumerate(parts_values)]


@router.post(
    "/v1/streams/{stream_id}/frames",
    response_model=StreamFramesResponse,
    summary="Send frames of a stream",
    description="One frame as the raw body, or up to `max_frames_per_message` frames as multipart file parts "
    "(in order; optional `frame_index` / `timestamp_s` fields, one per frame). The query's `frame_index` and "
    "`timestamp_s` tag the first frame; untagged frames get the next index and index / fps. Each result carries "
    "the stream's smoothed score and event state; `camera_drift` lists drift of the stream's camera (its id) that "
    "started or ended with these frames. A message with a bad frame is refused whole (4xx) and the stream stays as "
    "it was.",
    responses=error_responses(400, 408, 413, 415, 422, 503),
    openapi_extra=image_body("frames", "a frame (JPEG or PNG); repeat the part for several frames"),
)
async def post_frames(
    request: Request,
    stream_id: StreamId,
    service: ServiceDep,
    frame_index: FrameIndexQuery = None,
    timestamp_s: TimestampQuery = None,
    fps: Fps = None,
) -> StreamFramesResponse:
    limits = service.settings.limits
    max_frames = limits.max_frames_per_message
    body, parts = await read_upload(request, limits, 3 * max_frames, service.settings.connections.body_timeout_s)
    if parts is None:
        frames = [body]
        requests: list[tuple[int | None, float | None]] = [(frame_index, timestamp_s)]
    else:
        frames = file_parts(parts)
        if len(frames) > max_frames:
            detail = f"{len(frames)} frames in one message; the limit is {max_frames}"
            raise ServiceError(413, "too_many_frames", detail)
        fields = {
            name: [bytes(p.data).decode("utf-8", "replace") for p in parts if p.name == name and not p.is_file]
            for name in ("frame_index", "timestamp_s")
        }
        indices = parse_tags(fields["frame_index"], "frame_index", len(frames))
        times = parse_tags(fields["timestamp_s"], "timestamp_s", len(frames))
        if indices[0] is None and frame_index is not None:
            indices[0] = frame_index
        if times[0] is None and timestamp_s is not None:
            times[0] = timestamp_s
        requests = [(None if i is None else int(i), t) for i, t in zip(indices, times, strict=True)]
    stream = service.streams.open(stream_id, service.settings.batching.retry_after_s)
    outcomes = await service.score_stream_message(stream, frames, requests, fps or service.settings.streams.default_fps)
    results, drift = [], []
    for outcome in outcomes:
        if outcome.error is not None:
            raise outcome.error
        message = outcome_message(outcome, service.model_info.version)
        assert isinstance(message, StreamFrameResult)
        results.append(message)
        if (changed := drift_message(outcome)) is not None:
            drift.append(changed)
    return StreamFramesResponse(stream_id=stream_id, results=results, camera_drift=drift)


@router.delete(
    "/v1/streams/{stream_id}",
    response_model=StreamClosed,
    summary="Close a stream",
    description="Forget the stream's state now (idle streams also expire on their own); an open stretch ends "
    "and is returned as a finished event.",
    responses=error_responses(404, 409, 422, 503),
)
async def close_stream(stream_id: StreamId, service: ServiceDep) -> StreamClosed:
    stream = service.streams.get(stream_id)
    events = service.streams.close(stream_id)
    if stream is None or events is None:
        raise ServiceError(404, "unknown_stream", f"no stream {stream_id!r} (never opened, closed, or expired)")
    return StreamClosed(stream_id=stream_id, frames=stream.frames, events=[FinishedEvent.of(e) for e in events])


@ws_router.websocket("/v1/streams/{stream_id}/ws")
async def stream_websocket(
    websocket: WebSocket, stream_id: StreamId, fps: Annotated[str | None, Query()] = None
) -> None:
    """Binary frames in, one JSON result per frame out, in send order (protocol in service/websocket.py).

    `fps` is checked here rather than by FastAPI, so a bad value is a JSON 422 denial, not a bare 403."""
    service = current_service(websocket)
    denial = websocket_auth_error(websocket)
    if denial is None and service is None:
        denial = ServiceError(503, "not_ready", "the model is still loading")
    stream = None
    frame_rate: float | None = None
    if denial is None and service is not None:
        try:
            frame_rate = None if fps is None else parse_fps(fps)
            if not service.accepting:
                raise ServiceError(503, "shutting_down", "the service is shutting down")
            stream = service.streams.open(stream_id, service.settings.batching.retry_after_s)
        except ServiceError as exc:
            denial = exc
    if denial is not None or service is None or stream is None:
        assert denial is not None
        response = JSONResponse({"detail": denial.detail, "code": denial.code}, denial.status, headers=denial.headers)
        await websocket.send_denial_response(response)
        return
    await websocket.accept()
    stream.websockets += 1
    service.metrics.websockets.inc()
    service.socket_opened()
    code = 1000
    try:
        rate = frame_rate or service.settings.streams.default_fps
        code = await StreamSocket(websocket, service, stream, rate).run()
    finally:
        stream.websockets -= 1
        service.metrics.websockets.dec()
        await close_quietly(websocket, code)
        service.socket_closed()
