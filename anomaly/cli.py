"""The `anomaly` command line: train, score, demo, generate-samples.

Options are turned into the typed config objects here, once; nothing below reads the command
line or the environment.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from pydantic import ValidationError

from anomaly.checkpoint import CheckpointError, load_detector
from anomaly.config import CalibrationConfig, DetectorConfig, ModelConfig, PreprocessConfig, TrainConfig
from anomaly.device import resolve_device, set_torch_threads
from anomaly.events import EventConfig

if TYPE_CHECKING:
    from pipelines.ray_engine import RayScoreConfig

app = typer.Typer(
    help="Find unusual frames in dashcam footage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])

Sources = Annotated[list[str], typer.Argument(help="video files, image folders, or folders of videos")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda")]
StrideOpt = Annotated[int, typer.Option("--stride", min=1, help="keep every N-th frame")]
FpsOpt = Annotated[float | None, typer.Option("--fps", help="keep frames at about this rate instead of --stride")]
StartOpt = Annotated[float, typer.Option("--start", min=0.0, help="seconds to skip at the start of each source")]
EndOpt = Annotated[float | None, typer.Option("--end", help="stop each source at this time (seconds)")]
MaxFramesOpt = Annotated[int | None, typer.Option("--max-frames", min=1, help="at most this many frames per source")]
FolderFpsOpt = Annotated[float, typer.Option("--folder-fps", help="frame rate assumed for image folders")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]
SignalsOpt = Annotated[
    str | None,
    typer.Option(
        help="signals the score combines, comma-separated, from spatial, latent, local, knn, disc_patch, recon, disc "
        "(default spatial,latent; local,knn,disc_patch measured better on real fleet footage, worse on the demo)"
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


def friendly_errors(fn: F) -> F:
    """Turn expected failures (bad input, bad model file) into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pipelines.ingest import IngestError
        from pipelines.labels import LabelError

        try:
            return fn(*args, **kwargs)
        except (UserError, CheckpointError, IngestError, LabelError, ValidationError, ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def sampling_config(
    stride: int, fps: float | None, start: float, end: float | None, max_frames: int | None, folder_fps: float
):
    from pipelines.ingest import SamplingConfig

    return SamplingConfig(
        stride=stride, target_fps=fps, start_s=start, end_s=end, max_frames=max_frames, folder_fps=folder_fps
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


def report_source_error(src: str, err: Exception) -> None:
    typer.echo(f"warning: skipped {src}: {err}", err=True)


def quiet(*_: object) -> None:
    """Output of the training processes other than rank 0 (which speaks for all)."""


@app.command()
@friendly_errors
def train(
    sources: Sources,
    out: Annotated[Path, typer.Option("--out", "-o", help="model file to write")],
    steps: Annotated[int, typer.Option(min=1, help="training steps")] = TrainConfig().steps,
    batch_size: Annotated[int, typer.Option(min=2)] = TrainConfig().batch_size,
    seed: int = 0,
    width: Annotated[int, typer.Option(help="model input width")] = PreprocessConfig().width,
    height: Annotated[int, typer.Option(help="model input height")] = PreprocessConfig().height,
    roi: Annotated[str | None, typer.Option(help="region of interest x0,y0,x1,y1 as fractions")] = None,
    latent_channels: int = ModelConfig().latent_channels,
    adversarial_weight: float = 0.02,
    holdout: Annotated[float, typer.Option(help="tail fraction of each source held out for calibration")] = 0.25,
    target_far: Annotated[float, typer.Option(help="false-alarm rate on normal frames the threshold aims at")] = 0.01,
    max_train_frames: int = TrainConfig().max_train_frames,
    signals: SignalsOpt = None,
    defects: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="share of each batch given generic synthetic defects (restored by the autoencoder, "
            "found by the discriminator)",
        ),
    ] = TrainConfig().defect_fraction,
    resume: Annotated[bool, typer.Option(help="continue from the training state saved beside --out")] = False,
    device: DeviceOpt = "auto",
    stride: StrideOpt = 1,
    fps: FpsOpt = None,
    start: StartOpt = 0.0,
    end: EndOpt = None,
    max_frames: MaxFramesOpt = None,
    folder_fps: FolderFpsOpt = 10.0,
    progress: ProgressOpt = True,
) -> None:
    """Train the autoencoder/discriminator pair on normal driving and calibrate its threshold.

    Runs unchanged under `torchrun --nproc-per-node N`: DistributedDataParallel, one checkpoint from rank 0.
    """
    import os

    from anomaly.distributed import context_from_env, process_group
    from anomaly.preprocess import Preprocessor
    from anomaly.train import TrainingData, train_detector
    from pipelines.ingest import expand_sources
    from pipelines.training import load_named_prepared_frames

    default = DetectorConfig()
    config = DetectorConfig(
        preprocess=PreprocessConfig(width=width, height=height, roi=parse_roi(roi)),
        model=ModelConfig(widths=default.model.widths, latent_channels=latent_channels),
        train=TrainConfig(
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            holdout_fraction=holdout,
            max_train_frames=max_train_frames,
            defect_fraction=defects,
            device=device,  # type: ignore[arg-type]
            loss=default.train.loss.model_copy(update={"adversarial": adversarial_weight}),
        ),
        calibration=CalibrationConfig(
            target_false_alarm_rate=target_far,
            **({"signals": parse_signals(signals)} if signals else {}),
        ),
    )
    torch_device = resolve_device(device)  # fail before reading any video
    context = context_from_env(os.environ)  # torchrun's RANK/WORLD_SIZE/LOCAL_RANK; rank 0 of 1 otherwise
    echo = typer.echo if context.is_main else quiet
    sampling = sampling_config(stride, fps, start, end, max_frames, folder_fps)
    named = load_named_prepared_frames(
        expand_sources(sources),
        sampling,
        Preprocessor(config.preprocess),
        max_train_frames,
        report_source_error if context.is_main else quiet,
    )
    data = TrainingData.split([f for _, f in named], holdout, names=[Path(n).name for n, _ in named])
    if context.enabled:
        echo(f"training on {context.world_size} processes (DistributedDataParallel)")
    with process_group(context, context.device(torch_device)):
        train_detector(
            config, data, out, resume=resume, progress=progress and context.is_main, log=echo, context=context
        )
    echo(f"wrote {out}")


@app.command()
@friendly_errors
def score(
    model: Annotated[Path, typer.Option("--model", "-m", help="model file from `anomaly train`")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="scores CSV to write; with --engine ray a folder that receives one <source-stem>.scores.csv per "
            "source and manifest.json",
        ),
    ],
    sources: Annotated[
        list[str] | None, typer.Argument(help="video files, image folders, or folders of videos (or --manifest)")
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(help="file listing sources, one per line (# comments), or an earlier ray run's manifest.json"),
    ] = None,
    engine: Annotated[
        Literal["local", "ray"],
        typer.Option(help="local: this process; ray: Ray Data on a Ray cluster (needs pip install 'anomaly\\[ray]')"),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="with --engine ray: Ray cluster to join (e.g. ray://head:10001); default: start a local one"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="with --engine ray: scoring actors (default: one per GPU, else CPUs/2)")
    ] = None,
    chunk_frames: Annotated[
        int, typer.Option(min=0, help="with --engine ray: decoded frames per work chunk (0: one chunk per source)")
    ] = 256,
    events: Annotated[Path | None, typer.Option(help="also write anomalous stretches as JSON here")] = None,
    annotate: Annotated[
        Path | None, typer.Option(help="also write <source>.annotated.mp4 with score and heat map into this folder")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="override the model's calibrated threshold")] = None,
    camera: CameraOpt = None,
    smooth: Annotated[int, typer.Option(min=1, help="frames in the moving average used for events")] = 1,
    min_event: Annotated[float, typer.Option(help="drop events shorter than this (seconds)")] = 0.0,
    merge_gap: Annotated[float, typer.Option(help="join events separated by less than this (seconds)")] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="torch CPU threads (default: all cores but one, left for decoding; with --engine ray: CPUs and "
            "threads per scoring worker, default 1)",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    stride: StrideOpt = 1,
    fps: FpsOpt = None,
    start: StartOpt = 0.0,
    end: EndOpt = None,
    max_frames: MaxFramesOpt = None,
    folder_fps: FolderFpsOpt = 10.0,
    progress: ProgressOpt = True,
) -> None:
    """Score frames of recorded videos or image folders; one CSV row per scored frame.

    With --engine ray, sources are cut into chunks that a Ray cluster decodes and scores; --out is a folder.
    """
    from pipelines.ingest import expand_sources
    from pipelines.score_videos import score_sources

    listed = list(sources or [])
    if manifest is not None:
        from pipelines.ray_engine import read_source_list

        listed += read_source_list(manifest)
    if not listed:
        raise UserError("no sources: give video files or folders, or --manifest FILE")
    sampling = sampling_config(stride, fps, start, end, max_frames, folder_fps)
    if engine == "ray":
        from pipelines.ray_engine import RayScoreConfig

        if events is not None or annotate is not None:
            raise UserError("--events and --annotate work with --engine local only; --engine ray writes scores")
        if camera is not None:
            raise UserError("--camera works with --engine local only (ray workers score with the fleet profile)")
        score_with_ray(
            RayScoreConfig(
                sources=tuple(listed),
                out_dir=out,
                model_path=model,
                sampling=sampling,
                threshold=threshold,
                batch_size=batch_size,
                chunk_frames=chunk_frames,
                workers=workers,
                cpus_per_worker=float(threads or 1),
                device=device,  # type: ignore[arg-type]
                address=address,
                progress=progress,
            )
        )
        return
    if address is not None or workers is not None:
        raise UserError("--address and --workers apply to --engine ray only")
    set_torch_threads(threads)
    detector = load_detector(model, resolve_device(device))
    typer.echo(detector.profile_note(camera), err=True)
    detector = detector.for_camera(camera)
    if threshold is not None:
        detector = detector.with_threshold(threshold)
    summary = score_sources(
        detector,
        expand_sources(listed),
        out,
        sampling=sampling,
        batch_size=batch_size,
        events_path=events,
        event_config=EventConfig(window=smooth, min_duration_s=min_event, merge_gap_s=merge_gap),
        annotate_dir=annotate,
        progress=progress,
        on_error=report_source_error,
    )
    typer.echo(
        f"scored {summary.frames} frames from {len(summary.sources) - len(summary.errors)} source(s): "
        f"{summary.anomalies} above threshold {detector.threshold:.3f}, {len(summary.events)} event(s) -> {out}"
    )
    if summary.errors:
        typer.echo(f"{len(summary.errors)} source(s) failed: {', '.join(summary.errors)}", err=True)
        raise typer.Exit(1)


def score_with_ray(config: RayScoreConfig) -> None:
    """`anomaly score --engine ray`: run `pipelines.ray_engine` with the config, report like the local engine."""
    from pipelines.ray_engine import check_out_dir, score_on_ray

    check_out_dir(config.out_dir)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'anomaly[ray]'") from None
    summary = score_on_ray(config, log=typer.echo)
    typer.echo(
        f"scored {summary.frames} frames from {len(summary.outcomes) - len(summary.errors)} source(s) "
        f"({len(summary.reused)} already done): {summary.anomalies} above threshold {summary.threshold:.3f} "
        f"-> {config.out_dir}/ (manifest: {summary.manifest})"
    )
    if summary.errors:
        typer.echo(f"{len(summary.errors)} source(s) failed: {', '.join(summary.errors)}", err=True)
        raise typer.Exit(1)


@app.command()
@friendly_errors
def demo(
    samples: Annotated[Path, typer.Option(help="sample clip folder (generated if missing)")] = Path("sample_videos"),
    out: Annotated[Path, typer.Option(help="where the model, scores and metrics go")] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(min=1)] = TrainConfig().steps,
    seed: int = 0,
    device: DeviceOpt = "auto",
    progress: ProgressOpt = True,
) -> None:
    """Generate the sample clips if needed, train on the normal ones, score the labeled ones, report."""
    from pipelines.demo import format_report, run_demo

    config = DetectorConfig(train=TrainConfig(steps=steps, seed=seed, device=device))  # type: ignore[arg-type]
    metrics = run_demo(samples, out, config, progress=progress, log=typer.echo)
    typer.echo("")
    typer.echo(format_report(metrics))
    typer.echo(f"\nmodel, scores, events and metrics.json in {out}")


@app.command()
@friendly_errors
def calibrate(
    model: Annotated[Path, typer.Argument(help="model file from `anomaly train`")],
    sources: Annotated[list[str], typer.Argument(help="normal footage of the camera: videos or image folders")],
    camera: Annotated[str, typer.Option(help="name of the camera (the profile's name)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="model file to write, with this camera's profile added")],
    target_far: Annotated[
        float | None, typer.Option(help="false-alarm rate the threshold aims at (default: the model's)")
    ] = None,
    signals: SignalsOpt = None,
    device: DeviceOpt = "auto",
    stride: StrideOpt = 1,
    fps: FpsOpt = None,
    start: StartOpt = 0.0,
    end: EndOpt = None,
    max_frames: MaxFramesOpt = None,
    folder_fps: FolderFpsOpt = 10.0,
    progress: ProgressOpt = True,
) -> None:
    """Fit one camera's normal statistics and threshold from its normal footage, without retraining."""
    import time

    from anomaly.checkpoint import save_detector
    from anomaly.profiles import fit_camera_profile
    from pipelines.ingest import expand_sources
    from pipelines.training import load_named_prepared_frames

    t0 = time.perf_counter()
    detector = load_detector(model, resolve_device(device))
    update: dict[str, Any] = {"target_false_alarm_rate": target_far} if target_far is not None else {}
    if signals:
        update["signals"] = parse_signals(signals)
    original = detector.config
    if update:  # this profile's own settings; the model's config (and the fleet profile) stay as they are
        cal = CalibrationConfig.model_validate({**detector.config.calibration.model_dump(), **update})
        config = DetectorConfig.model_validate({**detector.config.model_dump(), "calibration": cal.model_dump()})
        detector = dataclasses.replace(detector, config=config)
    named = load_named_prepared_frames(
        expand_sources(sources),
        sampling_config(stride, fps, start, end, max_frames, folder_fps),
        detector.preprocessor,
        detector.config.train.max_train_frames,
        report_source_error,
    )
    profile = fit_camera_profile(detector, [f for _, f in named], names=[Path(n).name for n, _ in named])
    replaced = camera in detector.profiles
    detector = dataclasses.replace(detector, config=original).with_profile(camera, profile)
    save_detector(detector, out)
    rates = profile.holdout_false_alarms
    typer.echo(
        f"{'replaced' if replaced else 'added'} camera profile {camera!r} from {profile.n_frames} frames of "
        f"{len(named)} source(s) in {time.perf_counter() - t0:.1f} s: threshold {profile.threshold:.3f} for a "
        f"{profile.target_false_alarm_rate:.1%} false-alarm rate"
        + (f"; cross-fitted false alarms {sum(rates.values()) / len(rates):.1%}" if rates else "")
    )
    if rates:
        typer.echo("per time block (threshold set without it): " + ", ".join(f"{k} {v:.1%}" for k, v in rates.items()))
    typer.echo(f"profiles in {out}: fleet, {', '.join(sorted(detector.profiles))}")


@app.command("generate-samples")
@friendly_errors
def generate_samples(
    out: Annotated[Path, typer.Option(help="folder to write clips and labels to")] = Path("sample_videos"),
    seed: int = 0,
    scale: Annotated[int, typer.Option(min=1, help="make every clip this many times longer")] = 1,
) -> None:
    """Write the synthetic dashcam clips (normal ones for training, labeled ones for testing)."""
    from pipelines.synth import generate_sample_set

    written = generate_sample_set(out, seed=seed, scale=scale)
    typer.echo(json.dumps([str(p) for p in written], indent=2))


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


@app.command()
@friendly_errors
def evaluate(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for metrics.json, sweep.csv, plots, report.html")],
    sources: Annotated[
        list[str] | None, typer.Argument(help="labeled clips to score with --model (or give --scores instead)")
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="model file from `anomaly train`")] = None,
    scores: Annotated[
        Path | None, typer.Option("--scores", help="scores CSV from `anomaly score`, instead of clips to score")
    ] = None,
    labels: Annotated[
        list[str] | None,
        typer.Option(
            "--labels",
            help="label CSV, repeatable or a quoted glob; per frame (source,frame_index,label[,kind]) or intervals "
            "(source,start_s,end_s[,kind] or source,start_frame,end_frame[,kind]; ends inclusive, uncovered frames "
            "normal). Default: <clip>.labels.csv beside each clip",
        ),
    ] = None,
    threshold: Annotated[
        str | None,
        typer.Option(
            help="operating threshold for the events and --write-model: a number, best-f1 (highest F1 on these "
            "labels), far:RATE (most detections with at most RATE of normal frames flagged, e.g. far:0.01) or "
            "calibrated (the model's own, the default)"
        ),
    ] = None,
    write_model: Annotated[
        Path | None,
        typer.Option(help="write a copy of --model with the operating threshold here, for `score` and the service"),
    ] = None,
    target_far: Annotated[
        float, typer.Option(help="false-positive rate whose threshold the report lists next to best F1")
    ] = 0.01,
    baseline_train: Annotated[
        list[str] | None,
        typer.Option(
            help="normal clips (repeatable, folder or quoted glob) to train the PCA and AE-only baselines on; "
            "they are scored on the same frames"
        ),
    ] = None,
    baseline_steps: Annotated[
        int | None, typer.Option(min=1, help="AE-only training steps (default: the model's)")
    ] = None,
    smooth: Annotated[int, typer.Option(min=1, help="frames in the moving average used for events")] = 1,
    hysteresis: Annotated[float, typer.Option(min=0.0, help="score drop below the threshold that ends an event")] = 0.0,
    min_event: Annotated[float, typer.Option(min=0.0, help="drop events shorter than this (seconds)")] = 0.0,
    merge_gap: Annotated[float, typer.Option(min=0.0, help="join events separated by less than this (seconds)")] = 0.0,
    top_k: Annotated[int, typer.Option(min=0, help="most anomalous frames shown with heat maps in the report")] = 12,
    camera: CameraOpt = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads")] = None,
    device: DeviceOpt = "auto",
    stride: StrideOpt = 1,
    fps: FpsOpt = None,
    start: StartOpt = 0.0,
    end: EndOpt = None,
    max_frames: MaxFramesOpt = None,
    folder_fps: FolderFpsOpt = 10.0,
    progress: ProgressOpt = True,
) -> None:
    """Measure a model on labeled clips: AUROC/AP per kind, threshold sweep, events, baselines, HTML report."""
    from pipelines.evaluate import EvaluationConfig, format_summary
    from pipelines.evaluate import evaluate as run_evaluation
    from pipelines.ingest import expand_sources

    config = EvaluationConfig(
        out_dir=out,
        sources=tuple(expand_sources(expand_patterns(sources, "clip"))) if sources else (),
        scores_csv=scores,
        model_path=model,
        labels=tuple(Path(p) for p in expand_patterns(labels, "--labels")),
        threshold=threshold,
        write_model=write_model,
        target_far=target_far,
        events=EventConfig(window=smooth, hysteresis=hysteresis, min_duration_s=min_event, merge_gap_s=merge_gap),
        baseline_train=tuple(expand_patterns(baseline_train, "--baseline-train")),
        baseline_steps=baseline_steps,
        top_k=top_k,
        sampling=sampling_config(stride, fps, start, end, max_frames, folder_fps),
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    set_torch_threads(threads)
    detector = load_detector(model, resolve_device(device)) if model else None
    if detector is not None:
        typer.echo(detector.profile_note(camera), err=True)
        detector = detector.for_camera(camera)
    result = run_evaluation(config, detector, log=typer.echo)
    typer.echo("")
    typer.echo(format_summary(result.metrics))
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"\nreport: {result.files['report_html']}  (metrics.json, sweep.csv, plots in {out})")


@app.command()
@friendly_errors
def serve(
    model: Annotated[Path, typer.Option("--model", "-m", help="model file from `anomaly train`")],
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0 for every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 picks a free one)")] = 8000,
    device: DeviceOpt = "auto",
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads (default: all cores but one, left for HTTP/decoding)")
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="most frames per model pass")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(min=0.0, help="how long a frame waits for others to join it")] = 5.0,
    queue_size: Annotated[int, typer.Option(min=1, help="frames accepted but not scored before 503")] = 128,
    max_body_mb: Annotated[float, typer.Option(min=0.01, help="largest request body / WebSocket message, MiB")] = 8.0,
    max_width: Annotated[int, typer.Option(min=16, help="widest image accepted")] = 3840,
    max_height: Annotated[int, typer.Option(min=16, help="tallest image accepted")] = 2160,
    max_frames_per_message: Annotated[int, typer.Option(min=1, help="frames in one multipart stream message")] = 16,
    stream_idle: Annotated[float, typer.Option(help="seconds before an idle stream's state is dropped")] = 60.0,
    max_streams: Annotated[int, typer.Option(min=1, help="streams held at once")] = 1000,
    ws_max_in_flight: Annotated[
        int, typer.Option(min=1, help="unanswered frames per WebSocket before it is told to slow down")
    ] = 32,
    fps: Annotated[float, typer.Option(help="frame rate for timestamps a client does not send")] = 25.0,
    smooth: Annotated[int, typer.Option(min=1, help="frames in the moving average used for events")] = 1,
    hysteresis: Annotated[float, typer.Option(min=0.0, help="score drop below the threshold that ends an event")] = 0.0,
    min_event: Annotated[float, typer.Option(min=0.0, help="events shorter than this (seconds) are dropped")] = 0.0,
    merge_gap: Annotated[float, typer.Option(min=0.0, help="join events separated by less than this (seconds)")] = 0.0,
    token_file: Annotated[
        Path | None, typer.Option(help="file holding the bearer token clients must send (or set the --token-env var)")
    ] = None,
    token_env: Annotated[str, typer.Option(help="environment variable holding the bearer token")] = "ANOMALY_API_TOKEN",
    shutdown_timeout: Annotated[float, typer.Option(help="seconds to answer accepted frames on shutdown")] = 30.0,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="log every HTTP request")] = True,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info or debug")] = "info",
) -> None:
    """Serve the model over HTTP and WebSocket: single frames, and streams with events (see README)."""
    import os

    from service.server import serve as run_service
    from service.settings import BatchSettings, Limits, ServiceSettings, StreamSettings, read_auth_token

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
        batching=BatchSettings(max_batch=max_batch, max_wait_ms=batch_wait_ms, queue_size=queue_size),
        streams=StreamSettings(
            idle_timeout_s=stream_idle,
            max_streams=max_streams,
            ws_max_in_flight=ws_max_in_flight,
            default_fps=fps,
            events=EventConfig(window=smooth, hysteresis=hysteresis, min_duration_s=min_event, merge_gap_s=merge_gap),
        ),
        shutdown_timeout_s=shutdown_timeout,
        access_log=access_log,
        log_level=log_level,  # type: ignore[arg-type]
    )
    typer.echo(f"auth: {'bearer token required' if settings.auth_token else 'off'}", err=True)
    run_service(settings)


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="anomaly")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
