"""Anomaly injectors for dashcam frames, synthetic or real.

Every injector works on any BGR uint8 frame (HxWx3) and uses only relative geometry: sizes are
fractions of the frame, and where the road is comes from the event's `anchor` (a point on the road
a few metres ahead) and `horizon` (the horizon row), so the same events can be injected into real
footage whose road sits elsewhere. All parameters (shape, colour, position...) are drawn from the
event's seed, and per-frame randomness from (seed, frame index), so an event renders identically
every time. The event's progress (0 at its first frame, 1 at its last) drives the animation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

KINDS = ("obstacle", "pedestrian", "lens_mud", "glare", "sensor_fault", "fog", "night")

# Physical order for overlapping events: things in the scene, then the atmosphere and light, then
# the lens, then the sensor/encoder (a torn frame tears the mud too).
APPLY_ORDER = ("obstacle", "pedestrian", "fog", "night", "glare", "lens_mud", "sensor_fault")

OBSTACLE_SHAPES = ("box", "tyre", "debris", "animal")

# No "frozen frame" mode on purpose: a repeated frame is a perfectly normal-looking image, so a model
# that scores frames one at a time cannot see it; detecting it needs a temporal check (frame diffs).
SENSOR_FAULT_MODES = ("tear", "blocks", "black")

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class InjectedAnomaly:
    """One injected anomaly over frames [start_frame, end_frame) of a clip; its look comes from `seed`.

    Ends exclusive, like a range (a detected `anomaly.events.Event` and a labeled `Stretch` end inclusive).
    """

    kind: str
    start_frame: int
    end_frame: int  # exclusive
    seed: int
    anchor: tuple[float, float] = (0.5, 0.75)  # (x, y) relative: the road ahead, a few metres in front
    horizon: float = 0.45  # relative row of the horizon: fog depth and the night sky start there

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown anomaly kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not 0 <= self.start_frame < self.end_frame:
            raise ValueError(f"bad frame range [{self.start_frame}, {self.end_frame})")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")

    def covers(self, frame_index: int) -> bool:
        return self.start_frame <= frame_index < self.end_frame

    def progress(self, frame_index: int) -> float:
        """0.0 on the first frame of the event, 1.0 on its last."""
        span = max(1, self.end_frame - self.start_frame - 1)
        return float(min(1.0, max(0.0, (frame_index - self.start_frame) / span)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["anchor"] = list(self.anchor)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InjectedAnomaly:
        d = dict(d)
        if "anchor" in d:
            d["anchor"] = tuple(d["anchor"])
        return cls(**d)


def apply_event(frame: np.ndarray, event: InjectedAnomaly, frame_index: int) -> np.ndarray:
    """A new frame with `event` drawn on it (an unchanged copy outside the event's frames)."""
    _check_frame(frame)
    injector = _INJECTORS.get(event.kind)
    if injector is None:
        raise ValueError(f"unknown anomaly kind {event.kind!r}")
    if not event.covers(frame_index):
        return frame.copy()
    out = injector(frame, event, frame_index, event.progress(frame_index))
    assert out is not frame and out.shape == frame.shape and out.dtype == np.uint8
    return out


def apply_events(frame: np.ndarray, events: Sequence[InjectedAnomaly], frame_index: int) -> np.ndarray:
    """Apply every event covering `frame_index`, in physical order (scene, atmosphere, lens, sensor)."""
    active = sorted((e for e in events if e.covers(frame_index)), key=lambda e: APPLY_ORDER.index(e.kind))
    out = frame.copy()
    for event in active:
        out = apply_event(out, event, frame_index)
    return out


def frame_kinds(events: Sequence[InjectedAnomaly], n_frames: int) -> list[str]:
    """Per-frame kind ('' for normal frames; overlapping kinds joined with '+'), for label files."""
    kinds: list[list[str]] = [[] for _ in range(n_frames)]
    for event in events:
        for i in range(max(0, event.start_frame), min(n_frames, event.end_frame)):
            kinds[i].append(event.kind)
    return ["+".join(k) for k in kinds]


# ----------------------------------------------------------------------------------------- helpers


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a BGR uint8 HxWx3 frame, got {getattr(frame, 'shape', type(frame))}")
    if frame.shape[0] < 16 or frame.shape[1] < 16:
        raise ValueError(f"frame too small: {frame.shape}")


def _rng(event: InjectedAnomaly, *salt: int) -> np.random.Generator:
    """Event-level (no salt) or per-frame (salt = frame index, ...) random numbers."""
    return np.random.default_rng([event.seed, *salt])


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8)


def _composite(dst: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    """Alpha-blend `patch` (h, w, 3) with `alpha` (h, w) in 0..1 into float `dst` at (x0, y0), clipped."""
    h, w = alpha.shape
    H, W = dst.shape[:2]
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if xa >= xb or ya >= yb:
        return
    a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0, None]
    p = patch[ya - y0 : yb - y0, xa - x0 : xb - x0]
    roi = dst[ya:yb, xa:xb]
    roi[:] = roi * (1.0 - a) + p * a


def _local_light(frame: np.ndarray, x: float, y: float, radius: float) -> float:
    """How bright the scene is around (x, y), relative to a sunny road: objects pasted there follow it."""
    H, W = frame.shape[:2]
    r = max(4, int(radius))
    xi, yi = int(np.clip(x, 0, W - 1)), int(np.clip(y, 0, H - 1))
    patch = frame[max(0, yi - r) : yi + r, max(0, xi - 2 * r) : xi + 2 * r]
    return float(np.clip(patch.mean() / 110.0, 0.35, 1.25))


def _shade(colour: Sequence[float], k: float) -> Colour:
    return (float(colour[0]) * k, float(colour[1]) * k, float(colour[2]) * k)


class _Sprite:
    """A small BGR canvas with coverage, drawn in unit coordinates (u across, v down, both 0..1)."""

    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = max(2, width), max(2, height)
        self.bgr = np.zeros((self.h, self.w, 3), np.float32)
        self.alpha = np.zeros((self.h, self.w), np.float32)

    def _pts(self, uv: Sequence[tuple[float, float]]) -> np.ndarray:
        return np.array([[(u * (self.w - 1)) * 16, (v * (self.h - 1)) * 16] for u, v in uv], np.int32)

    def poly(self, uv: Sequence[tuple[float, float]], colour: Sequence[float]) -> None:
        pts = [self._pts(uv)]
        cv2.fillPoly(self.bgr, pts, tuple(map(float, colour)), cv2.LINE_AA, shift=4)
        cv2.fillPoly(self.alpha, pts, 1.0, cv2.LINE_AA, shift=4)

    def ellipse(
        self, c: tuple[float, float], axes: tuple[float, float], colour: Sequence[float], angle: float = 0
    ) -> None:
        centre = tuple(int(v) for v in self._pts([c])[0])
        ax = (max(1, int(axes[0] * (self.w - 1) * 16)), max(1, int(axes[1] * (self.h - 1) * 16)))
        cv2.ellipse(self.bgr, centre, ax, angle, 0, 360, tuple(map(float, colour)), -1, cv2.LINE_AA, shift=4)
        cv2.ellipse(self.alpha, centre, ax, angle, 0, 360, 1.0, -1, cv2.LINE_AA, shift=4)

    def hole(self, c: tuple[float, float], axes: tuple[float, float]) -> None:
        """Make an elliptic hole (the background shows through)."""
        centre = tuple(int(v) for v in self._pts([c])[0])
        ax = (max(1, int(axes[0] * (self.w - 1) * 16)), max(1, int(axes[1] * (self.h - 1) * 16)))
        cv2.ellipse(self.alpha, centre, ax, 0, 0, 360, 0.0, -1, cv2.LINE_AA, shift=4)

    def line(self, a: tuple[float, float], b: tuple[float, float], colour: Sequence[float], width: float) -> None:
        """A thick line; `width` is a fraction of the sprite height."""
        p, q = self._pts([a, b])
        t = max(1, int(round(width * self.h)))
        cv2.line(self.bgr, tuple(map(int, p)), tuple(map(int, q)), tuple(map(float, colour)), t, cv2.LINE_AA, 4)
        cv2.line(self.alpha, tuple(map(int, p)), tuple(map(int, q)), 1.0, t, cv2.LINE_AA, 4)

    def coverage(self) -> float:
        return float(np.clip(self.alpha, 0, 1).mean())

    def cast_shadow(self, dst: np.ndarray, x_centre: float, y_bottom: float, strength: float) -> None:
        """A soft contact shadow on float `dst`: the silhouette squashed flat onto the road at the base."""
        sh = max(2, self.h // 6)
        flat = np.clip(cv2.resize(np.clip(self.alpha, 0, 1), (self.w, sh), interpolation=cv2.INTER_AREA) * 2.5, 0, 1)
        pad = sh
        m = np.zeros((sh + 2 * pad, self.w + 2 * pad), np.float32)
        m[pad : pad + sh, pad : pad + self.w] = flat
        m = cv2.GaussianBlur(m, (0, 0), max(0.8, sh * 0.35)) * strength
        x0, y0 = int(round(x_centre - self.w / 2)) - pad, int(round(y_bottom - 0.7 * sh)) - pad
        _composite(dst, np.zeros((*m.shape, 3), np.float32), m, x0, y0)

    def paste(self, dst: np.ndarray, x_centre: float, y_bottom: float, rng: np.random.Generator) -> None:
        """Composite onto float `dst` with the sprite's bottom-centre at (x_centre, y_bottom), with grain."""
        grain = rng.normal(0.0, 2.0, self.bgr.shape).astype(np.float32)
        alpha = np.clip(self.alpha, 0, 1)
        _composite(dst, self.bgr + grain, alpha, int(round(x_centre - self.w / 2)), int(round(y_bottom - self.h)))


def _size_for_area(draw: Callable[[_Sprite], None], aspect: float, area_px: float) -> tuple[int, int]:
    """Sprite (width, height) so that the drawn shape covers about `area_px` pixels."""
    ref = _Sprite(int(round(120 * aspect)), 120)
    draw(ref)
    box = area_px / max(ref.coverage(), 0.05)
    h = math.sqrt(box / aspect)
    return max(3, int(round(h * aspect))), max(3, int(round(h)))


# ---------------------------------------------------------------------------------------- obstacle


def _draw_box(s: _Sprite, c: Colour, rng_vals: np.ndarray) -> None:
    d = 0.18 + 0.08 * rng_vals[0]  # depth of the top/side faces
    s.poly([(0, d), (1 - d, d), (1 - d, 1), (0, 1)], c)  # front
    s.poly([(0, d), (d, 0), (1, 0), (1 - d, d)], _shade(c, 1.25))  # top, lit
    s.poly([(1 - d, d), (1, 0), (1, 1 - d), (1 - d, 1)], _shade(c, 0.7))  # side
    tape = (140 + 75 * rng_vals[1],) * 3 if rng_vals[2] > 0.4 else _shade(c, 0.8)
    m = (1 - d) / 2
    s.poly([(m - 0.05, d), (m + d - 0.05, 0), (m + d + 0.05, 0), (m + 0.05, d)], _shade(tape, 1.2))
    s.poly([(m - 0.05, d), (m + 0.05, d), (m + 0.05, d + 0.3), (m - 0.05, d + 0.3)], tape)


def _draw_tyre(s: _Sprite, c: Colour, rng_vals: np.ndarray) -> None:
    rubber = _shade((30, 30, 33), 0.8 + 0.4 * rng_vals[0])
    if rng_vals[1] < 0.5:  # standing, seen side-on
        s.ellipse((0.5, 0.5), (0.5, 0.5), rubber)
        s.ellipse((0.5, 0.5), (0.3, 0.3), _shade(c, 0.6))
        s.ellipse((0.5, 0.5), (0.24, 0.24), (150, 150, 155) if rng_vals[2] > 0.5 else (70, 70, 75))
        s.ellipse((0.5, 0.5), (0.07, 0.07), (40, 40, 42))
        for k in range(5):
            a = 2 * math.pi * (k / 5 + rng_vals[3])
            s.ellipse((0.5 + 0.15 * math.cos(a), 0.5 + 0.15 * math.sin(a)), (0.025, 0.025), (60, 60, 60))
    else:  # lying flat: a flattened ring, the road shows through the middle
        s.ellipse((0.5, 0.62), (0.5, 0.38), _shade(rubber, 0.7))
        s.ellipse((0.5, 0.45), (0.5, 0.38), rubber)
        s.ellipse((0.5, 0.45), (0.3, 0.22), _shade(rubber, 0.55))
        s.hole((0.5, 0.41), (0.27, 0.17))


def _draw_debris(s: _Sprite, c: Colour, rng_vals: np.ndarray) -> None:
    r = np.random.default_rng(int(rng_vals[0] * 1e9))
    for _ in range(int(3 + r.integers(0, 3))):  # flat pieces lying in a pile
        cu, cv = r.uniform(0.25, 0.75), r.uniform(0.45, 0.7)
        n = int(r.integers(4, 8))
        ang = np.sort(r.uniform(0, 2 * math.pi, n))
        rad = r.uniform(0.15, 0.3, n)
        pts = [(cu + rr * math.cos(a), cv + rr * math.sin(a) * 1.1) for a, rr in zip(ang, rad, strict=True)]
        s.poly([(float(np.clip(u, 0, 1)), float(np.clip(v, 0, 1))) for u, v in pts], _shade(c, r.uniform(0.7, 1.2)))
    for _ in range(int(r.integers(1, 4))):  # sticks / bars
        a = (r.uniform(0.0, 0.3), r.uniform(0.35, 0.95))
        b = (r.uniform(0.7, 1.0), r.uniform(0.35, 0.95))
        s.line(a, b, _shade(c, r.uniform(0.5, 0.9)), 0.08)


def _draw_animal(s: _Sprite, c: Colour, rng_vals: np.ndarray) -> None:
    belly = _shade(c, 1.35)
    legs = _shade(c, 0.8)
    for u in (0.22, 0.3, 0.6, 0.68):  # legs, far pair darker
        s.line((u, 0.5), (u + 0.02 * (rng_vals[0] - 0.5), 0.97), legs if u in (0.3, 0.68) else _shade(c, 0.6), 0.07)
    s.ellipse((0.45, 0.42), (0.3, 0.17), c)
    s.ellipse((0.45, 0.5), (0.22, 0.07), belly)
    s.poly([(0.66, 0.32), (0.8, 0.12), (0.88, 0.18), (0.74, 0.45)], c)  # neck
    s.ellipse((0.87, 0.14), (0.09, 0.07), c, angle=20)  # head
    s.ellipse((0.96, 0.19), (0.04, 0.03), _shade(c, 0.5))  # snout
    s.poly([(0.82, 0.08), (0.84, 0.0), (0.87, 0.07)], _shade(c, 0.8))  # ear
    s.line((0.16, 0.35), (0.05, 0.55 + 0.2 * rng_vals[1]), _shade(c, 0.9), 0.04)  # tail


_OBSTACLE_DRAW = {"box": _draw_box, "tyre": _draw_tyre, "debris": _draw_debris, "animal": _draw_animal}
_OBSTACLE_ASPECT = {"box": (1.1, 1.6), "tyre": (0.95, 1.05), "debris": (1.8, 2.6), "animal": (1.25, 1.5)}
_OBSTACLE_COLOURS = {
    "box": [(70, 120, 160), (60, 105, 140), (150, 110, 60), (200, 205, 210), (60, 140, 60), (40, 40, 150)],
    "tyre": [(60, 60, 65), (90, 90, 95)],
    "debris": [(40, 70, 110), (150, 150, 155), (35, 70, 120), (30, 30, 32), (150, 90, 40), (120, 140, 150)],
    "animal": [(40, 75, 115), (60, 90, 120), (70, 70, 75), (30, 40, 60), (110, 130, 150)],
}


def _obstacle(frame: np.ndarray, ev: InjectedAnomaly, i: int, p: float) -> np.ndarray:
    """Something lying on the road ahead (1-3% of the frame), slowly getting closer (larger, lower)."""
    H, W = frame.shape[:2]
    r = _rng(ev)
    shape = OBSTACLE_SHAPES[int(r.integers(len(OBSTACLE_SHAPES)))]
    palette = _OBSTACLE_COLOURS[shape]
    colour = _shade(palette[int(r.integers(len(palette)))], r.uniform(0.85, 1.15))
    aspect = r.uniform(*_OBSTACLE_ASPECT[shape])
    vals = r.uniform(0, 1, 4)
    area0, growth = r.uniform(0.010, 0.015), r.uniform(0.35, 0.8)
    dx, y_start = r.uniform(-0.05, 0.05), r.uniform(-0.035, -0.015)
    flip = r.uniform() < 0.5

    def draw(s: _Sprite) -> None:
        _OBSTACLE_DRAW[shape](s, colour, vals)

    area = area0 * (1 + growth * p) * H * W
    w, h = _size_for_area(draw, aspect, area)
    sprite = _Sprite(w, h)
    draw(sprite)
    if flip:
        sprite.bgr, sprite.alpha = sprite.bgr[:, ::-1], sprite.alpha[:, ::-1]
    x = (ev.anchor[0] + dx) * W
    y = (ev.anchor[1] + y_start + 0.05 * p) * H
    light = _local_light(frame, x, y, h)
    sprite.bgr *= light
    out = frame.astype(np.float32)
    sprite.cast_shadow(out, x, y, 0.6)
    sprite.paste(out, x, y, _rng(ev, i))
    return _to_u8(out)


# -------------------------------------------------------------------------------------- pedestrian

_SKIN = [(80, 110, 160), (100, 140, 190), (130, 170, 215), (60, 80, 115), (110, 150, 200)]
_SHIRTS = [(40, 40, 190), (180, 120, 40), (230, 230, 230), (40, 40, 40), (60, 160, 60), (40, 170, 220), (140, 60, 120)]
_TROUSERS = [(70, 40, 30), (30, 30, 30), (110, 140, 160), (80, 80, 80), (120, 90, 60)]


def _draw_walker(s: _Sprite, phase: float, look: dict[str, Any]) -> None:
    """Side view of a walking person; `phase` (radians) drives the gait. Figure height = sprite height."""
    cx = 0.5
    hip, shoulder = (cx, 0.52), (cx, 0.2)
    leg, arm = 0.48, 0.36
    k = look["stride"]

    def limb(root: tuple[float, float], length: float, a1: float, a2: float) -> list[tuple[float, float]]:
        s_ = s.h / s.w  # unit u per unit v
        mid = (root[0] + math.sin(a1) * length / 2 * s_, root[1] + math.cos(a1) * length / 2)
        end = (mid[0] + math.sin(a2) * length / 2 * s_, mid[1] + math.cos(a2) * length / 2)
        return [root, mid, end]

    for side, shade in ((1, 0.7), (-1, 1.0)):  # far limbs first, darker
        sw = side * math.sin(phase)
        thigh = 0.45 * k * sw
        knee = thigh - 0.5 * k * max(0.0, -side * math.cos(phase))
        r, m, e = limb(hip, leg, thigh, knee)
        s.line(r, m, _shade(look["trousers"], shade), 0.085)
        s.line(m, e, _shade(look["trousers"], shade), 0.075)
        s.line(e, (e[0] + look["dir"] * 0.06, e[1]), _shade((30, 30, 30), shade), 0.045)  # foot
        if side == 1:
            a = -0.5 * k * sw
            r, m, e = limb(shoulder, arm, a, a + 0.25)
            s.line(r, m, _shade(look["shirt"], shade), 0.065)
            s.line(m, e, _shade(look["skin"], shade), 0.055)
    s.poly([(cx - 0.13, 0.18), (cx + 0.13, 0.18), (cx + 0.12, 0.55), (cx - 0.12, 0.55)], look["shirt"])  # torso
    if look["bag"]:
        d = look["dir"]
        s.poly(
            [(cx - 0.24 * d, 0.21), (cx - 0.12 * d, 0.21), (cx - 0.12 * d, 0.42), (cx - 0.24 * d, 0.42)],
            look["bag_colour"],
        )
    s.ellipse((cx + 0.01 * look["dir"], 0.085), (0.105, 0.068), look["skin"])  # head
    s.ellipse((cx - 0.02 * look["dir"], 0.06), (0.105, 0.045), look["hair"])
    a = 0.5 * k * math.sin(phase)
    r, m, e = limb(shoulder, arm, a, a + 0.25)  # near arm
    s.line(r, m, look["shirt"], 0.07)
    s.line(m, e, look["skin"], 0.055)


def _pedestrian(frame: np.ndarray, ev: InjectedAnomaly, i: int, p: float) -> np.ndarray:
    """A person walking across the road ahead (about 1-3% of the frame), legs and arms swinging."""
    H, W = frame.shape[:2]
    r = _rng(ev)
    direction = 1 if r.uniform() < 0.5 else -1
    look = {
        "skin": _SKIN[int(r.integers(len(_SKIN)))],
        "shirt": _shade(_SHIRTS[int(r.integers(len(_SHIRTS)))], r.uniform(0.8, 1.1)),
        "trousers": _TROUSERS[int(r.integers(len(_TROUSERS)))],
        "hair": _shade((25, 35, 50), r.uniform(0.5, 2.5)),
        "bag": bool(r.uniform() < 0.4),
        "bag_colour": _shade(_TROUSERS[int(r.integers(len(_TROUSERS)))], 0.8),
        "stride": r.uniform(0.8, 1.1),
        "dir": direction,
    }
    area = r.uniform(0.011, 0.02) * H * W
    span, dy = r.uniform(0.35, 0.6), r.uniform(-0.06, 0.0)
    steps = r.uniform(4.0, 6.0) * max(1.0, (ev.end_frame - ev.start_frame) / 45)  # strides over the crossing
    phase = 2 * math.pi * steps * p + r.uniform(0, 2 * math.pi)

    w, h = _size_for_area(lambda s: _draw_walker(s, 0.0, look), 0.6, area)
    sprite = _Sprite(w, h)
    _draw_walker(sprite, phase, look)
    x = (ev.anchor[0] + direction * (p - 0.5) * span) * W
    y = (ev.anchor[1] + dy) * H
    sprite.bgr *= _local_light(frame, x, y - h / 2, h / 2)
    out = frame.astype(np.float32)
    sprite.cast_shadow(out, x, y, 0.45)
    sprite.paste(out, x, y, _rng(ev, i))
    return _to_u8(out)


# ---------------------------------------------------------------------------------------- lens mud


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in 0..1 (bicubic upsampling of a coarse random grid)."""
    gh, gw = max(2, cells * h // max(h, w) + 1), max(2, cells * w // max(h, w) + 1)
    grid = rng.uniform(0, 1, (gh, gw)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _mud_mask(seed: int, h: int, w: int, scale: float) -> np.ndarray:
    r = np.random.default_rng([seed, 11])
    m = np.zeros((h, w), np.float32)
    for _ in range(int(r.integers(1, 4))):
        cx, cy = r.uniform(0.1, 0.9) * w, r.uniform(0.25, 0.95) * h
        rad = r.uniform(0.07, 0.14) * w * scale
        for _ in range(int(r.integers(3, 7))):  # a lump made of overlapping smears
            ox, oy = r.normal(0, rad * 0.5, 2)
            ax = (int(rad * r.uniform(0.4, 1.0)), int(rad * r.uniform(0.2, 0.55)))
            cv2.ellipse(m, (int(cx + ox), int(cy + oy)), ax, r.uniform(-40, 40), 0, 360, 1.0, -1, cv2.LINE_AA)
        for _ in range(int(r.integers(4, 14))):  # splatter droplets
            d = r.normal(0, rad * 1.1, 2)
            cv2.circle(m, (int(cx + d[0]), int(cy + d[1])), max(1, int(rad * r.uniform(0.05, 0.15))), 1.0, -1)
        for _ in range(int(r.integers(0, 3))):  # drips running down
            x0 = cx + r.normal(0, rad * 0.4)
            cv2.line(
                m,
                (int(x0), int(cy)),
                (int(x0 + r.normal(0, 4)), int(cy + rad * r.uniform(0.8, 1.6))),
                1.0,
                max(1, int(rad * 0.08)),
            )
    m = cv2.GaussianBlur(m, (0, 0), max(1.0, 0.012 * w))
    return m * (0.55 + 0.45 * _smooth_noise(r, h, w, 12))  # uneven thickness


@functools.lru_cache(maxsize=8)
def _mud_layer(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha HxW, colour HxWx3) of the mud, sized so 5-20% of the frame is covered."""
    r = np.random.default_rng([seed, 10])
    target, opacity = r.uniform(0.07, 0.16), r.uniform(0.75, 0.95)
    sw = 320
    sh = max(16, round(sw * h / w))
    scale = 1.0
    for _ in range(4):  # rescale the blobs towards the target coverage
        m = _mud_mask(seed, sh, sw, scale)
        cov = float((m > 0.25).mean())
        if abs(cov - target) < 0.015:
            break
        scale *= float(np.clip(math.sqrt(target / max(cov, 1e-3)), 0.5, 2.0))
    alpha = np.clip(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) * 1.7, 0, 1) * opacity
    base = np.array([r.uniform(18, 30), r.uniform(34, 48), r.uniform(50, 72)], np.float32)
    tex = 0.8 + 0.4 * cv2.resize(_smooth_noise(r, sh, sw, 40), (w, h))
    colour = base[None, None, :] * tex[..., None]
    return alpha.astype(np.float32), colour.astype(np.float32)


def _lens_mud(frame: np.ndarray, ev: InjectedAnomaly, i: int, p: float) -> np.ndarray:
    """Dark-brown blurred smears stuck on the lens: fixed on screen, the scene behind them is blurred."""
    H, W = frame.shape[:2]
    alpha, colour = _mud_layer(ev.seed, H, W)
    f = frame.astype(np.float32)
    blurred = cv2.GaussianBlur(f, (0, 0), 0.015 * W)
    a_blur = np.minimum(1.0, alpha * 2.0)[..., None]
    out = f * (1 - a_blur) + blurred * a_blur
    a = alpha[..., None]
    return _to_u8(out * (1 - a) + colour * a)


# ------------------------------------------------------------------------------------------- glare


@functools.lru_cache(maxsize=8)
def _glare_layer(seed: int, h: int, w: int) -> tuple[np.ndarray, dict[str, float]]:
    """Static glare light (bloom + starburst + lens ghosts) in 0..~1.5, HxWx3, and flicker params."""
    r = np.random.default_rng([seed, 20])
    sx, sy = r.uniform(0.15, 0.85) * w, r.uniform(-0.05, 0.3) * h
    tint = np.array([r.uniform(0.75, 0.9), r.uniform(0.9, 1.0), 1.0], np.float32)  # warm white
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.sqrt((xx - sx) ** 2 + (yy - sy) ** 2) / math.hypot(w, h)
    core, halo = r.uniform(0.04, 0.07), r.uniform(0.2, 0.35)
    light = 1.6 * np.exp(-((d / core) ** 2)) + 0.55 * np.exp(-d / halo)
    streaks = np.zeros((h, w), np.float32)
    n = int(r.integers(4, 9))
    a0 = r.uniform(0, math.pi)
    for k in range(n):
        a = a0 + math.pi * k / n + r.normal(0, 0.05)
        length = r.uniform(0.3, 0.6) * w
        p1 = (int(sx - math.cos(a) * length), int(sy - math.sin(a) * length))
        p2 = (int(sx + math.cos(a) * length), int(sy + math.sin(a) * length))
        cv2.line(streaks, p1, p2, r.uniform(0.3, 0.6), max(1, int(0.004 * w)), cv2.LINE_AA)
    streaks = cv2.GaussianBlur(streaks, (0, 0), 0.003 * w + 0.5) * np.exp(-d / 0.25)
    total = (light + streaks)[..., None] * tint
    ghosts = np.zeros((h, w, 3), np.float32)
    cx, cy = w / 2, h / 2
    for _ in range(int(r.integers(3, 6))):  # ghosts on the line through the image centre
        t = r.uniform(-1.2, -0.2)
        g = (int(cx + (sx - cx) * t), int(cy + (sy - cy) * t))
        hue = np.array([r.uniform(0.4, 1), r.uniform(0.4, 1), r.uniform(0.4, 1)]) * r.uniform(0.1, 0.25)
        cv2.circle(ghosts, g, int(r.uniform(0.02, 0.07) * w), tuple(map(float, hue)), -1, cv2.LINE_AA)
    ghosts = cv2.GaussianBlur(ghosts, (0, 0), 0.004 * w + 0.5)
    params = {
        "exposure": r.uniform(0.35, 0.7),
        "wash": r.uniform(0.15, 0.3),
        "freq": r.uniform(0.05, 0.15),
        "phase": r.uniform(0, 2 * math.pi),
        "jitter": r.uniform(0.05, 0.15),
    }
    return (total + ghosts).astype(np.float32), params


def _glare(frame: np.ndarray, ev: InjectedAnomaly, i: int, p: float) -> np.ndarray:
    """Sun glare: over-exposure, washed-out colours, a bloom with streaks and ghosts, flickering."""
    H, W = frame.shape[:2]
    light, q = _glare_layer(ev.seed, H, W)
    ramp = min(1.0, 0.6 + 2.0 * p)  # the sun comes out from behind something
    k = ramp * (0.82 + 0.18 * math.sin(2 * math.pi * q["freq"] * (i - ev.start_frame) + q["phase"]))
    k = float(np.clip(k + _rng(ev, i).normal(0, q["jitter"]), 0.45, 1.1))
    f = frame.astype(np.float32)
    bright = cv2.GaussianBlur(np.maximum(f - 170, 0), (0, 0), 0.02 * W)  # highlights bleed
    out = f * (1 + q["exposure"] * k) + 1.5 * k * bright
    wash = q["wash"] * k
    out = out * (1 - wash) + 255 * wash
    return _to_u8(out + 255 * k * light)


# ------------------------------------------------------------------------------------ sensor fault


def _tear(frame: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Bands of rows shifted sideways (a torn frame), one band sometimes smeared or off-colour."""
    H, W = frame.shape[:2]
    out = frame.copy()
    cuts = np.sort(r.choice(np.arange(1, H), size=int(r.integers(3, 7)), replace=False))
    bands = list(zip(np.r_[0, cuts], np.r_[cuts, H], strict=True))
    big = int(r.integers(len(bands)))
    for k, (y0, y1) in enumerate(bands):
        if k != big and r.uniform() < 0.35:
            continue
        shift = int(r.uniform(0.08, 0.35) * W) * (1 if r.uniform() < 0.5 else -1)
        out[y0:y1] = np.roll(frame[y0:y1], shift, axis=1)
        if r.uniform() < 0.25:
            out[y0:y1] = out[y0][None]  # a row smeared down
        elif r.uniform() < 0.25:
            out[y0:y1] = out[y0:y1][..., list(r.permutation(3))]  # wrong channel order
    return out


def _blocks(frame: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Decoder-style corruption: runs of macroblocks replaced by noise, flat wrong colours or misplaced copies."""
    H, W = frame.shape[:2]
    b = max(8, round(W / 40))
    gh, gw = -(-H // b), -(-W // b)
    n = gh * gw
    types = np.zeros(n, np.int64)
    start = int(r.integers(0, n // 2))
    run = int(r.uniform(0.12, 0.35) * n)
    types[start : start + run] = r.choice([1, 2, 3], size=len(types[start : start + run]), p=[0.3, 0.3, 0.4])
    scatter = r.uniform(size=n) < 0.04
    types[scatter] = r.integers(1, 4, int(scatter.sum()))
    grid = types.reshape(gh, gw).repeat(b, 0).repeat(b, 1)[:H, :W]
    palette = np.array([(0, 200, 0), (200, 0, 200), (128, 128, 128), (0, 120, 0), (255, 255, 0)], np.uint8)
    flat = palette[r.integers(0, len(palette), n)].reshape(gh, gw, 3).repeat(b, 0).repeat(b, 1)[:H, :W]
    cell = max(2, b // 4)  # garbage in small cells, like broken DCT blocks (and cheaper to encode than white noise)
    coarse = r.integers(0, 256, (-(-H // cell), -(-W // cell), 3), dtype=np.uint8)
    noise = coarse.repeat(cell, 0).repeat(cell, 1)[:H, :W]
    moved = np.roll(frame, (int(r.integers(-4, 5)) * b, int(r.integers(-8, 9)) * b), axis=(0, 1))
    out = frame.copy()
    for t, src in ((1, noise), (2, flat), (3, moved)):
        sel = grid == t
        out[sel] = src[sel]
    return out


def _black(frame: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Signal lost: a black frame with a trace of noise."""
    return r.integers(0, 6, frame.shape, dtype=np.uint8)


_FAULTS = {"tear": _tear, "blocks": _blocks, "black": _black}


def sensor_fault_mode(event: InjectedAnomaly) -> str:
    """Which fault an event shows (one mode per event, drawn from its seed)."""
    return SENSOR_FAULT_MODES[int(_rng(event, 30).integers(len(SENSOR_FAULT_MODES)))]


def _sensor_fault(frame: np.ndarray, ev: InjectedAnomaly, i: int, p: float) -> np.ndarray:
    """Torn rows, corrupted blocks or a black frame; the damage pattern changes every few frames."""
    hold = 1 + _rng(ev, 32).integers(0, 3)  # glitches persist 1-3 frames (real ones do; smaller files too)
    return _FAULTS[sensor_fault_mode(ev)](frame, _rng(ev, (i - ev.start_frame) // hold, 31))


# --------------------------------------------------------------------------------------------- fog


@functools.lru_cache(maxsize=8)
def _fog_layer(seed: int, h: int, w: int, horizon: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(transmission per row (h,), drifting patch noise (h, 2w), airlight colour (3,))."""
    r = np.random.default_rng([seed, 40])
    near = r.uniform(0.45, 0.65)  # transmission at the bottom of the image
    rows = (np.arange(h, dtype=np.float32) + 0.5) / h
    v = np.clip((rows - horizon) / max(1e-3, 1 - horizon), 0.06, 1.0)
    t = near ** ((1.0 / v) ** 0.8)  # distance ~ 1/v below the horizon; the sky is all fog
    patches = _smooth_noise(r, h, 2 * w, 10) - 0.5
    grey = r.uniform(195, 225)
    air = np.array([grey + r.uniform(0, 12), grey + r.uniform(0, 6), grey], np.float32)
    return t.astype(np.float32), patches.astype(np.float32), air


def _fog(frame: np.ndarray, ev: InjectedAnomaly, i: int, p: float) -> np.ndarray:
    """Fog: the scene fades to grey-white with distance (strongest at the horizon), drifting patches."""
    H, W = frame.shape[:2]
    t_rows, patches, air = _fog_layer(ev.seed, H, W, round(ev.horizon, 3))
    off = int(p * 0.6 * W)
    density = 0.8 + 0.2 * min(1.0, p / 0.15)
    t = t_rows[:, None] * (1 + 0.5 * patches[:, off : off + W])
    t = 1 - density * (1 - np.clip(t, 0, 1))
    f = cv2.GaussianBlur(frame, (0, 0), 0.002 * W + 0.6).astype(np.float32)
    grey = f.mean(axis=2, keepdims=True)
    f = f + (grey - f) * (1 - t[..., None]) * 0.6  # colours fade first
    return _to_u8(f * t[..., None] + air * (1 - t[..., None]))


# ------------------------------------------------------------------------------------------- night


def _night_lights(ev: InjectedAnomaly, H: int, W: int, p: float) -> np.ndarray:
    """Glowing point lights (other vehicles, street lamps), HxWx3 in ~0..1.5."""
    r = _rng(ev, 50)
    light = np.zeros((H, W, 3), np.float32)
    ax, ay, hz = ev.anchor[0] * W, ev.anchor[1] * H, ev.horizon * H
    unit = min(H, W) / 360
    for _ in range(int(r.integers(1, 4))):  # other vehicles' lamps, placed with road perspective
        depth = r.uniform(0.04, 0.45)  # where the vehicle touches the road: 0 = horizon, 1 = anchor row
        if r.uniform() < 0.4:  # oncoming in the next lane to the left, approaching over the event
            depth, lane, colour = min(0.85, depth + 0.45 * p), -1.0, (0.85, 0.95, 1.0)
        else:  # tail lights of a vehicle ahead, mostly in our lane
            lane, colour = float(r.choice([0, 0, -1, 1])), (0.15, 0.15, 1.0)
        d = (ay - hz) * depth  # rows below the horizon ~ pixels per 1.3 m across at that distance
        x, y = ax + lane * 2.7 * d, hz + d - 0.55 * d
        rad = max(1, int(round(0.08 * d)))
        for dx in (-0.58 * d, 0.58 * d):
            cv2.circle(light, (int(x + dx), int(y)), rad, colour, -1, cv2.LINE_AA)
    for _ in range(int(r.integers(0, 4))):  # street lamps passing outwards
        side = 1 if r.uniform() < 0.5 else -1
        t = (r.uniform(0, 1) + 0.5 * p) % 1.0
        x = ax + side * (0.05 + 0.6 * t**2) * W
        y = hz - (0.05 + 0.3 * t**2) * H
        cv2.circle(light, (int(x), int(y)), max(1, int(unit * (1 + 3 * t))), (0.35, 0.7, 1.0), -1, cv2.LINE_AA)
    return (
        light * 2.0 + cv2.GaussianBlur(light, (0, 0), 4 * unit) * 4.0 + cv2.GaussianBlur(light, (0, 0), 14 * unit) * 3
    )


def _night(frame: np.ndarray, ev: InjectedAnomaly, i: int, p: float) -> np.ndarray:
    """Night: dark and blueish, a headlight cone on the road ahead, glowing lights, more sensor noise."""
    H, W = frame.shape[:2]
    r = _rng(ev)
    gain, gamma, reach = r.uniform(0.1, 0.2), r.uniform(1.3, 1.7), r.uniform(0.55, 0.85)
    f = frame.astype(np.float32) / 255.0
    ambient = gain * f**gamma * np.array([1.35, 1.05, 0.8], np.float32)
    hz, ax, ay = ev.horizon * H, ev.anchor[0] * W, ev.anchor[1] * H
    ys = np.arange(H, dtype=np.float32)[:, None]
    xs = np.arange(W, dtype=np.float32)[None, :]
    v = np.clip((ys - hz) / max(1.0, H - hz), 0, 1)
    centre = W / 2 + (ax - W / 2) * (H - ys) / max(1.0, H - ay)
    half = W * (0.04 + 0.5 * v)
    cone = np.exp(-((np.abs(xs - centre) / half) ** 4)) * np.clip((v - 0.04) / 0.45, 0, 1) ** 1.5
    lit = f * (reach * cone)[..., None] * np.array([0.8, 0.95, 1.0], np.float32)
    sky = np.clip((hz + 0.03 * H - ys) / (0.06 * H), 0, 1)[..., None] * 0.85
    night_sky = np.array([0.16, 0.07, 0.03], np.float32) * (0.4 + 0.6 * np.clip(ys / max(1.0, hz), 0, 1))[..., None]
    out = (ambient + lit) * (1 - sky) + night_sky * sky
    red = (
        (frame[..., 2] >= 190)
        & (frame[..., 2].astype(np.int16) > 2.2 * frame[..., 1])
        & (frame[..., 2].astype(np.int16) > 2.2 * frame[..., 0])
    )
    if red.any():  # tail lights already in the picture glow
        glow = np.where(red[..., None], f, 0).astype(np.float32)
        out += glow * 1.2 + cv2.GaussianBlur(glow, (0, 0), 0.01 * W + 1) * 3
    out += _night_lights(ev, H, W, p)
    out += _rng(ev, i, 51).normal(0, r.uniform(0.008, 0.014), out.shape).astype(np.float32)
    return _to_u8(out * 255)


_INJECTORS: dict[str, Callable[[np.ndarray, InjectedAnomaly, int, float], np.ndarray]] = {
    "obstacle": _obstacle,
    "pedestrian": _pedestrian,
    "lens_mud": _lens_mud,
    "glare": _glare,
    "sensor_fault": _sensor_fault,
    "fog": _fog,
    "night": _night,
}
assert set(_INJECTORS) == set(KINDS) == set(APPLY_ORDER)


def event_variant(event: InjectedAnomaly) -> str:
    """The sub-type an event draws ('box', 'tear', ...), or '' for kinds without variants; for reports."""
    if event.kind == "obstacle":
        return OBSTACLE_SHAPES[int(_rng(event).integers(len(OBSTACLE_SHAPES)))]
    if event.kind == "sensor_fault":
        return sensor_fault_mode(event)
    return ""
