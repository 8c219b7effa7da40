"""JSON shapes of the API (responses, WebSocket messages), with the examples shown in the OpenAPI docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from anomaly.drift import DriftConfig, DriftUpdate
from anomaly.events import Event, EventConfig, TrackerUpdate
from anomaly.frame_scores import SCORE_FIELDS, FrameScore
from service.errors import ServiceError
from service.settings import MAX_FPS, MAX_FRAME_INDEX, MAX_TIMESTAMP_S, MIN_FPS
from service.streams import FrameTag, StreamOutcome

# Client tags, bounded so that arithmetic on them cannot overflow or leave the response schema (issue 13)
FrameIndex = Annotated[int, Field(ge=0, le=MAX_FRAME_INDEX, description="frame index, 0 .. 2**63-1")]
Timestamp = Annotated[
    float, Field(ge=0.0, le=MAX_TIMESTAMP_S, allow_inf_nan=False, description="seconds, finite, 0 .. 1e12")
]
FrameRate = Annotated[float, Field(ge=MIN_FPS, le=MAX_FPS, allow_inf_nan=False)]
_FRAME_INDEX: TypeAdapter[int] = TypeAdapter(FrameIndex)
_FRAME_RATE: TypeAdapter[float] = TypeAdapter(FrameRate)
_TIMESTAMP: TypeAdapter[float] = TypeAdapter(Timestamp)


def invalid_tag(detail: str) -> ServiceError:
    return ServiceError(422, "invalid_tag", detail)


def first_error(exc: ValidationError) -> str:
    """pydantic's first complaint, on one line."""
    return exc.errors(include_url=False)[0]["msg"]


def parse_fps(raw: str) -> float:
    """The WebSocket's `?fps=`, bounded like the HTTP query parameter (422 otherwise)."""
    try:
        return _FRAME_RATE.validate_python(raw.strip())
    except ValidationError as exc:
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        raise ServiceError(422, "invalid_request", f"query fps {shown!r}: {first_error(exc)}") from None


def parse_form_tag(raw: str, name: Literal["frame_index", "timestamp_s"], position: int) -> int | float:
    """One multipart tag field, validated like the query parameter of the same name (422 otherwise)."""
    adapter = _FRAME_INDEX if name == "frame_index" else _TIMESTAMP
    try:
        return adapter.validate_python(raw.strip())
    except ValidationError as exc:
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        raise invalid_tag(f"{name} {shown!r} of frame {position}: {first_error(exc)}") from None


_SCORES_EXAMPLE = {
    "score": 4.71,
    "recon_error": 0.0213,
    "disc_score": 0.41,
    "spatial_score": 9.8,
    "latent_score": 2.3,
    "is_anomaly": True,
    "threshold": 3.05,
    "model_version": "3f9a1c0d27be",
}


class _Schema(BaseModel):
    model_config = ConfigDict(protected_namespaces=())


class Scores(_Schema):
    score: float = Field(
        description="combined anomaly score of the chosen signals' calibrated z-scores (their log-mean-exp, or "
        "their maximum for profiles calibrated so: `combination` in the model's profiles), less the normal level "
        "of the held-out frames that look like the frame where the profile has a scene baseline"
    )
    recon_error: float = Field(description="mean squared reconstruction error")
    disc_score: float | None = Field(
        None,
        description="discriminator's belief that the frame is not a normal one, 0..1; null unless the "
        "model's score uses it (the discriminator is then not run)",
    )
    spatial_score: float = Field(description="worst cell of the error map, in units of its normal range")
    latent_score: float = Field(description="distance of the encoder features from normal frames'")
    is_anomaly: bool = Field(description="score > threshold")
    threshold: float
    model_version: str = Field(description="first 12 hex digits of the model file's SHA-256")

    @classmethod
    def fields_of(cls, scored: FrameScore, model_version: str) -> dict[str, Any]:
        return {
            **{name: getattr(scored, name) for name in SCORE_FIELDS},
            "is_anomaly": scored.is_anomaly,
            "threshold": scored.threshold,
            "model_version": model_version,
        }


class ScoreResponse(Scores):
    model_config = ConfigDict(json_schema_extra={"examples": [_SCORES_EXAMPLE]})

    heatmap_png: str | None = Field(
        None,
        description="with ?heatmap=true: base64 PNG of the frame with its error heat map overlaid "
        "(blue = normal, red = twice the threshold or more)",
    )


class EventState(_Schema):
    open: bool = Field(description="an anomalous stretch is open after this frame")
    started: bool = Field(description="this frame opened a stretch")
    ended: bool = Field(description="this frame closed a stretch")


class FinishedEvent(_Schema):
    start_frame: int
    end_frame: int = Field(description="last anomalous frame (inclusive)")
    start_s: float
    end_s: float
    duration_s: float
    peak_score: float
    peak_frame: int
    n_frames: int

    @classmethod
    def of(cls, event: Event) -> FinishedEvent:
        d = event.to_dict()
        d.pop("source")
        return cls(**d)


class StreamFrameResult(Scores):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "type": "result",
                    "frame_index": 412,
                    "timestamp_s": 16.48,
                    **_SCORES_EXAMPLE,
                    "smoothed_score": 3.9,
                    "event": {"open": True, "started": True, "ended": False},
                    "finished_events": [],
                }
            ]
        },
    )

    type: Literal["result"] = "result"
    frame_index: int
    timestamp_s: float
    smoothed_score: float = Field(description="moving average the events are found on")
    event: EventState
    finished_events: list[FinishedEvent] = Field(
        default_factory=list, description="events that became final with this frame (after merge and min-duration)"
    )

    @classmethod
    def of(cls, tag: FrameTag, scored: FrameScore, update: TrackerUpdate, model_version: str) -> StreamFrameResult:
        return cls(
            frame_index=tag.frame_index,
            timestamp_s=tag.timestamp_s,
            **cls.fields_of(scored, model_version),
            smoothed_score=update.smoothed,
            event=EventState(open=update.active, started=update.started, ended=update.ended),
            finished_events=[FinishedEvent.of(e) for e in update.finished],
        )


class FrameError(_Schema):
    """A frame that was not scored, in its place in the stream's order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "error",
                    "frame_index": 413,
                    "timestamp_s": 16.52,
                    "status": 400,
                    "code": "corrupt_image",
                    "detail": "the JPEG image could not be decoded (truncated or corrupt)",
                }
            ]
        }
    )

    type: Literal["error"] = "error"
    frame_index: int | None = None
    timestamp_s: float | None = None
    status: int
    code: str
    detail: str

    @classmethod
    def of(cls, error: ServiceError, tag: FrameTag | None = None) -> FrameError:
        return cls(
            frame_index=tag.frame_index if tag else None,
            timestamp_s=tag.timestamp_s if tag else None,
            **error.to_dict(),
        )


class CameraDrift(_Schema):
    """Sent after a frame's result when, with that frame, its camera's scores started or stopped being
    drifted from its calibration (see anomaly.drift); the fields after `exceed_fraction` are the event's."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "camera_drift",
                    "camera": "truck-12.front",
                    "frame_index": 9120,
                    "timestamp_s": 364.8,
                    "drifting": True,
                    "started": True,
                    "ended": False,
                    "exceed_fraction": 0.204,
                    "start_s": 364.8,
                    "end_s": None,
                    "peak_exceed_fraction": 0.204,
                    "reference": "p99",
                    "reference_score": 3.0,
                    "max_exceed_fraction": 0.2,
                    "window_s": 300.0,
                }
            ]
        }
    )

    type: Literal["camera_drift"] = "camera_drift"
    camera: str = Field(description="the stream id, which names the camera")
    frame_index: int = Field(description="the frame that started or ended the drift")
    timestamp_s: float
    drifting: bool = Field(description="the camera is drifted after this frame")
    started: bool
    ended: bool
    exceed_fraction: float = Field(description="share of the window's time scoring above the reference, now")
    start_s: float = Field(description="timestamp of the frame that raised the drift")
    end_s: float | None = Field(description="timestamp of the frame that ended it; null while it lasts")
    peak_exceed_fraction: float
    reference: str = Field(description="the camera's calibrated level counted (p99, p90, or its threshold)")
    reference_score: float
    max_exceed_fraction: float = Field(description="the bound the drift was raised at")
    window_s: float

    @classmethod
    def of(cls, tag: FrameTag, update: DriftUpdate) -> CameraDrift | None:
        """The message for a frame whose update started or ended a drift, else None."""
        if update.event is None or not (update.started or update.ended):
            return None
        event = update.event.to_dict()
        event.pop("type")
        return cls(
            frame_index=tag.frame_index,
            timestamp_s=tag.timestamp_s,
            drifting=update.drifting,
            started=update.started,
            ended=update.ended,
            exceed_fraction=update.exceed_fraction,
            **event,
        )


def drift_message(outcome: StreamOutcome) -> CameraDrift | None:
    """The camera_drift message a frame's outcome calls for, if any."""
    return None if outcome.drift is None else CameraDrift.of(outcome.tag, outcome.drift)


def outcome_message(outcome: StreamOutcome, model_version: str) -> StreamFrameResult | FrameError:
    if outcome.scored is not None and outcome.update is not None:
        return StreamFrameResult.of(outcome.tag, outcome.scored, outcome.update, model_version)
    assert outcome.error is not None
    return FrameError.of(outcome.error, outcome.tag)


class StreamFramesResponse(_Schema):
    stream_id: str
    results: list[StreamFrameResult] = Field(description="one per frame of the message, in the order sent")
    camera_drift: list[CameraDrift] = Field(
        default_factory=list, description="drift of the stream's camera that started or ended with these frames"
    )


class SlowDown(_Schema):
    """Sent on a WebSocket when the server stops reading it until results catch up; no frame is dropped."""

    type: Literal["slow_down"] = "slow_down"
    in_flight: int = Field(description="frames of this connection not yet answered")
    limit: int
    detail: str = "the model is behind this stream; reading paused until results catch up"


class WebSocketFrameTag(_Schema):
    """Optional text message before a binary frame: tags for that frame (defaults: next index, index / fps)."""

    model_config = ConfigDict(extra="forbid")

    frame_index: FrameIndex | None = None
    timestamp_s: Timestamp | None = None


class StreamClosed(_Schema):
    stream_id: str
    frames: int = Field(description="frames scored on this stream")
    events: list[FinishedEvent] = Field(description="the stretch still open, finished by closing the stream")


class ModelInfo(_Schema):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "version": "3f9a1c0d27be",
                    "file": "model.pt",
                    "anomaly_version": "0.1.0",
                    "device": "cpu",
                    "input_width": 128,
                    "input_height": 72,
                    "roi": None,
                    "threshold": 3.05,
                    "calibration": {
                        "threshold": 3.05,
                        "target_false_alarm_rate": 0.01,
                        "calibration_frames": 525,
                        "signals": [
                            "spatial",
                            "latent",
                            "knn",
                            "recon",
                            "patch",
                            "image",
                            "defect_local",
                            "pca",
                            "tear",
                        ],
                        "combination": "logmeanexp",
                        "score_quantiles": {"p50": 0.1, "p90": 1.7, "p99": 3.0, "max": 4.2},
                    },
                    "events": {"window": 1, "hysteresis": 0.0, "min_duration_s": 0.0, "merge_gap_s": 0.0},
                    "drift": {
                        "window_s": 300.0,
                        "min_window_s": 60.0,
                        "decorrelation_s": 1.0,
                        "reference": "p99",
                        "max_exceed_fraction": 0.2,
                        "clear_exceed_fraction": 0.1,
                    },
                }
            ]
        },
    )

    version: str = Field(description="first 12 hex digits of the model file's SHA-256")
    file: str
    anomaly_version: str
    device: str
    input_width: int
    input_height: int
    roi: tuple[float, float, float, float] | None
    threshold: float
    calibration: dict[str, Any]
    events: EventConfig = Field(description="smoothing and event settings applied to every stream")
    drift: DriftConfig | None = Field(None, description="when a camera counts as drifted (null: drift is off)")


class Health(_Schema):
    status: str
    model_version: str | None = None
    detail: str | None = None


class ErrorResponse(_Schema):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "the body is not a JPEG or PNG image", "code": "unsupported_image"}]}
    )

    detail: str
    code: str
