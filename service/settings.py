"""Settings of the streaming service: one typed object, built by `anomaly serve` and passed to `create_app`.

Nothing below this layer reads the environment or the command line. The only secret, the bearer
token, is read here (`read_auth_token`) from an environment variable or a file, never from a
command-line argument (those show up in `ps`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from anomaly.config import Device
from anomaly.drift import DriftConfig
from anomaly.events import EventConfig

TOKEN_ENV = "ANOMALY_API_TOKEN"


# bounds of client tags: with them, index / fps and every timestamp stay finite and fit an int64 / a double
MAX_FRAME_INDEX = 2**63 - 1
MIN_FPS = 0.01
MAX_FPS = 1000.0
MAX_TIMESTAMP_S = 1e12


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Frozen):
    """What one request may carry. Checked before decoding, so a hostile upload costs little."""

    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="largest request body or WebSocket message")
    max_width: int = Field(3840, ge=16, description="widest image accepted (pixels)")
    max_height: int = Field(2160, ge=16, description="tallest image accepted (pixels)")
    max_frames_per_message: int = Field(16, ge=1, le=256, description="frames in one multipart stream message")


class BatchSettings(_Frozen):
    """Micro-batching and backpressure."""

    max_batch: int = Field(16, ge=1, le=1024, description="most frames scored in one pass through the model")
    max_wait_ms: float = Field(
        5.0, ge=0.0, le=10_000.0, description="how long the first frame of a batch waits for others to join it"
    )
    queue_size: int = Field(
        128, ge=1, description="frames accepted but not yet scored; beyond this the service answers 503"
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with a 503")
    unready_after_s: float = Field(
        10.0, gt=0.0, description="/readyz answers 503 once the queue has been full this long (the model is stuck)"
    )
    decode_threads: int = Field(2, ge=1, le=64, description="images decoded at once (each holds a full-size frame)")


class StreamSettings(_Frozen):
    """Per-stream state: temporal smoothing and events, camera drift, expiry, WebSocket flow control."""

    idle_timeout_s: float = Field(60.0, gt=0.0, description="a stream with no frame for this long is forgotten")
    max_streams: int = Field(1000, ge=1, description="streams held at once")
    ws_max_in_flight: int = Field(
        32, ge=1, description="frames one WebSocket may have unanswered before the server stops reading it"
    )
    default_fps: float = Field(
        25.0, ge=MIN_FPS, le=MAX_FPS, description="timestamp = frame_index / fps when none is sent"
    )
    events: EventConfig = EventConfig()
    drift: DriftConfig | None = Field(
        DriftConfig(),
        description="when a camera (a stream id) counts as drifted from its calibration (anomaly.drift); None: off",
    )


class ConnectionSettings(_Frozen):
    """Per-connection limits, enforced below the app (service/guard.py), so idle or slow clients cannot
    hold the server before auth and starve the health checks."""

    max_connections: int = Field(
        1000, ge=2, description="open TCP connections; at the cap a new one closes the longest-idle one (or is refused)"
    )
    max_requests: int = Field(
        256, ge=1, description="HTTP requests handled at once (health checks excepted); beyond it 503 `busy`"
    )
    header_timeout_s: float = Field(
        10.0, gt=0.0, le=3600.0, description="from connecting (or the previous response) to complete request headers"
    )
    body_timeout_s: float = Field(30.0, gt=0.0, le=3600.0, description="to receive a whole request body")
    keep_alive_s: int = Field(5, ge=1, le=3600, description="an idle keep-alive connection is closed after this")
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="request line and headers; beyond this the connection is closed"
    )


class LiveSettings(_Frozen):
    """The live view (`live_view`): what it keeps per stream and how often it refreshes. Previews are
    downscaled when a frame is decoded, at most `frames_per_s` per stream, and JPEG-encoded only when fetched."""

    history_s: float = Field(60.0, gt=0.0, le=3600.0, description="seconds of score history kept per stream")
    history_points: int = Field(
        240, ge=10, le=10_000, description="points of that history (frames are pooled into bins, keeping the max)"
    )
    frames_per_s: float = Field(2.0, gt=0.0, le=30.0, description="preview frames kept per stream and second")
    max_width: int = Field(480, ge=32, le=1920, description="widest preview frame (pixels); wider frames are shrunk")
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality of the preview frames")
    push_interval_s: float = Field(0.5, ge=0.05, le=10.0, description="seconds between two server-sent snapshots")
    max_viewers: int = Field(16, ge=1, le=1000, description="server-sent event streams open at once")


class ServiceSettings(_Frozen):
    model_path: Path
    device: Device = "auto"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    torch_threads: int | None = Field(
        None, ge=1, description="torch CPU threads (default: all cores but one, left for HTTP and decoding)"
    )
    auth_token: SecretStr | None = Field(None, description="bearer token every endpoint but the health checks needs")
    limits: Limits = Limits()
    batching: BatchSettings = BatchSettings()
    streams: StreamSettings = StreamSettings()
    shutdown_timeout_s: float = Field(
        30.0, gt=0.0, description="on shutdown, how long accepted frames get to be scored and answered"
    )
    connections: ConnectionSettings = ConnectionSettings()
    live_view: bool = Field(False, description="serve /live: each open stream's latest frame and recent scores")
    live: LiveSettings = LiveSettings()
    access_log: bool = True
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"


def read_auth_token(env_var: str, token_file: Path | None, environ: Mapping[str, str]) -> SecretStr | None:
    """The bearer token from `token_file` or the environment variable `env_var`; None when neither is set.

    A token that is set but empty, or set in both places, is an error rather than a silent
    fallback: either would leave the service open, or guarded by a token the operator did not mean.
    """
    from_env = environ.get(env_var)
    if token_file is not None:
        if from_env is not None:
            raise ValueError(f"the token is set both in ${env_var} and in {token_file}: give only one")
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return SecretStr(token)
    if from_env is None:
        return None
    if not from_env.strip():
        raise ValueError(f"${env_var} is set but empty: unset it to run without auth, or give a token")
    return SecretStr(from_env.strip())
