"""Camera profiles by name: the fleet profile's name, and the line that tells a user which profile scores a camera.

Torch-free, shared by `anomaly.detector.Detector` and `anomaly.exported.ExportedDetector`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

FLEET = "fleet"  # the profile from training; a camera without a profile of its own is scored with it


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
