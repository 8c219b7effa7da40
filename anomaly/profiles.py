"""Camera profiles by name: the fleet profile's name, the line that tells a user which profile scores a camera,
and the rule for footage a profile does not describe.

Torch-free, shared by `anomaly.detector.Detector` and `anomaly.exported.ExportedDetector`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

FLEET = "fleet"  # the profile from training; a camera without a profile of its own is scored with it
# Sources with fewer frames than this have no flagged share worth reporting (a photo, a clip of a second).
MIN_FRAMES_FOR_RATE = 20


def profile_for(camera: str | None, cameras: Collection[str]) -> str:
    """The profile that scores `camera`'s frames: its own when it is among `cameras`, else the fleet's."""
    return camera if camera and camera in cameras else FLEET


def profile_note(camera: str | None, thresholds: Mapping[str, float]) -> str:
    """One line saying which profile scores `camera`'s frames, given each camera profile's threshold."""
    if not camera:
        return "no camera given: using the fleet profile"
    if camera in thresholds:
        return f"camera {camera!r}: using its own profile (threshold {thresholds[camera]:.3f})"
    known = ", ".join(sorted(thresholds)) or "none"
    return f"camera {camera!r} has no profile in this model (profiles: {known}): using the fleet profile"


def rates_by_source(
    frames: Mapping[str, int], flagged: Mapping[str, int], min_frames: int = MIN_FRAMES_FOR_RATE
) -> dict[str, float]:
    """Per source of at least `min_frames` scored frames, the share of them above the threshold."""
    return {s: flagged.get(s, 0) / n for s, n in frames.items() if n >= min_frames}


def far_above_target(rates: Mapping[str, float], target: float) -> list[str]:
    """The sources (or time blocks) flagged at ten times the profile's target rate or more, and at least 10%.

    Anomalies come in seconds; a source flagged that much is more likely footage the profile does not
    describe than a string of anomalies. On real footage a camera calibrated on two waits (in an alley, at a
    light) and two seconds of driving flagged the driving 100% when held out, and the 1% threshold then
    landed among those scores, 11x the fleet's; the fleet profile flagged every frame of a camera the
    networks never saw (benchmarks/fleet_eval.py).
    """
    return [name for name, rate in rates.items() if rate >= max(10 * target, 0.10)]


def short_names(sources: Collection[str]) -> dict[str, str]:
    """Each source by its file name, or by as many of its last path parts as tell it from the others (two
    `drive.mp4` in different folders read `van7/drive.mp4` and `van9/drive.mp4`)."""
    parts = {s: Path(s).parts or (s,) for s in sources}
    depth = dict.fromkeys(sources, 1)
    while True:
        names = {s: str(Path(*parts[s][-depth[s] :])) for s in sources}
        clashing = [s for s in sources if list(names.values()).count(names[s]) > 1 and depth[s] < len(parts[s])]
        if not clashing:
            return names
        for s in clashing:
            depth[s] += 1


def unlike_footage_warning(rates: Mapping[str, float], target: float, profile: str, listed: int = 5) -> str | None:
    """A line for the sources flagged far above the target (`far_above_target`) by `profile`, with what to do
    if they are normal driving; None when there are none. `rates`: each source's share of frames flagged."""
    far = sorted(far_above_target(rates, target), key=lambda s: -rates[s])
    if not far:
        return None
    names = short_names(far[:listed])
    shown = ", ".join(f"{names[s]} {rates[s]:.0%}" for s in far[:listed])
    more = f" and {len(far) - listed} more" if len(far) > listed else ""
    if profile == FLEET:
        unlike = "the drives the model was trained on (a camera it has not seen?)"
        fix = (
            "if it is a camera's normal driving, give that camera a profile (anomaly calibrate MODEL FOOTAGE "
            "--camera NAME --out MODEL) and score with --camera NAME"
        )
    else:
        unlike = f"what the profile of camera {profile!r} was calibrated on"
        fix = (
            f"if it is normal driving, calibrate that profile again with footage like it among the sources "
            f"(anomaly calibrate MODEL FOOTAGE --camera {profile} --out MODEL)"
        )
    return (
        f"warning: frames above the threshold, which was set for {target:.1%} of normal driving: {shown}{more}. "
        f"Footage unlike {unlike}, or long anomalies; {fix}"
    )
