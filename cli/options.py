"""What the commands share: option declarations (once), error handling, and turning options into configs.

No `from __future__ import annotations` here: typer reads these annotations at run time. Nothing heavy
is imported at module level, so `anomaly --help` does not load torch, OpenCV or scikit-learn.
"""

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from anomaly.drift import DriftConfig
from anomaly.events import EventConfig
from footage.sampling import SamplingConfig

F = TypeVar("F", bound=Callable[..., Any])

_SAMPLING, SAMPLING_DEFAULTS = SamplingConfig.model_fields, SamplingConfig()
_EVENTS, EVENT_DEFAULTS = EventConfig.model_fields, EventConfig()
_DRIFT, DRIFT_DEFAULTS = DriftConfig.model_fields, DriftConfig()

Sources = Annotated[list[str], typer.Argument(help="video files, image folders, or folders of videos")]
ModelOpt = Annotated[
    Path,
    typer.Option(
        "--model", "-m", help="model file from `anomaly train`, or a folder from `anomaly export` (runs without torch)"
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: all cores but one)")]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="frames per model pass")]
SignalsOpt = Annotated[
    str | None,
    typer.Option(
        help="signals the score combines, comma-separated, from spatial, latent, patch, local, knn, disc_patch, "
        "image, defect, defect_local, recon, disc, pca, tear (default "
        "spatial,latent,knn,recon,patch,image,defect_local,pca,tear; see the README's fleet benchmark)"
    ),
]
CameraOpt = Annotated[
    str | None,
    typer.Option(
        help="camera the footage comes from: its profile (from `anomaly calibrate`) scores it, else the fleet's"
    ),
]


class UserError(Exception):
    """An error whose message is the whole story: printed without a traceback."""


def one_line(exc: BaseException) -> str:
    """The error as one line: pydantic's multi-line report becomes 'field: reason; field: reason'."""
    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            where, reason = ".".join(str(p) for p in e["loc"]), e["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {reason}" if where else reason)  # a check of the whole config has no field
        return "; ".join(parts)
    return " ".join(str(exc).split())


def friendly_errors(fn: F) -> F:
    """Turn expected failures (bad input, bad model file) into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, ValueError, OSError) as exc:  # ValidationError, IngestError, LabelError are among them
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            from anomaly.checkpoint import CheckpointError
            from footage.ingest import IngestError

            if isinstance(exc, (CheckpointError, IngestError)):
                typer.echo(f"error: {one_line(exc)}", err=True)
                raise typer.Exit(2) from None
            raise

    return wrapper  # type: ignore[return-value]


def with_options(**groups: Callable[..., Any]) -> Callable[[F], F]:
    """Give a command the options of each group builder; the command receives what the builder returns.

    `@with_options(sampling=sampling_options)` adds --stride, --fps, ... to the command's signature
    (as typer sees it) and passes `sampling=SamplingConfig(...)`: options shared by several commands
    are declared once, with their defaults taken from the config they build.
    """

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        own = [p for p in signature.parameters.values() if p.name not in groups]
        added = {name: list(inspect.signature(builder).parameters.values()) for name, builder in groups.items()}

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for name, builder in groups.items():
                kwargs[name] = builder(**{p.name: kwargs.pop(p.name) for p in added[name]})
            return fn(*args, **kwargs)

        extra = [p for params in added.values() for p in params]
        wrapper.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {
            **{k: v for k, v in fn.__annotations__.items() if k not in groups},
            **{p.name: p.annotation for p in extra},
        }
        return wrapper  # type: ignore[return-value]

    return decorate


def sampling_options(
    stride: Annotated[int, typer.Option(min=1, help=_SAMPLING["stride"].description)] = SAMPLING_DEFAULTS.stride,
    fps: Annotated[float | None, typer.Option(help=_SAMPLING["target_fps"].description)] = None,
    start: Annotated[float, typer.Option(min=0.0, help=_SAMPLING["start_s"].description)] = SAMPLING_DEFAULTS.start_s,
    end: Annotated[float | None, typer.Option(help=_SAMPLING["end_s"].description)] = None,
    max_frames: Annotated[int | None, typer.Option(min=1, help=_SAMPLING["max_frames"].description)] = None,
    folder_fps: Annotated[float, typer.Option(help=_SAMPLING["folder_fps"].description)] = SAMPLING_DEFAULTS.folder_fps,
) -> SamplingConfig:
    """--stride, --fps, --start, --end, --max-frames, --folder-fps."""
    return SamplingConfig(
        stride=stride, target_fps=fps, start_s=start, end_s=end, max_frames=max_frames, folder_fps=folder_fps
    )


def event_options(
    smooth: Annotated[int, typer.Option(min=1, help=_EVENTS["window"].description)] = EVENT_DEFAULTS.window,
    hysteresis: Annotated[
        float, typer.Option(min=0.0, help=_EVENTS["hysteresis"].description)
    ] = EVENT_DEFAULTS.hysteresis,
    min_event: Annotated[
        float, typer.Option(min=0.0, help=_EVENTS["min_duration_s"].description)
    ] = EVENT_DEFAULTS.min_duration_s,
    merge_gap: Annotated[
        float, typer.Option(min=0.0, help=_EVENTS["merge_gap_s"].description)
    ] = EVENT_DEFAULTS.merge_gap_s,
) -> EventConfig:
    """--smooth, --hysteresis, --min-event, --merge-gap."""
    return EventConfig(window=smooth, hysteresis=hysteresis, min_duration_s=min_event, merge_gap_s=merge_gap)


def drift_options(
    watch_drift: Annotated[
        bool, typer.Option("--drift/--no-drift", help="watch each camera's scores for drift from its calibration")
    ] = True,
    drift_window: Annotated[float, typer.Option(help=_DRIFT["window_s"].description)] = DRIFT_DEFAULTS.window_s,
    drift_min_window: Annotated[
        float, typer.Option(help=_DRIFT["min_window_s"].description)
    ] = DRIFT_DEFAULTS.min_window_s,
    drift_decorrelation: Annotated[
        float, typer.Option(help=_DRIFT["decorrelation_s"].description)
    ] = DRIFT_DEFAULTS.decorrelation_s,
    drift_reference: Annotated[str, typer.Option(help=_DRIFT["reference"].description)] = DRIFT_DEFAULTS.reference,
    drift_bound: Annotated[
        float, typer.Option(help=_DRIFT["max_exceed_fraction"].description)
    ] = DRIFT_DEFAULTS.max_exceed_fraction,
    drift_clear: Annotated[
        float, typer.Option(help=_DRIFT["clear_exceed_fraction"].description)
    ] = DRIFT_DEFAULTS.clear_exceed_fraction,
) -> DriftConfig | None:
    """--drift/--no-drift, --drift-window, --drift-min-window, --drift-decorrelation, --drift-reference,
    --drift-bound, --drift-clear (checked together by DriftConfig: a bad combination is one error line)."""
    if not watch_drift:
        return None
    return DriftConfig(
        window_s=drift_window,
        min_window_s=drift_min_window,
        decorrelation_s=drift_decorrelation,
        reference=drift_reference,  # type: ignore[arg-type]
        max_exceed_fraction=drift_bound,
        clear_exceed_fraction=drift_clear,
    )


def parse_roi(text: str | None) -> tuple[float, float, float, float] | None:
    if not text:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--roi {text!r}: expected four fractions x0,y0,x1,y1 such as 0,0.3,1,0.85") from None
    return x0, y0, x1, y1


def parse_signals(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def expand_patterns(values: list[str] | None, what: str) -> list[str]:
    """Paths as given, with quoted glob patterns ('clips/normal_*.mp4') expanded: an option takes one value."""
    import glob

    out: list[str] = []
    for value in values or []:
        if glob.has_magic(value) and not Path(value).exists():
            matches = sorted(glob.glob(value))
            if not matches:
                raise UserError(f"{what} {value!r} matches no file")
            out.extend(matches)
        else:
            out.append(value)
    return out


def report_source_error(src: str, err: Exception) -> None:
    typer.echo(f"warning: skipped {src}: {err}", err=True)


def quiet(*_: object) -> None:
    """Output of the training processes other than rank 0 (which speaks for all)."""


TokenFileOpt = Annotated[
    Path | None, typer.Option(help="file holding the bearer token clients must send (or set the --token-env var)")
]
TokenEnvOpt = Annotated[str, typer.Option(help="environment variable holding the bearer token")]
