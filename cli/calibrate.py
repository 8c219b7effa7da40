"""`anomaly calibrate`: one camera's normal statistics and threshold, fitted from its footage without retraining."""

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.options import (
    DeviceOpt,
    SignalsOpt,
    friendly_errors,
    parse_signals,
    report_source_error,
    sampling_options,
    with_options,
)
from footage.sampling import SamplingConfig


@friendly_errors
@with_options(sampling=sampling_options)
def calibrate(
    model: Annotated[Path, typer.Argument(help="model file from `anomaly train`")],
    sources: Annotated[list[str], typer.Argument(help="normal footage of the camera: videos or image folders")],
    camera: Annotated[str, typer.Option(help="name of the camera (the profile's name)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="model file to write, with this camera's profile added")],
    sampling: SamplingConfig,
    target_far: Annotated[
        float | None, typer.Option(help="false-alarm rate the threshold aims at (default: the model's)")
    ] = None,
    signals: SignalsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Fit one camera's normal statistics and threshold from its normal footage, without retraining."""
    from anomaly.calibrate import fit_camera_profile
    from anomaly.checkpoint import load_detector, save_detector
    from anomaly.config import CalibrationConfig, DetectorConfig
    from anomaly.device import resolve_device
    from footage.ingest import expand_sources
    from footage.training_frames import load_named_prepared_frames

    started = time.perf_counter()
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
        sampling,
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
        f"{len(named)} source(s) in {time.perf_counter() - started:.1f} s: threshold {profile.threshold:.3f} for a "
        f"{profile.target_false_alarm_rate:.1%} false-alarm rate"
        + (f"; cross-fitted false alarms {sum(rates.values()) / len(rates):.1%}" if rates else "")
    )
    if rates:
        typer.echo("per time block (threshold set without it): " + ", ".join(f"{k} {v:.1%}" for k, v in rates.items()))
    typer.echo(f"profiles in {out}: fleet, {', '.join(sorted(detector.profiles))}")
