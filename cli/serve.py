"""`anomaly serve`: the model over HTTP and WebSocket (the service in `service/`)."""

import os
from typing import Annotated

import typer

from anomaly.drift import DriftConfig
from anomaly.events import EventConfig
from cli.options import (
    DeviceOpt,
    ModelOpt,
    TokenEnvOpt,
    TokenFileOpt,
    drift_options,
    event_options,
    friendly_errors,
    with_options,
)
from service.settings import (
    TOKEN_ENV,
    BatchSettings,
    ConnectionSettings,
    Limits,
    LiveSettings,
    ServiceSettings,
    StreamSettings,
    read_auth_token,
)

_LIMITS = Limits.model_fields
_BATCH = BatchSettings.model_fields
_STREAMS = StreamSettings.model_fields
_SERVICE = ServiceSettings.model_fields
_CONN = ConnectionSettings.model_fields
_LIVE = LiveSettings.model_fields


def _help(fields: dict, name: str) -> str:
    return fields[name].description or ""


@friendly_errors
@with_options(events=event_options, drift=drift_options)
def serve(
    model: ModelOpt,
    events: EventConfig,
    drift: DriftConfig | None,
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0 for every interface)")] = _SERVICE[
        "host"
    ].default,
    port: Annotated[int, typer.Option(min=0, max=65535, help=_help(_SERVICE, "port"))] = _SERVICE["port"].default,
    device: DeviceOpt = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help=_help(_SERVICE, "torch_threads"))] = None,
    max_batch: Annotated[int, typer.Option(min=1, help=_help(_BATCH, "max_batch"))] = _BATCH["max_batch"].default,
    batch_wait_ms: Annotated[float, typer.Option(min=0.0, help=_help(_BATCH, "max_wait_ms"))] = _BATCH[
        "max_wait_ms"
    ].default,
    queue_size: Annotated[int, typer.Option(min=1, help=_help(_BATCH, "queue_size"))] = _BATCH["queue_size"].default,
    max_body_mb: Annotated[float, typer.Option(min=0.01, help="largest request body / WebSocket message, MiB")] = (
        _LIMITS["max_body_bytes"].default / 2**20
    ),
    max_width: Annotated[int, typer.Option(min=16, help=_help(_LIMITS, "max_width"))] = _LIMITS["max_width"].default,
    max_height: Annotated[int, typer.Option(min=16, help=_help(_LIMITS, "max_height"))] = _LIMITS["max_height"].default,
    max_frames_per_message: Annotated[int, typer.Option(min=1, help=_help(_LIMITS, "max_frames_per_message"))] = (
        _LIMITS["max_frames_per_message"].default
    ),
    stream_idle: Annotated[float, typer.Option(help=_help(_STREAMS, "idle_timeout_s"))] = _STREAMS[
        "idle_timeout_s"
    ].default,
    max_streams: Annotated[int, typer.Option(min=1, help=_help(_STREAMS, "max_streams"))] = _STREAMS[
        "max_streams"
    ].default,
    ws_max_in_flight: Annotated[int, typer.Option(min=1, help=_help(_STREAMS, "ws_max_in_flight"))] = _STREAMS[
        "ws_max_in_flight"
    ].default,
    fps: Annotated[float, typer.Option(help=_help(_STREAMS, "default_fps"))] = _STREAMS["default_fps"].default,
    token_file: TokenFileOpt = None,
    token_env: TokenEnvOpt = TOKEN_ENV,
    shutdown_timeout: Annotated[float, typer.Option(help=_help(_SERVICE, "shutdown_timeout_s"))] = _SERVICE[
        "shutdown_timeout_s"
    ].default,
    header_timeout: Annotated[float, typer.Option(help=_help(_CONN, "header_timeout_s"))] = _CONN[
        "header_timeout_s"
    ].default,
    body_timeout: Annotated[float, typer.Option(help=_help(_CONN, "body_timeout_s"))] = _CONN["body_timeout_s"].default,
    keep_alive: Annotated[int, typer.Option(min=1, help=_help(_CONN, "keep_alive_s"))] = _CONN["keep_alive_s"].default,
    max_connections: Annotated[int, typer.Option(min=2, help=_help(_CONN, "max_connections"))] = _CONN[
        "max_connections"
    ].default,
    max_requests: Annotated[int, typer.Option(min=1, help=_help(_CONN, "max_requests"))] = _CONN[
        "max_requests"
    ].default,
    unready_after: Annotated[float, typer.Option(help=_help(_BATCH, "unready_after_s"))] = _BATCH[
        "unready_after_s"
    ].default,
    live_view: Annotated[bool, typer.Option("--live-view", help=_help(_SERVICE, "live_view"))] = False,
    live_history: Annotated[float, typer.Option(help=_help(_LIVE, "history_s"))] = _LIVE["history_s"].default,
    live_fps: Annotated[float, typer.Option(help=_help(_LIVE, "frames_per_s"))] = _LIVE["frames_per_s"].default,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="log every HTTP request")] = True,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info or debug")] = "info",
) -> None:
    """Serve the model over HTTP and WebSocket: single frames, and streams with events (see README)."""
    from service.server import serve as run_service

    settings = ServiceSettings(
        model_path=model,
        device=device,  # type: ignore[arg-type]
        host=host,
        port=port,
        torch_threads=threads,
        auth_token=read_auth_token(token_env, token_file, os.environ),
        limits=Limits(
            max_body_bytes=int(max_body_mb * 2**20),
            max_width=max_width,
            max_height=max_height,
            max_frames_per_message=max_frames_per_message,
        ),
        batching=BatchSettings(
            max_batch=max_batch, max_wait_ms=batch_wait_ms, queue_size=queue_size, unready_after_s=unready_after
        ),
        connections=ConnectionSettings(
            max_connections=max_connections,
            max_requests=max_requests,
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
            keep_alive_s=keep_alive,
        ),
        streams=StreamSettings(
            idle_timeout_s=stream_idle,
            max_streams=max_streams,
            ws_max_in_flight=ws_max_in_flight,
            default_fps=fps,
            events=events,
            drift=drift,
        ),
        shutdown_timeout_s=shutdown_timeout,
        live_view=live_view,
        live=LiveSettings(history_s=live_history, frames_per_s=live_fps),
        access_log=access_log,
        log_level=log_level,  # type: ignore[arg-type]
    )
    typer.echo(f"auth: {'bearer token required' if settings.auth_token else 'off'}", err=True)
    run_service(settings)
