"""`anomaly calibrate`: one camera's normal statistics and threshold, fitted from its footage without retraining."""

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from anomaly.profiles import far_above_target
from cli.options import (
    DeviceOpt,
    SignalsOpt,
    UserError,
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
    out: Annotated[Path, typer.Option("--out", "-o", help="model file to write, with this camera's profile added")],
    sampling: SamplingConfig,
    sources: Annotated[
        list[str] | None, typer.Argument(help="normal footage of the camera: videos or image folders")
    ] = None,
    camera: Annotated[str | None, typer.Option(help="name of the camera (the profile's name)")] = None,
    feedback: Annotated[
        Path | None,
        typer.Option(
            help="instead of footage: the verdicts database of `anomaly review` (review.sqlite); stretches marked "
            "normal are folded into the profile that scored them"
        ),
    ] = None,
    allow_missed: Annotated[
        bool, typer.Option(help="with --feedback: write the model even if it would miss a confirmed anomaly")
    ] = False,
    feedback_margin: Annotated[
        float,
        typer.Option(
            min=0.05,
            max=1.0,
            help="with --feedback: the stretches marked normal are brought to this fraction of the threshold "
            "(lower: frames like them are quieted too, at more risk to anomalies in the same place)",
        ),
    ] = 0.8,
    target_far: Annotated[
        float | None, typer.Option(help="false-alarm rate the threshold aims at (default: the model's)")
    ] = None,
    signals: SignalsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Fit one camera's normal statistics and threshold from its normal footage, without retraining.

    With --feedback, fold the stretches an analyst marked normal in `anomaly review` into the profiles
    that scored them instead (no footage argument, no --camera).
    """
    if feedback is not None:
        if sources or camera or target_far is not None or signals:
            raise UserError("--feedback takes only the model, --out and the review database")
        calibrate_from_feedback(model, feedback, out, allow_missed, feedback_margin, device)
        return
    if not sources or camera is None:
        raise UserError("give the camera's normal footage and --camera NAME (or --feedback REVIEW_DB)")
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
    fleet_scale = detector.for_camera(None).calibrated.scale
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
        held = "source, scored as a drive never seen" if len(named) > 1 else "time block of the source"
        typer.echo(
            f"false alarms per {held} (statistics and threshold fitted without it): "
            + ", ".join(f"{k} {v:.1%}" for k, v in rates.items())
        )
        at_fleet = held_at_fleet_scale(profile.scale, fleet_scale, profile.signals)
        if at_fleet:
            typer.echo(
                f"held at the fleet's scale: {', '.join(at_fleet)} (this footage varies less than the fleet's drives; "
                "footage of the camera driving, from several drives, would give them the camera's own)"
            )
        strays = far_above_target(rates, profile.target_false_alarm_rate)
        if strays:
            typer.echo(
                f"warning: {', '.join(strays)} scored far above the rest of the footage: the other sources do not "
                "describe them, so the threshold is set by their scores and will be loose (it stays quiet and misses "
                "anomalies); calibrate on more of this camera's normal driving",
                err=True,
            )
    typer.echo(f"profiles in {out}: fleet, {', '.join(sorted(detector.profiles))}")


def held_at_fleet_scale(scale: dict[str, float], fleet_scale: dict[str, float], signals: Sequence[str]) -> list[str]:
    """The score's signals whose scale in a camera profile is the fleet's floor, not the camera's own
    (`anomaly.calibrate.no_narrower_than_fleet`): the footage showed less variety than the fleet's drives."""
    return [name for name in signals if name in fleet_scale and scale.get(name) == fleet_scale[name]]


def review_source(source: str, db: Path) -> str:
    """A reviewed source as it was named when scored, or beside the review database if it was moved there."""
    if Path(source).exists():
        return source
    beside = db.parent / source
    return str(beside) if beside.exists() else source


def calibrate_from_feedback(model: Path, db: Path, out: Path, allow_missed: bool, margin: float, device: str) -> None:
    """`anomaly calibrate MODEL --feedback review.sqlite --out MODEL2`: see `anomaly.feedback`."""
    import numpy as np

    from anomaly.checkpoint import load_detector, save_detector
    from anomaly.device import resolve_device
    from anomaly.feedback import fold_feedback
    from anomaly.preprocess import Preprocessor
    from anomaly.profiles import FLEET
    from footage.training_frames import load_stretch
    from review.store import ReviewStore

    started = time.perf_counter()
    verdicts = [v for v in ReviewStore.open_existing(db).latest().values() if v.verdict != "skip"]
    if not any(v.verdict == "normal" for v in verdicts):
        raise UserError(f"{db} holds no stretch marked normal: nothing to fold in")
    detector = load_detector(model, resolve_device(device))
    by_profile: dict[str, list] = {}
    for v in verdicts:
        by_profile.setdefault(detector.for_camera(v.camera).profile, []).append(v)
    for profile, group in sorted(by_profile.items()):
        normal = [v for v in group if v.verdict == "normal"]
        if not normal:
            continue
        scorer = detector.for_camera(None if profile == FLEET else profile)

        def frames(vs: list, pre: Preprocessor = scorer.preprocessor) -> list[np.ndarray]:
            return [load_stretch(review_source(v.source, db), v.start_frame, v.end_frame, pre) for v in vs]

        anomalous = [v for v in group if v.verdict == "anomaly"]
        result = fold_feedback(scorer, frames(normal), frames(anomalous), margin=margin)
        changes = ", ".join(f"{name} {n}" for name, n in result.widened.items() if n) or "none needed"
        typer.echo(
            f"profile {profile!r}: folded {len(normal)} stretch(es) marked normal "
            f"({sum(v.end_frame - v.start_frame + 1 for v in normal)} frames); changed {changes}"
            + (f"; {', '.join(result.unchanged)} cannot be changed by feedback" if result.unchanged else "")
        )
        typer.echo(
            f"  reviewed false alarms still raised: {result.false_alarms_after} of {len(normal)} "
            f"(were {result.false_alarms_before}); confirmed anomalies caught: {result.caught_after} of "
            f"{len(anomalous)} (were {result.caught_before}); threshold {scorer.threshold:.3f} unchanged"
        )
        if result.newly_missed:
            missed = "; ".join(
                f"{Path(anomalous[s.index].source).name} frames {anomalous[s.index].start_frame}-"
                f"{anomalous[s.index].end_frame} (peak {s.peak_before:.2f} -> {s.peak_after:.2f})"
                for s in result.newly_missed
            )
            if not allow_missed:
                raise UserError(
                    f"the folded profile {profile!r} would miss {len(result.newly_missed)} confirmed anomaly "
                    f"stretch(es): {missed}; nothing written (pass --allow-missed to write it anyway)"
                )
            typer.echo(f"  warning: written although it misses confirmed anomalies: {missed}", err=True)
        detector = (
            detector.with_calibration(result.calibration)
            if profile == FLEET
            else detector.with_profile(profile, result.calibration)
        )
    save_detector(detector, out)
    typer.echo(f"wrote {out} in {time.perf_counter() - started:.1f} s")
