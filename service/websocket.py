"""One WebSocket connection of a stream: frames in, results out in send order, with flow control.

Protocol (all server messages are JSON text):

- client -> server: a binary message is one JPEG or PNG frame. An optional text message
  `{"frame_index": 12, "timestamp_s": 0.48}` before it tags that frame; untagged frames get the
  next index and index / fps.
- server -> client: one message per frame in the order sent, `{"type": "result", ...}` or
  `{"type": "error", "frame_index": ..., "status": 400, "code": ..., "detail": ...}` for a frame
  that could not be scored (the connection and the stream stay usable); and
  `{"type": "slow_down", ...}` when the client is ahead of the model.

Flow control never drops a frame: when `ws_max_in_flight` frames of this connection are
unanswered, or the service's queue is full, the server says `slow_down` once and stops reading
the socket until results catch up, so TCP pushes back on the sender.
"""

from __future__ import annotations

import asyncio
import contextlib

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from service.engine import ScoringService
from service.errors import ServiceError
from service.schemas import FrameError, SlowDown, WebSocketFrameTag, outcome_message
from service.streams import Stream, StreamOutcome

Outgoing = asyncio.Future[StreamOutcome] | FrameError


class StreamSocket:
    def __init__(self, websocket: WebSocket, service: ScoringService, stream: Stream, fps: float) -> None:
        self.ws = websocket
        self.service = service
        self.stream = stream
        self.fps = fps
        self.limit = service.settings.streams.ws_max_in_flight
        self.in_flight = 0  # frames received whose answer has not been sent
        self.outgoing: asyncio.Queue[Outgoing | None] = asyncio.Queue()
        self.room = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.gone = False  # the client disconnected: results are still computed (events) but not sent

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_results())
        try:
            await self._receive_frames()
        finally:
            self.outgoing.put_nowait(None)
            await sender

    async def _send(self, text: str) -> None:
        if self.gone:
            return
        try:
            async with self.send_lock:
                await self.ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.gone = True

    async def _slow_down(self) -> None:
        self.service.metrics.slow_down.inc()
        await self._send(SlowDown(in_flight=self.in_flight, limit=self.limit).model_dump_json())

    async def _receive_frames(self) -> None:
        tag_request: WebSocketFrameTag | None = None
        while True:
            if self.in_flight >= self.limit:
                await self._slow_down()
                while self.in_flight >= self.limit:
                    self.room.clear()
                    await self.room.wait()
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.gone = True
                return
            if message.get("text") is not None:
                try:
                    tag_request = WebSocketFrameTag.model_validate_json(message["text"])
                except ValidationError as exc:
                    reason = exc.errors()[0]["msg"]
                    error = ServiceError(400, "bad_message", f"text messages must be frame tags: {reason}")
                    await self._send(FrameError.of(error).model_dump_json())
                continue
            data = message.get("bytes") or b""
            request = tag_request or WebSocketFrameTag()
            tag_request = None
            tag = self.stream.tag(request.frame_index, request.timestamp_s, self.fps)
            self.in_flight += 1
            limit = self.service.settings.limits.max_body_bytes
            try:
                if len(data) > limit:
                    raise ServiceError(413, "body_too_large", f"frame is {len(data)} bytes; the limit is {limit}")
                await self.service.admit_waiting(1, on_wait=self._slow_down)
            except ServiceError as exc:
                self.service.begin(1)  # answered (with the error) by the sender, in order
                self.outgoing.put_nowait(FrameError.of(exc, tag))
                continue
            self.outgoing.put_nowait(self.service.submit_stream_frame(self.stream, data, tag))

    async def _send_results(self) -> None:
        version = self.service.model.version
        while (item := await self.outgoing.get()) is not None:
            try:
                if isinstance(item, FrameError):
                    await self._send(item.model_dump_json())
                else:
                    outcome = await item
                    await self._send(outcome_message(outcome, version).model_dump_json())
            finally:
                self.in_flight -= 1
                self.service.answered(1)
                if self.in_flight < self.limit:
                    self.room.set()


async def close_quietly(websocket: WebSocket, code: int = 1000) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.close(code)
