"""Anomalies the fleet benchmark injects into held-out normal frames (its own code, not the product's).

Every injector takes a BGR uint8 frame and a numpy Generator and returns a new frame. They are
written for this benchmark only and share nothing with `synthetic.anomalies` (the demo's
injectors) or with anything the detector is trained on, so a detector cannot have learned them.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Injector = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def small_object(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Debris on the road ahead: a box, tyre or sack 4-7% of the frame wide, with a shadow under it."""
    out = frame.copy()
    h, w = out.shape[:2]
    cx = int(w * rng.uniform(0.38, 0.62))
    cy = int(h * rng.uniform(0.66, 0.82))
    size = max(3, int(w * rng.uniform(0.04, 0.07)))
    shade = rng.choice([rng.uniform(10, 50), rng.uniform(170, 240)])
    colour = np.clip(shade + rng.normal(0, 25, 3), 0, 255)
    shadow = out.copy()
    cv2.ellipse(shadow, (cx, cy + size // 2), (size, max(1, size // 4)), 0, 0, 360, (15, 15, 15), -1)
    out = cv2.addWeighted(shadow, 0.6, out, 0.4, 0)
    shape = rng.integers(3)
    if shape == 0:  # box
        top = cy - int(size * rng.uniform(0.6, 1.0))
        cv2.rectangle(out, (cx - size // 2, top), (cx + size // 2, cy + size // 3), colour.tolist(), -1)
        cv2.rectangle(
            out, (cx - size // 2, top), (cx + size // 2, top + max(1, size // 4)), (colour * 0.7).tolist(), -1
        )
    elif shape == 1:  # tyre
        cv2.ellipse(out, (cx, cy), (size // 2, max(2, size // 3)), 0, 0, 360, (20, 20, 20), -1)
        cv2.ellipse(out, (cx, cy), (max(1, size // 5), max(1, size // 7)), 0, 0, 360, (90, 90, 90), -1)
    else:  # sack or rock: an irregular polygon
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        radii = size * rng.uniform(0.35, 0.6, 7)
        pts = np.stack([cx + radii * np.cos(angles), cy + 0.7 * radii * np.sin(angles)], 1).astype(np.int32)
        cv2.fillPoly(out, [pts], colour.tolist())
    return out


def lens_mud(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One to three brown, soft-edged, partly opaque smears on the lens; what shows through is blurred."""
    h, w = frame.shape[:2]
    mask = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        centre = (int(w * rng.uniform(0.1, 0.9)), int(h * rng.uniform(0.15, 0.9)))
        axes = (int(w * rng.uniform(0.06, 0.13)), int(w * rng.uniform(0.04, 0.1)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    sigma = w * 0.02
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    alpha = (np.clip(mask, 0, 1) * rng.uniform(0.65, 0.95))[..., None]
    mud = np.array([rng.uniform(30, 60), rng.uniform(55, 85), rng.uniform(75, 110)], np.float32)
    grain = rng.normal(0, 8, frame.shape).astype(np.float32)
    blurred = cv2.GaussianBlur(frame, (0, 0), w * 0.015).astype(np.float32)
    out = (1 - alpha) * blurred * (alpha > 0.02) + (1 - alpha) * frame * (alpha <= 0.02) + alpha * (mud + grain)
    return np.clip(out, 0, 255).astype(np.uint8)


def glare(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Low sun or oncoming headlights: a bright radial bloom in the upper part, a streak, washed-out contrast."""
    h, w = frame.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.2, 0.8), h * rng.uniform(0.1, 0.5)
    radius = w * rng.uniform(0.12, 0.25)
    bloom = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
    streak = np.exp(-((yy - cy) ** 2) / (2 * (h * 0.02) ** 2)) * np.exp(-np.abs(xx - cx) / (w * 0.4))
    light = np.clip(bloom + 0.6 * streak, 0, 1)[..., None] * rng.uniform(160, 240)
    tint = np.array([rng.uniform(0.8, 1.0), rng.uniform(0.9, 1.0), 1.0], np.float32)
    out = frame.astype(np.float32) * (1 - 0.25 * light / 255) + light * tint
    return np.clip(out, 0, 255).astype(np.uint8)


def torn_frame(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A damaged frame: horizontal bands shifted sideways, or blocks replaced by garbage or other parts of it."""
    out = frame.copy()
    h, w = out.shape[:2]
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 4))):
            band = int(h * rng.uniform(0.06, 0.18))
            top = int(rng.integers(0, h - band))
            out[top : top + band] = np.roll(out[top : top + band], int(w * rng.uniform(0.1, 0.35)), axis=1)
    else:
        for _ in range(int(rng.integers(2, 5))):
            bh, bw = int(h * rng.uniform(0.08, 0.18)), int(w * rng.uniform(0.08, 0.18))
            y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
            mode = rng.integers(3)
            if mode == 0:  # a block from elsewhere in the frame
                sy, sx = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
                out[y : y + bh, x : x + bw] = frame[sy : sy + bh, sx : sx + bw]
            elif mode == 1:  # decoder garbage: flat grey-green
                out[y : y + bh, x : x + bw] = (int(rng.integers(60, 140)), int(rng.integers(120, 200)), 60)
            else:  # noise
                out[y : y + bh, x : x + bw] = rng.integers(0, 256, (bh, bw, 3), dtype=np.uint8)
    return out


def camera_rolled(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera knocked sideways in its mount: the view rolled 8-20 degrees either way. The frame holds
    nothing beyond its edges, so the rolled view is zoomed just enough (1.24-1.55 times) to leave no
    corner empty: every pixel is real footage, none is made up."""
    h, w = frame.shape[:2]
    angle = float(rng.uniform(8, 20) * rng.choice([-1, 1]))
    a = np.radians(abs(angle))
    zoom = np.cos(a) + (w / h) * np.sin(a)  # the output's corners, turned back, stay inside the frame (w >= h)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, float(zoom))
    return cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def camera_pitched(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera knocked to point down at the road: the lower 35-50% of the view (centred, the frame's
    aspect) fills the frame, so the horizon and the sky are gone and the asphalt is close."""
    h, w = frame.shape[:2]
    keep = float(rng.uniform(0.35, 0.50))
    ch, cw = int(h * keep), int(w * keep)
    x0 = (w - cw) // 2
    return cv2.resize(frame[h - ch :, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)


INJECTORS: dict[str, Injector] = {
    "small_object": small_object,
    "lens_mud": lens_mud,
    "glare": glare,
    "torn_frame": torn_frame,
}

# A camera knocked out of place: measured and printed per kind, but outside the fleet table's "all", which
# keeps the kinds above (and the night clip) so that its figures compare with every earlier run's.
MOUNT_FAULTS: dict[str, Injector] = {
    "camera_rolled": camera_rolled,
    "camera_pitched": camera_pitched,
}
