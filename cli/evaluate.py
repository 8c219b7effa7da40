"""`anomaly evaluate`: a model measured on labeled clips, against baselines, in one HTML report."""

from pathlib import Path
from typing import Annotated

import typer

from anomaly.events import EventConfig
from cli.options import (
    BatchSizeOpt,
    CameraOpt,
    DeviceOpt,
    ProgressOpt,
    ThreadsOpt,
    event_options,
    expand_patterns,
    friendly_errors,
    sampling_options,
    with_options,
)
from evaluation.config import EvaluationConfig
from footage.sampling import SamplingConfig

_EVAL = EvaluationConfig.model_fields


@friendly_errors
@with_options(sampling=sampling_options, events=event_options)
def evaluate(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for metrics.json, sweep.csv, plots, report.html")],
    sampling: SamplingConfig,
    events: EventConfig,
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
    report_far: Annotated[
        float, typer.Option(help="false-positive rate whose threshold the report lists next to best F1")
    ] = _EVAL["report_far"].default,
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
    top_k: Annotated[int, typer.Option(min=0, help="most anomalous frames shown with heat maps in the report")] = _EVAL[
        "top_k"
    ].default,
    camera: CameraOpt = None,
    batch_size: BatchSizeOpt = _EVAL["batch_size"].default,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    progress: ProgressOpt = True,
) -> None:
    """Measure a model on labeled clips: AUROC/AP per kind, threshold sweep, events, baselines, HTML report."""
    from anomaly.checkpoint import load_detector
    from anomaly.device import resolve_device, set_torch_threads
    from evaluation.evaluate import evaluate as run_evaluation
    from evaluation.evaluate import format_summary
    from footage.ingest import expand_sources

    config = EvaluationConfig(
        out_dir=out,
        sources=tuple(expand_sources(expand_patterns(sources, "clip"))) if sources else (),
        scores_csv=scores,
        model_path=model,
        labels=tuple(Path(p) for p in expand_patterns(labels, "--labels")),
        threshold=threshold,
        write_model=write_model,
        report_far=report_far,
        events=events,
        baseline_train=tuple(expand_patterns(baseline_train, "--baseline-train")),
        baseline_steps=baseline_steps,
        top_k=top_k,
        sampling=sampling,
        batch_size=batch_size,
        device=device,  # type: ignore[arg-type]
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
