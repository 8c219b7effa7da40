"""`anomaly score`: recorded footage in, one CSV row per frame out (locally, or on a Ray cluster)."""

from pathlib import Path
from typing import Annotated, Literal

import typer

from anomaly.drift import DriftConfig
from anomaly.events import EventConfig
from anomaly.profiles import FLEET, unlike_footage_warning
from batch.ray.config import RayScoreConfig
from cli.allocator import worker_environment
from cli.options import (
    BatchSizeOpt,
    CameraOpt,
    DeviceOpt,
    ModelOpt,
    ProgressOpt,
    UserError,
    drift_options,
    event_options,
    friendly_errors,
    report_source_error,
    sampling_options,
    with_options,
)
from footage.sampling import SamplingConfig

_RAY = RayScoreConfig.model_fields


@friendly_errors
@with_options(sampling=sampling_options, events=event_options, drift=drift_options)
def score(
    model: ModelOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="scores CSV to write; with --engine ray a folder that receives one <source-stem>.scores.csv per "
            "source and manifest.json",
        ),
    ],
    sampling: SamplingConfig,
    events: EventConfig,
    drift: DriftConfig | None,
    sources: Annotated[
        list[str] | None, typer.Argument(help="video files, image folders, or folders of videos (or --manifest)")
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(help="file listing sources, one per line (# comments), or an earlier ray run's manifest.json"),
    ] = None,
    engine: Annotated[
        Literal["local", "ray"],
        typer.Option(help="local: this process; ray: Ray Data on a Ray cluster (needs pip install 'anomaly[ray]')"),
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
    ] = _RAY["chunk_frames"].default,
    events_out: Annotated[
        Path | None, typer.Option("--events", help="also write anomalous stretches as JSON here")
    ] = None,
    annotate: Annotated[
        Path | None, typer.Option(help="also write <source>.annotated.mp4 with score and heat map into this folder")
    ] = None,
    clips: Annotated[
        Path | None,
        typer.Option(
            help="with --events: also write each event's stretch as an H.264 <source-stem>_<start-frame>.mp4 "
            "(heat map and score line drawn in) and a .jpg of its worst frame into this folder"
        ),
    ] = None,
    clip_context: Annotated[
        float, typer.Option("--clip-context", min=0.0, help="seconds of footage before and after each clip's stretch")
    ] = 2.0,
    threshold: Annotated[float | None, typer.Option(help="override the model's calibrated threshold")] = None,
    camera: CameraOpt = None,
    resume: Annotated[
        bool,
        typer.Option(help="continue an interrupted run: keep its CSV's complete rows and score only what is missing"),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing scores CSV (otherwise refused)")] = False,
    all_signals: Annotated[
        bool,
        typer.Option(
            "--all-signals",
            help="fill every signal column of the CSV; by default the costly ones the score does not use "
            "(patch, local) are left empty, which about doubles the speed",
        ),
    ] = False,
    batch_size: BatchSizeOpt = _RAY["batch_size"].default,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="torch CPU threads (default: all cores but one, left for decoding; with --engine ray: CPUs and "
            "threads per scoring worker, default 1)",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    progress: ProgressOpt = True,
) -> None:
    """Score frames of recorded videos or image folders; one CSV row per scored frame.

    With --engine ray, sources are cut into chunks that a Ray cluster decodes and scores; --out is a folder.
    """
    listed = list(sources or [])
    if manifest is not None:
        from batch.ray.manifest import read_source_list

        listed += read_source_list(manifest)
    if not listed:
        raise UserError("no sources: give video files or folders, or --manifest FILE")
    if clips is not None and events_out is None:
        raise UserError("--clips needs --events FILE: the events JSON is what points at the clips")
    if engine == "ray":
        if events_out is not None or annotate is not None:
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
                all_signals=all_signals,
                chunk_frames=chunk_frames,
                workers=workers,
                cpus_per_worker=float(threads or 1),
                device=device,  # type: ignore[arg-type]
                worker_env=worker_environment(),
                address=address,
                progress=progress,
            )
        )
        return
    if address is not None or workers is not None:
        raise UserError("--address and --workers apply to --engine ray only")
    if resume and overwrite:
        raise UserError("--resume continues the CSV and --overwrite replaces it: give one")

    from anomaly.model_files import load_model, model_sha256
    from batch.local import open_run, score_sources
    from footage.ingest import expand_sources
    from footage.scores_csv import ScoringRun

    detector = load_model(model, device, threads)
    typer.echo(detector.profile_note(camera), err=True)
    detector = detector.for_camera(camera).with_all_signals(all_signals)
    if threshold is not None:
        detector = detector.with_threshold(threshold)
    expanded = expand_sources(listed)
    run = ScoringRun(
        model_sha256=model_sha256(model),
        threshold=detector.threshold,
        sampling=sampling,
        all_signals=all_signals,
        sources=tuple(expanded),
    )
    resume_from = open_run(out, run, resume=resume, overwrite=overwrite)
    if resume and resume_from is None:
        typer.echo(f"no {out} to resume: starting afresh", err=True)
    summary = score_sources(
        detector,
        expanded,
        out,
        sampling=sampling,
        batch_size=batch_size,
        events_path=events_out,
        event_config=events,
        annotate_dir=annotate,
        progress=progress,
        on_error=report_source_error,
        run=run,
        resume_from=resume_from,
        clips_dir=clips,
        clip_context_s=clip_context,
        camera=camera,
        drift=drift,
    )
    resumed = f" ({summary.resumed_frames} of them from the interrupted run)" if summary.resumed_frames else ""
    typer.echo(
        f"scored {summary.frames} frames{resumed} from {summary.scored_sources} of {len(summary.sources)} "
        f"source(s): {summary.anomalies} above threshold {detector.threshold:.3f}, {len(summary.events)} "
        f"event(s) -> {out}"
    )
    if threshold is None:  # an overridden threshold was set for no rate
        warn_of_unlike_footage(summary.flagged_rates(), detector.calibrated.target_false_alarm_rate, detector.profile)
    for d in summary.drift:
        end = "the end" if d["end_s"] is None else f"{Path(d['end_source']).name} {d['end_s']:.1f} s"
        typer.echo(
            f"camera drift ({d['camera']}): from {Path(d['source']).name} {d['start_s']:.1f} s to {end}, up to "
            f"{d['peak_exceed_fraction']:.0%} of the time above its calibrated {d['reference']}",
            err=True,
        )
    if summary.with_problems:
        names = ", ".join(summary.with_problems)
        typer.echo(
            f"{len(summary.with_problems)} source(s) had problems (their good frames are scored): {names}", err=True
        )
    if summary.failed:
        typer.echo(f"{len(summary.failed)} source(s) failed: {', '.join(summary.failed)}", err=True)
    if summary.errors:
        raise typer.Exit(1)


def score_with_ray(config: RayScoreConfig) -> None:
    """`anomaly score --engine ray`: run `batch.ray.engine` with the config, report like the local engine."""
    from batch.ray.engine import score_on_ray
    from batch.ray.manifest import check_out_dir

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
    if summary.target_false_alarm_rate is not None:
        warn_of_unlike_footage(summary.flagged_rates(), summary.target_false_alarm_rate, FLEET)
    if summary.errors:
        typer.echo(f"{len(summary.errors)} source(s) failed: {', '.join(summary.errors)}", err=True)
        raise typer.Exit(1)


def warn_of_unlike_footage(rates: dict[str, float], target: float, profile: str) -> None:
    """Say on stderr which sources the profile flagged far above its target rate (`unlike_footage_warning`)."""
    unlike = unlike_footage_warning(rates, target, profile)
    if unlike:
        typer.echo(unlike, err=True)
