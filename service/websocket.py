"""One WebSocket connection of a stream: frames in, results out in send order, with flow control.

Protocol (all server messages are JSON text):

- client -> server: a binary message is one JPEG or PNG frame. An optional text message
  `{"frame_index": 12, "timestamp_s": 0.48}` before it tags that frame; untagged frames get the
  next index and index / fps.
- server -> client: one message per frame in the order sent, `{"type": "result", ...}` or
  `{"type": "error", "frame_index": ..., "status": 400, "code": ..., "detail": ...}` for a frame
  that could not be scored (the connection and the stream stay usable); right after a frame's
  result, `{"type": "camera_drift", ...}` when with that frame the camera's scores started or
  stopped being drifted from its calibration (not an answer: it does not count as one); and
  `{"type": "slow_down", ...}` when the client is ahead of the model.

A text message that is not a valid tag is answered with `{"type": "error", "frame_index": null,
"status": 400 | 422, ...}` in its place, and the next frame is tagged as if none had been sent.

Shutdown: frames read before it began are scored and answered; frames read after the service
stopped accepting are answered with a `shutting_down` error carrying their index; then the server
closes with 1001 (going away). A frame without an answer before the close frame was never read.

Flow control never drops a frame: when `ws_max_in_flight` frames of this connection are
unanswered, or the service's queue is full, the server says `slow_down` once and stops reading
the socket until results catch up, so TCP pushes back on the sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from service.engine import ScoringService, internal_error
from service.errors import ServiceError
from service.schemas import FrameError, SlowDown, WebSocketFrameTag, drift_message, first_error, outcome_message
from service.streams import Stream, StreamOutcome

log = logging.getLogger("anomaly.service")

T = TypeVar("T")
GOING_AWAY = 1001
NORMAL = 1000


@dataclass
class Answer:
    """One message to send, in order: a frame's result (a future) or an error."""

    item: asyncio.Future[StreamOutcome] | FrameError
    frame: bool  # answers a frame (counts against the in-flight limit)
    counted: bool  # the frame was accepted before shutdown: the drain waits for this answer


class StreamSocket:
    def __init__(self, websocket: WebSocket, service: ScoringService, stream: Stream, fps: float) -> None:
        self.ws = websocket
        self.service = service
        self.stream = stream
        self.fps = fps
        self.limit = service.settings.streams.ws_max_in_flight
        self.in_flight = 0  # frames received whose answer has not been sent
        self.outgoing: asyncio.Queue[Answer | None] = asyncio.Queue()
        self.room = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.gone = False  # the client disconnected: results are still computed (events) but not sent

    async def run(self) -> int:
        """Serve the connection; returns the close code (1001 when the service is shutting down)."""
        sender = asyncio.create_task(self._send_results())
        try:
            await self._receive_frames()
        finally:
            self.outgoing.put_nowait(None)
            await sender
        return GOING_AWAY if self.service.stopping.is_set() else NORMAL

    async def _unless_stopping(self, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
        """Await `awaitable` unless the drain tells sockets to finish first: (finished, its result)."""
        task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.service.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stop.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return False, None

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
        while not self.service.stopping.is_set():
            if self.in_flight >= self.limit:
                await self._slow_down()
                while self.in_flight >= self.limit:
                    self.room.clear()
                    finished, _ = await self._unless_stopping(self.room.wait())
                    if not finished:
                        return
            finished, message = await self._unless_stopping(self.ws.receive())
            if not finished or message is None:
                return
            if message["type"] == "websocket.disconnect":
                self.gone = True
                return
            if message.get("text") is not None:
                tag_request = self._parse_tag(message["text"])
                continue
            request = tag_request or WebSocketFrameTag()
            tag_request = None
            await self._take_frame(message.get("bytes") or b"", request)

    def _parse_tag(self, text: str) -> WebSocketFrameTag | None:
        try:
            return WebSocketFrameTag.model_validate_json(text)
        except ValidationError as exc:
            if exc.errors()[0]["type"] == "json_invalid":
                error = ServiceError(400, "bad_message", f"text messages must be frame tags: {first_error(exc)}")
            else:
                error = ServiceError(422, "invalid_tag", f"frame tag refused: {first_error(exc)}")
            self.outgoing.put_nowait(Answer(FrameError.of(error), frame=False, counted=False))
            return None

    async def _take_frame(self, data: bytes, request: WebSocketFrameTag) -> None:
        """Admit one frame, or queue its error; whatever happens the frame gets exactly one answer."""
        try:
            tag = self.stream.tag(request.frame_index, request.timestamp_s, self.fps)
        except ServiceError as exc:
            self.outgoing.put_nowait(Answer(FrameError.of(exc), frame=False, counted=False))
            return
        except Exception as exc:  # the frame is answered, and the connection carries on
            log.exception("tagging a WebSocket frame failed")
            self.outgoing.put_nowait(Answer(FrameError.of(internal_error(exc)), frame=False, counted=False))
            return
        self.in_flight += 1
        limit = self.service.settings.limits.max_body_bytes
        if not self.service.accepting:
            error = ServiceError(503, "shutting_down", "the service is shutting down; this frame was not scored")
            self.outgoing.put_nowait(Answer(FrameError.of(error, tag), frame=True, counted=False))
            return
        if len(data) > limit:
            error = ServiceError(413, "body_too_large", f"frame is {len(data)} bytes; the limit is {limit}")
            self.outgoing.put_nowait(Answer(FrameError.of(error, tag), frame=True, counted=False))
            return
        self.service.begin(1)  # answered by the sender, in order
        try:
            ticket = await self.service.admit_waiting(1, on_wait=self._slow_down)
            answer: asyncio.Future[StreamOutcome] | FrameError = self.service.submit_stream_frame(
                self.stream, data, tag, ticket
            )
        except ServiceError as exc:
            answer = FrameError.of(exc, tag)
        except Exception as exc:
            log.exception("a WebSocket frame could not be admitted")
            answer = FrameError.of(internal_error(exc), tag)
        self.outgoing.put_nowait(Answer(answer, frame=True, counted=True))

    async def _messages_for(self, answer: Answer) -> list[str]:
        """The answer, then the camera_drift message its frame raised, if any."""
        if isinstance(answer.item, FrameError):
            return [answer.item.model_dump_json()]
        outcome = await answer.item
        try:
            texts = [outcome_message(outcome, self.service.model_info.version).model_dump_json()]
        except Exception as exc:
            log.exception("a result could not be serialised")
            return [FrameError.of(internal_error(exc), outcome.tag).model_dump_json()]
        try:
            drift = drift_message(outcome)
        except Exception:  # the frame's answer goes out all the same
            log.exception("a camera_drift message could not be built")
            drift = None
        if drift is not None:
            texts.append(drift.model_dump_json())
        return texts

    async def _send_results(self) -> None:
        while (answer := await self.outgoing.get()) is not None:
            try:
                for text in await self._messages_for(answer):
                    await self._send(text)
            except Exception:
                log.exception("answering a WebSocket frame failed")
            finally:
                if answer.frame:
                    self.in_flight -= 1
                if answer.counted:
                    self.service.answered(1)
                if self.in_flight < self.limit:
                    self.room.set()


async def close_quietly(websocket: WebSocket, code: int = NORMAL) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.close(code)
