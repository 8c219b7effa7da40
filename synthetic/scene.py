"""Deterministic generator of dashcam-like clips, normal and with labeled anomalies.

The scene is a small pinhole-camera model of a car driving along a gently curving road: every pixel
of the ground is projected to world coordinates, so the road, lane markings, textures and roadside
props move towards the camera with the car's speed and scale with distance. Each clip is a
different drive (all scene parameters are drawn from the clip's seed) and within a clip everything
keeps changing (travelled distance, curvature, traffic, vibration, sensor noise), so a model cannot
memorise frames. Same seed -> identical frames. Roadside props are drawn in `synthetic.props`; the
sample set built from these clips is `synthetic.sample_set`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from synthetic.anomalies import (
    APPLY_ORDER,
    InjectedAnomaly,
    apply_event,
)
from synthetic.props import BGR, PROP_DRAW, Prop

# ------------------------------------------------------------------------------------ scene params


def _colour(rng: np.random.Generator, base: Sequence[float], spread: float) -> BGR:
    c = np.clip(np.asarray(base, float) + rng.normal(0, spread, 3), 0, 255)
    return (round(float(c[0]), 1), round(float(c[1]), 1), round(float(c[2]), 1))


@dataclass(frozen=True)
class SceneParams:
    """Everything that makes one drive differ from another (lighting, road, scenery, traffic, camera)."""

    hfov_deg: float  # camera horizontal field of view
    cam_height: float  # metres above the road
    horizon: float  # relative row of the horizon
    speed: float  # m/s
    n_lanes: int
    two_way: bool  # lane 0 carries oncoming traffic
    ego_lane: int
    lane_width: float
    shoulder: float  # asphalt beyond the edge lines, metres
    verge: float  # gravel strip beyond the asphalt, metres
    centre_style: str  # two-way roads: "dashed" | "solid" | "double"
    centre_colour: BGR
    dash_length: float
    dash_gap: float
    curve_amp: tuple[float, ...]  # 1/m, one per sinusoid of the curvature profile
    curve_wavelength: tuple[float, ...]  # metres
    curve_phase: tuple[float, ...]
    asphalt: BGR
    grass: BGR
    grass2: BGR  # second grass shade for patches
    verge_colour: BGR
    sky_top: BGR
    sky_horizon: BGR
    haze: float  # aerial perspective at the horizon, 0..1
    clouds: float  # cloud cover, 0..1
    hills: float  # height of the distant skyline, fraction of the image height
    skyline_colour: BGR
    tree_density: float  # per 100 m per side
    conifer_share: float
    bush_density: float
    building_density: float
    pole_spacing: float  # metres; 0 = no poles
    post_spacing: float  # delineator posts; 0 = none
    guardrail: int  # -1 left, 0 none, 1 right
    n_vehicles: int  # same-direction traffic
    oncoming_rate: float  # oncoming vehicles per second (two-way roads)
    brightness: float
    warmth: float  # -1 cool .. 1 warm
    sun_x: float  # relative, may be outside the image
    sun_y: float  # relative, above the horizon
    noise_sigma: float
    vignette: float
    jitter: float  # vertical vibration, pixels at 360 rows
    hood: float  # visible bonnet height, fraction of the image height (0 = none)
    hood_colour: BGR
    seed_offset: float = field(default=0.0)  # start position along the road, metres

    @classmethod
    def sample(cls, rng: np.random.Generator) -> SceneParams:
        """A random but plausible daytime drive."""
        two_way = bool(rng.uniform() < 0.5)
        n_lanes = 2 if two_way else int(rng.integers(2, 4))
        n_curves = 3
        amp = rng.uniform(0.3, 1.0, n_curves) / 1400.0
        warm = float(rng.uniform(-1, 1))
        overcast = float(rng.uniform(0, 1))
        sky_top = np.array([200, 120, 60]) * (1 - overcast) + np.array([185, 175, 165]) * overcast
        sky_hor = np.array([235, 210, 185]) * (1 - overcast) + np.array([215, 212, 208]) * overcast
        grass_base = np.array([55, 120, 85]) * (1 - (dry := rng.uniform(0, 0.7))) + np.array([80, 140, 150]) * dry
        return cls(
            hfov_deg=round(float(rng.uniform(62, 78)), 2),
            cam_height=round(float(rng.uniform(1.2, 1.55)), 3),
            horizon=round(float(rng.uniform(0.40, 0.47)), 4),
            speed=round(float(rng.uniform(15, 30)), 2),
            n_lanes=n_lanes,
            two_way=two_way,
            ego_lane=1 if two_way else int(rng.integers(0, n_lanes)),
            lane_width=round(float(rng.uniform(3.2, 3.8)), 2),
            shoulder=round(float(rng.uniform(0.3, 2.2)), 2),
            verge=round(float(rng.uniform(0.3, 1.5)), 2),
            centre_style=str(rng.choice(["dashed", "solid", "double"])) if two_way else "dashed",
            centre_colour=(40.0, 185.0, 225.0) if two_way and rng.uniform() < 0.5 else (230.0, 230.0, 230.0),
            dash_length=round(float(rng.uniform(2.5, 4.5)), 2),
            dash_gap=round(float(rng.uniform(5.0, 10.0)), 2),
            curve_amp=tuple(round(float(a), 7) for a in amp),
            curve_wavelength=tuple(round(float(w), 1) for w in rng.uniform(250, 1200, n_curves)),
            curve_phase=tuple(round(float(p), 4) for p in rng.uniform(0, 2 * math.pi, n_curves)),
            asphalt=_colour(rng, (np.full(3, rng.uniform(70, 115)) + (4, 2, 0)), 3),
            grass=_colour(rng, grass_base, 8),
            grass2=_colour(rng, grass_base * rng.uniform(0.7, 1.15) + (0, 10, 15), 8),
            verge_colour=_colour(rng, np.array([105, 120, 132]) * rng.uniform(0.8, 1.2), 3),
            sky_top=_colour(rng, sky_top, 8),
            sky_horizon=_colour(rng, sky_hor, 5),
            haze=round(float(rng.uniform(0.25, 0.55)), 3),
            clouds=round(float(rng.uniform(0.0, 0.8)), 3),
            hills=round(float(rng.uniform(0.0, 0.08)), 4),
            skyline_colour=_colour(rng, (120, 130, 110), 12),
            tree_density=round(float(rng.uniform(1.0, 6.0)), 2),
            conifer_share=round(float(rng.uniform(0, 1)), 2),
            bush_density=round(float(rng.uniform(0.5, 4.0)), 2),
            building_density=round(float(rng.uniform(0.0, 1.2)), 2),
            pole_spacing=round(float(rng.choice([0.0, rng.uniform(35, 60)])), 1),
            post_spacing=round(float(rng.choice([0.0, 25.0, 50.0])), 1),
            guardrail=int(rng.choice([-1, 0, 0, 1])),
            n_vehicles=int(rng.integers(1, 6)),
            oncoming_rate=round(float(rng.uniform(0.08, 0.3)), 3) if two_way else 0.0,
            brightness=round(float(rng.uniform(0.88, 1.1)), 3),
            warmth=round(warm, 3),
            sun_x=round(float(rng.uniform(-0.3, 1.3)), 3),
            sun_y=round(float(rng.uniform(-0.4, 0.25)), 3),
            noise_sigma=round(float(rng.uniform(1.2, 2.6)), 2),
            vignette=round(float(rng.uniform(0.05, 0.3)), 3),
            jitter=round(float(rng.uniform(0.2, 1.0)), 2),
            hood=round(float(rng.choice([0.0, rng.uniform(0.04, 0.1)])), 3),
            hood_colour=_colour(rng, rng.choice([(30, 30, 30), (200, 200, 200), (120, 60, 30), (40, 40, 130)]), 10),
            seed_offset=round(float(rng.uniform(0, 20000)), 1),
        )


# -------------------------------------------------------------------------------------- textures


def _periodic_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Tileable smooth noise in about -1..1: a coarse random grid wrapped and upsampled."""
    grid = rng.normal(0, 1, (cells_y, cells_x)).astype(np.float32)
    big = np.tile(grid, (3, 3))
    up = cv2.resize(big, (3 * w, 3 * h), interpolation=cv2.INTER_CUBIC)
    tile = up[h : 2 * h, w : 2 * w]
    return tile / (np.abs(tile).max() + 1e-6)


class _MipTexture:
    """A tileable texture pre-blurred along the road direction, so far rows do not shimmer."""

    LEVELS = 7

    def __init__(self, tex: np.ndarray, texel_u: float, texel_v: float) -> None:
        self.texel_u, self.texel_v = texel_u, texel_v
        self.h, self.w = tex.shape
        self.levels = [tex]
        for level in range(1, self.LEVELS):
            sigma = 0.6 * 2**level
            k = int(sigma * 3) * 2 + 1  # kernel size; the texture wraps, so pad it with itself
            padded = np.pad(tex, ((k, k), (0, 0)), mode="wrap")
            self.levels.append(cv2.GaussianBlur(padded, (1, k), 0, sigmaY=sigma)[k:-k])

    def sample(self, lateral: np.ndarray, along: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        """Texture at world (lateral [rows, cols], along [rows]) metres; footprint = metres per row."""
        mx = (lateral / self.texel_u).astype(np.float32)
        my = np.broadcast_to(np.mod(along / self.texel_v, self.h).astype(np.float32)[:, None], mx.shape)
        level = np.clip(np.log2(np.maximum(footprint / self.texel_v, 1e-6)), 0, self.LEVELS - 1).astype(int)
        out = np.empty(mx.shape, np.float32)
        for k in np.unique(level):
            rows = np.nonzero(level == k)[0]
            a, b = rows[0], rows[-1] + 1
            out[a:b] = cv2.remap(
                self.levels[k], mx[a:b], np.ascontiguousarray(my[a:b]), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
            )
        return out


# ----------------------------------------------------------------------------------- world objects


@dataclass
class _Vehicle:
    """Another road user; `v` in m/s along the road (negative = oncoming)."""

    lane: int
    L: float
    v: float
    kind: str  # "car" | "van" | "truck"
    colour: BGR
    width: float
    height: float
    length: float
    dv: float = 0.0  # current speed difference to the ego car (same-direction traffic)
    brake: bool = False


_CAR_COLOURS = [
    (230, 230, 230),
    (190, 190, 195),
    (40, 40, 40),
    (120, 60, 30),
    (45, 45, 150),
    (150, 150, 150),
    (170, 190, 200),
    (70, 90, 40),
    (40, 30, 90),
    (200, 200, 205),
]


class DashcamScene:
    """One drive. `render()` returns the next clean frame; `finish()` adds the camera's own effects."""

    Z_FAR = 400.0  # metres: ground beyond this is drawn at this distance (hazy anyway)
    Z_PROPS = 260.0  # draw distance for props and vehicles
    MIN_GAP = 15.0  # metres to the vehicle ahead in the ego lane: closer would be an incident, not normal driving
    SOFTNESS = 0.9  # optical blur sigma, pixels at 360 rows

    def __init__(self, params: SceneParams, width: int, height: int, fps: float, rng: np.random.Generator) -> None:
        self.p, self.W, self.H, self.fps, self.rng = params, width, height, fps, rng
        self.f = (width / 2) / math.tan(math.radians(params.hfov_deg) / 2)
        self.cx = width / 2
        self.unit = height / 360
        self.frame_index = 0
        self.s = params.seed_offset
        self.t_phase = rng.uniform(0, 2 * math.pi, 8)
        warm = params.warmth * 0.07
        self.gain = np.array([1 - warm, 1.0, 1 + warm]) * params.brightness
        self._curves = [
            (a, 2 * math.pi / lam, ph)
            for a, lam, ph in zip(params.curve_amp, params.curve_wavelength, params.curve_phase, strict=True)
        ]
        self._set_pose(params.seed_offset, 0.0, params.horizon * height)
        self.road_half = params.n_lanes * params.lane_width / 2 + params.shoulder
        self.lines_half = params.n_lanes * params.lane_width / 2
        self.ground_step = 2 if width >= 480 else 1
        self._build_textures()
        self._build_sky()
        self._build_camera_effects()
        self.props: list[Prop] = []
        self.next_L: dict[str, float] = {}
        self.vehicles: list[_Vehicle] = []
        self._spawn_props()
        self._init_traffic()
        self.anchor: tuple[float, float] = (0.5, 0.75)

    # ---- colours and geometry

    def light(self, c: Sequence[float]) -> BGR:
        """Scene colour under this clip's lighting (brightness and colour temperature)."""
        g = self.gain
        return (min(255.0, c[0] * g[0]), min(255.0, c[1] * g[1]), min(255.0, c[2] * g[2]))

    def _phi(self, s: np.ndarray | float) -> np.ndarray | float:
        """Double integral of the curvature (a sum of sinusoids): the road's lateral drift at along-position s."""
        if isinstance(s, np.ndarray):
            return sum(-a / k**2 * np.sin(k * s + ph) for a, k, ph in self._curves)
        return sum(-a / k**2 * math.sin(k * s + ph) for a, k, ph in self._curves)

    def _theta(self, s: float) -> float:
        """Heading of the road at along-position s (integral of the curvature)."""
        return sum(-a / k * math.cos(k * s + ph) for a, k, ph in self._curves)

    def _set_pose(self, s: float, cam_X: float, y0: float) -> None:
        """Per-frame camera pose; the projection helpers use it."""
        self.s, self.cam_X, self.y0 = s, cam_X, y0
        self._th0, self._ph0 = self._theta(s), self._phi(s)

    def road_offset(self, Z: np.ndarray | float) -> np.ndarray | float:
        """Lateral position (m, + = right) of the road centre line Z metres ahead, relative to the car's axis."""
        return self._phi(self.s + Z) - self._ph0 - Z * self._th0 - self.cam_X

    def lane_centre(self, lane: int) -> float:
        return -self.lines_half + (lane + 0.5) * self.p.lane_width

    def project(self, Z: np.ndarray | float, X: np.ndarray | float, Y: np.ndarray | float = 0.0) -> tuple:
        """Screen (x, y) of the world point Z ahead, X right of the road centre, Y above the road."""
        Z = np.maximum(Z, 0.3) if isinstance(Z, np.ndarray) else max(Z, 0.3)
        x = self.cx + self.f * (X + self.road_offset(Z)) / Z
        y = self.y0 + self.f * (self.p.cam_height - Y) / Z
        return x, y

    def haze_at(self, Z: np.ndarray | float) -> np.ndarray | float:
        if isinstance(Z, np.ndarray):
            return self.p.haze * (1 - np.exp(-Z / 260.0))
        return self.p.haze * (1 - math.exp(-Z / 260.0))

    # ---- one-off builds

    def _build_textures(self) -> None:
        r = self.rng
        grass = 0.6 * _periodic_noise(r, 256, 128, 64, 32) + 0.4 * _periodic_noise(r, 256, 128, 16, 8)
        self.grass_tex = _MipTexture(grass, 0.25, 0.25)
        patches = _periodic_noise(r, 128, 64, 8, 8)
        self.patch_tex = _MipTexture(patches, 1.5, 4.0)
        # road: one lane wide (so tyre tracks repeat per lane), fine grain + patches + wear
        u = (np.arange(64) + 0.5) / 64 * self.p.lane_width - self.p.lane_width / 2
        wear = -0.06 * np.exp(-(((np.abs(u) - 0.85) / 0.3) ** 2)) - 0.03 * np.exp(-((u / 0.5) ** 2))  # tracks, drips
        road = 0.05 * r.normal(0, 1, (512, 64)).astype(np.float32) + 0.05 * _periodic_noise(r, 512, 64, 32, 4)
        road += 0.04 * _periodic_noise(r, 512, 64, 8, 2)
        self._ground_colours = [
            np.asarray(self.light(c), np.float32)
            for c in (self.p.grass, self.p.grass2, self.p.asphalt, self.p.verge_colour)
        ]
        self.road_tex = _MipTexture((road + wear[None, :]).astype(np.float32), self.p.lane_width / 64, 0.08)

    def _build_sky(self) -> None:
        """A periodic panorama of sky, clouds and distant skyline, panned with the car's heading."""
        p, r, W = self.p, self.rng, self.W
        rows = int(math.ceil(p.horizon * self.H)) + 4
        self.pano_w = 4 * W
        yy = np.linspace(0, 1, rows, dtype=np.float32)[:, None, None] ** 0.7
        sky = np.asarray(p.sky_top, np.float32) * (1 - yy) + np.asarray(p.sky_horizon, np.float32) * yy
        sky = np.repeat(sky, self.pano_w, axis=1)
        clouds = (
            _periodic_noise(r, rows, self.pano_w, 4, 24) * 0.6 + _periodic_noise(r, rows, self.pano_w, 10, 80) * 0.4
        )
        cover = np.clip((clouds - (0.6 - p.clouds)) * 2.5, 0, 1) * (1 - 0.7 * yy[..., 0])
        sky = sky * (1 - cover[..., None] * 0.8) + np.float32(238) * cover[..., None] * 0.8
        sun_x = (p.sun_x * W) % self.pano_w
        xs = np.arange(self.pano_w, dtype=np.float32)[None, :]
        dx = np.minimum(np.abs(xs - sun_x), self.pano_w - np.abs(xs - sun_x))
        d = np.sqrt(dx**2 + (np.arange(rows)[:, None] - p.sun_y * self.H) ** 2) / W
        sky = sky + (np.exp(-d / 0.25) * 28)[..., None] * np.array([0.8, 0.95, 1.0], np.float32)
        horizon_row = p.horizon * self.H
        # skyline: hills far away, then a treeline closer in; both reach a little below the horizon
        k = np.arange(self.pano_w) / self.pano_w * 2 * math.pi
        hills = sum(r.uniform(0.2, 1) * np.sin(n * k + r.uniform(0, 6.3)) for n in (2, 3, 5, 9, 13))
        hills = (hills - hills.min()) / (np.ptp(hills) + 1e-6) * p.hills * self.H
        trees = np.abs(_periodic_noise(r, 8, self.pano_w, 2, 140)[4]) * 0.012 * self.H + 0.004 * self.H
        ys = np.arange(rows, dtype=np.float32)[:, None]
        col_far = np.asarray(p.skyline_colour, np.float32) * 0.5 + np.asarray(p.sky_horizon, np.float32) * 0.5
        m_hills = np.clip(ys - (horizon_row - hills[None, :]) + 0.5, 0, 1)
        sky = sky * (1 - m_hills[..., None]) + col_far * m_hills[..., None]
        col_near = np.asarray(p.skyline_colour, np.float32) * 0.75 + np.asarray(p.sky_horizon, np.float32) * 0.25
        m_trees = np.clip(ys - (horizon_row - trees[None, :] * (p.tree_density / 9 + 0.2)) + 0.5, 0, 1)
        sky = sky * (1 - m_trees[..., None]) + col_near * m_trees[..., None]
        self.pano = np.clip(sky * self.gain.astype(np.float32), 0, 255).astype(np.uint8)
        self.horizon_colour = np.asarray(self.light(p.sky_horizon), np.float32) * 0.9
        self._horizon_tuple = tuple(float(c) for c in self.horizon_colour)

    def _build_camera_effects(self) -> None:
        p, H, W = self.p, self.H, self.W
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        r2 = ((xx - W / 2) / (W / 2)) ** 2 * 0.6 + ((yy - H / 2) / (H / 2)) ** 2 * 0.4
        vig = np.clip(255 * (1 - p.vignette * r2), 0, 255).astype(np.uint8)
        self.vignette = np.repeat(vig[..., None], 3, axis=2)
        noise = self.rng.normal(0, p.noise_sigma, (6, H, W, 3)).round()
        self.noise_pos = np.clip(noise, 0, 255).astype(np.uint8)
        self.noise_neg = np.clip(-noise, 0, 255).astype(np.uint8)

    # ---- roadside props

    def _spawn_props(self) -> None:
        """Keep props populated up to the draw distance; each stream spawns along the road in order."""
        p, r = self.p, self.rng
        streams = {
            "tree": (100 / p.tree_density, True),
            "bush": (100 / p.bush_density, True),
            "building": (100 / p.building_density if p.building_density > 0.05 else 0, True),
            "pole": (p.pole_spacing, False),
            "post": (p.post_spacing, False),
        }
        for kind, (spacing, poisson) in streams.items():
            if spacing <= 0:
                continue
            for side in (-1, 1):
                key = f"{kind}{side}"
                at = self.next_L.get(key, self.s - 5 + r.uniform(0, spacing))
                while at < self.s + self.Z_PROPS:
                    self.props.append(self._new_prop(kind, at, side))
                    at += r.exponential(spacing) + 1.0 if poisson else spacing * r.uniform(0.9, 1.1)
                self.next_L[key] = at
        self.props = [q for q in self.props if q.L - self.s > 1.0]

    def _new_prop(self, kind: str, L: float, side: int) -> Prop:
        p, r = self.p, self.rng
        edge = self.road_half + p.verge
        if kind == "tree":
            conifer = r.uniform() < p.conifer_share
            green = (r.uniform(25, 60), r.uniform(70, 120), r.uniform(30, 70))
            return Prop(
                "conifer" if conifer else "tree",
                L,
                side * (edge + r.exponential(12) + 2),
                r.uniform(5, 14) if conifer else r.uniform(4, 10),
                self.light(green),
                self.light((r.uniform(30, 50), r.uniform(50, 70), r.uniform(70, 95))),
                tuple(r.uniform(-1, 1, 12)),
            )
        if kind == "bush":
            return Prop(
                "bush",
                L,
                side * (edge + r.uniform(0.5, 10)),
                r.uniform(0.6, 1.6),
                self.light((r.uniform(30, 60), r.uniform(80, 125), r.uniform(45, 80))),
                (0, 0, 0),
            )
        if kind == "building":
            wall = [(170, 190, 205), (150, 160, 165), (80, 90, 150), (200, 205, 210), (120, 140, 160)]
            roof = [(50, 50, 60), (40, 60, 120), (90, 90, 95)]
            return Prop(
                "building",
                L,
                side * (edge + r.uniform(10, 45)),
                r.uniform(4, 10),
                self.light(wall[int(r.integers(len(wall)))]),
                self.light(roof[int(r.integers(len(roof)))]),
                (r.uniform(6, 20), r.uniform(6, 18), float(r.uniform() < 0.5)),
            )
        if kind == "pole":
            return Prop(
                "pole",
                L,
                side * (edge + r.uniform(1.5, 3.5)),
                r.uniform(7, 10),
                self.light((60, 75, 90) if r.uniform() < 0.6 else (150, 150, 150)),
                (0, 0, 0),
            )
        return Prop("post", L, side * (self.road_half + 0.6), 1.0, self.light((235, 235, 235)), (0, 0, 0))

    # ---- traffic

    def _new_vehicle(self, lane: int, Z: float, oncoming: bool) -> _Vehicle:
        r = self.rng
        kind = str(r.choice(["car", "car", "car", "van", "truck"]))
        dims = {"car": (1.8, 1.45, 4.4), "van": (1.95, 2.1, 5.0), "truck": (2.5, 3.7, 10.0)}[kind]
        col = _CAR_COLOURS[int(r.integers(len(_CAR_COLOURS)))]
        if kind == "truck" and r.uniform() < 0.6:
            col = (225, 225, 225)
        speed = -r.uniform(18, 28) if oncoming else self.p.speed
        dv = 0.0 if oncoming else r.uniform(-3, 3)
        return _Vehicle(
            lane,
            self.s + Z,
            speed + dv,
            kind,
            self.light(col),
            dims[0] * r.uniform(0.95, 1.05),
            dims[1] * r.uniform(0.95, 1.05),
            dims[2],
            dv,
        )

    def _same_way_lanes(self) -> list[int]:
        return list(range(1, self.p.n_lanes)) if self.p.two_way else list(range(self.p.n_lanes))

    def _init_traffic(self) -> None:
        lanes = self._same_way_lanes()
        for _ in range(self.p.n_vehicles):
            lane = int(self.rng.choice(lanes))
            self.vehicles.append(self._new_vehicle(lane, self.rng.uniform(15, 180), False))
        if self.p.two_way:
            for _ in range(int(self.rng.integers(0, 2))):
                self.vehicles.append(self._new_vehicle(0, self.rng.uniform(40, 250), True))

    def _update_traffic(self, v_ego: float, dt: float) -> None:
        r, keep = self.rng, []
        for v in self.vehicles:
            if v.v > 0:  # same direction: speed difference wanders, never drive into the ego car
                v.dv = float(np.clip(v.dv * 0.995 + r.normal(0, 0.25), -4, 4))
                Z = v.L - self.s
                if v.lane == self.p.ego_lane and Z < self.MIN_GAP + 10:
                    v.dv = max(v.dv, 0.4 * (self.MIN_GAP + 10 - Z))
                ahead = [o for o in self.vehicles if o is not v and o.lane == v.lane and 0 < o.L - v.L < 12]
                if ahead:
                    v.dv = min(v.dv, ahead[0].dv - 0.5)
                v.brake = v.dv < -1.5
                v.v = v_ego + v.dv
            v.L += v.v * dt
            if v.v > 0 and v.lane == self.p.ego_lane:  # the ego car brakes rather than tailgate
                v.L = max(v.L, self.s + self.MIN_GAP)
            Z = v.L - self.s
            if -2 < Z < self.Z_PROPS + 40 and not (v.v < 0 and Z < 2):
                keep.append(v)
            elif v.v > 0:  # respawn: far ahead (being caught up) or from behind in another lane (overtaking)
                lanes = self._same_way_lanes()
                lane = int(r.choice(lanes))
                behind = lane != self.p.ego_lane and r.uniform() < 0.4
                nv = self._new_vehicle(lane, -1.0 if behind else self.Z_PROPS, False)
                nv.dv = r.uniform(1.5, 4) if behind else r.uniform(-4, -1)
                keep.append(nv)
        if self.p.two_way and r.uniform() < self.p.oncoming_rate * dt:
            keep.append(self._new_vehicle(0, self.Z_PROPS, True))
        self.vehicles = keep

    # ---- rendering

    def render(self) -> np.ndarray:
        """The next frame of the drive (clean: no vignette or sensor noise yet)."""
        p, i = self.p, self.frame_index
        t = i / self.fps
        ph = self.t_phase
        v_ego = p.speed * (1 + 0.06 * math.sin(2 * math.pi * t / 23 + ph[0]))
        s = self.s + v_ego / self.fps if i > 0 else self.s
        cam_X = self.lane_centre(p.ego_lane) + 0.25 * math.sin(2 * math.pi * t / 9 + ph[1])
        cam_X += 0.08 * math.sin(2 * math.pi * t / 2.7 + ph[2])
        wobble = math.sin(2 * math.pi * t * 1.3 + ph[3]) + 0.6 * math.sin(2 * math.pi * t * 3.7 + ph[4])
        self._set_pose(s, cam_X, p.horizon * self.H + p.jitter * self.unit * wobble)
        if i > 0:
            self._update_traffic(v_ego, 1 / self.fps)
            self._spawn_props()
        img = np.empty((self.H, self.W, 3), np.uint8)
        self._draw_sky(img)
        self._draw_ground(img)
        self._draw_markings(img)
        self._draw_guardrail(img)
        self._draw_objects(img)
        self._draw_hood(img)
        Za = self.f * p.cam_height / max(1.0, 0.75 * self.H - self.y0)
        ax, _ = self.project(Za, self.lane_centre(p.ego_lane))
        self.anchor = (float(np.clip(ax / self.W, 0.1, 0.9)), 0.75)
        self.frame_index += 1
        return img

    def finish(self, img: np.ndarray) -> np.ndarray:
        """Camera effects: lens softness, vignette, slow exposure drift, sensor noise.

        The softness is also what keeps the mp4 files small: sharp moving edges cost the encoder most.
        """
        t = (self.frame_index - 1) / self.fps
        g = 1 + 0.035 * math.sin(2 * math.pi * t / 11 + self.t_phase[5])
        out = cv2.GaussianBlur(img, (0, 0), self.SOFTNESS * self.unit)
        out = cv2.multiply(out, self.vignette, scale=g / 255.0)
        k = int(self.rng.integers(len(self.noise_pos)))
        out = cv2.add(out, self.noise_pos[k])
        return cv2.subtract(out, self.noise_neg[k])

    def _draw_sky(self, img: np.ndarray) -> None:
        turned = self._th0 - self._theta(self.p.seed_offset)
        shift = int(round(self.f * turned + self.frame_index * 0.15))
        rows = min(self.H, self.pano.shape[0])
        a = shift % self.pano_w
        n = min(self.W, self.pano_w - a)
        img[:rows, :n] = self.pano[:rows, a : a + n]
        if n < self.W:
            img[:rows, n:] = self.pano[:rows, : self.W - n]

    def _draw_ground(self, img: np.ndarray) -> None:
        """Grass, verge and road, every pixel projected onto the road plane; shaded at half resolution."""
        p, f, d = self.p, self.f, self.ground_step
        y_first = int(math.floor(self.y0)) + 1
        n_rows, n_cols = -(-(self.H - y_first) // d), self.W // d
        rows = y_first + (np.arange(n_rows) + 0.5) * d
        Z = np.minimum(f * p.cam_height / (rows - self.y0), self.Z_FAR)
        off = self.road_offset(Z)
        xr = ((np.arange(n_cols) + 0.5) * d - self.cx) / f
        X = (Z[:, None] * xr[None, :] - off[:, None]).astype(np.float32)  # lateral metres from the road centre
        along = self.s + Z
        foot = Z**2 / (f * p.cam_height) * d  # metres of road per shaded row
        inv_pix = (f / (Z * d)).astype(np.float32)[:, None]  # shaded pixels per metre across
        absX = np.abs(X)
        a_road = np.clip((self.road_half - absX) * inv_pix + 0.5, 0, 1)
        a_verge = np.clip((self.road_half + p.verge - absX) * inv_pix + 0.5, 0, 1) - a_road
        g_tex = self.grass_tex.sample(X, along, foot)
        patch = np.clip(self.patch_tex.sample(X, along, foot) * 1.5 + 0.5, 0, 1)
        r_tex = self.road_tex.sample(X + (self.lines_half + p.lane_width / 2), along, foot)
        grass, grass2, asphalt, verge = self._ground_colours
        # per-pixel colour = grass mix, verge and road blended by coverage, each modulated by its texture
        g_w = (1 - a_road - a_verge) * (1 + 0.18 * g_tex)
        shade = [
            g_w * (grass[c] + (grass2[c] - grass[c]) * patch)
            + a_verge * (1 + 0.12 * g_tex) * verge[c]
            + a_road * (1 + r_tex) * asphalt[c]
            for c in range(3)
        ]
        hz = self.haze_at(Z).astype(np.float32)[:, None]
        ground = np.dstack([shade[c] * (1 - hz) + self.horizon_colour[c] * hz for c in range(3)])
        small = np.clip(ground, 0, 255).astype(np.uint8)
        img[y_first:] = cv2.resize(small, (self.W, n_rows * d), interpolation=cv2.INTER_LINEAR)[: self.H - y_first]

    def _poly(self, img: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour: Sequence[float]) -> None:
        pts = np.empty((len(xs), 2), np.float64)
        pts[:, 0], pts[:, 1] = xs, ys
        pts *= 16
        if np.abs(pts).max() > 2**26:
            return
        cv2.fillPoly(
            img, [pts.astype(np.int32)], (float(colour[0]), float(colour[1]), float(colour[2])), cv2.LINE_AA, 4
        )

    def _strip(
        self, img: np.ndarray, X: float, width: float, Za: float, Zb: float, colour: Sequence[float], n: int
    ) -> None:
        """A painted line X metres from the centre, between distances Za and Zb."""
        Za = max(Za, 0.8)
        Z = np.array([Za, (Za + Zb) / 2, Zb]) if n <= 3 else np.geomspace(Za, Zb, n)
        xl, yl = self.project(Z, X - width / 2)
        xr, _ = self.project(Z, X + width / 2)
        self._poly(img, np.concatenate([xl, xr[::-1]]), np.concatenate([yl, yl[::-1]]), colour)

    def _draw_markings(self, img: np.ndarray) -> None:
        p = self.p
        white = np.asarray(self.light((225, 228, 228)), float) * 0.85 + np.asarray(self.light(p.asphalt)) * 0.15
        far = 160.0
        for side in (-1, 1):
            self._strip(img, side * self.lines_half, 0.15, 0.8, far, white, 24)
        dividers = [-self.lines_half + k * p.lane_width for k in range(1, p.n_lanes)]
        for k, X in enumerate(dividers):
            centre = p.two_way and k == 0
            colour = self.light(p.centre_colour) if centre else white
            style = p.centre_style if centre else "dashed"
            if style == "solid":
                self._strip(img, X, 0.15, 0.8, far, colour, 24)
            elif style == "double":
                for d in (-0.12, 0.12):
                    self._strip(img, X + d, 0.12, 0.8, far, colour, 24)
            else:
                period = p.dash_length + p.dash_gap
                k0 = math.floor((self.s + 0.5) / period)
                for kk in range(k0, k0 + int(far / period) + 2):
                    Za, Zb = kk * period - self.s, kk * period + p.dash_length - self.s
                    if Zb > 0.8 and Za < far:
                        self._strip(img, X, 0.15, Za, Zb, colour, 3)

    def _draw_guardrail(self, img: np.ndarray) -> None:
        if not self.p.guardrail:
            return
        X = self.p.guardrail * (self.road_half + 0.4)
        Z = np.geomspace(1.0, 200.0, 40)
        xs, y_top = self.project(Z, X, 0.75)
        _, y_bot = self.project(Z, X, 0.45)
        col = np.asarray(self.light((170, 172, 175)), float)
        hz = self.haze_at(60.0)
        self._poly(img, np.r_[xs, xs[::-1]], np.r_[y_top, y_bot[::-1]], col * (1 - hz) + self.horizon_colour * hz)
        first = math.ceil(self.s / 4.0) * 4.0
        for L in np.arange(first, self.s + 60, 4.0):
            Zp = L - self.s
            if Zp < 1.5:
                continue
            x, y = self.project(Zp, X, 0.0)
            _, yt = self.project(Zp, X, 0.7)
            w = max(1, int(0.12 * self.f / Zp))
            cv2.line(img, (int(x), int(y)), (int(x), int(yt)), self.light((90, 90, 95)), w, cv2.LINE_AA)

    def _draw_hood(self, img: np.ndarray) -> None:
        if self.p.hood <= 0:
            return
        H, W = self.H, self.W
        top = H * (1 - self.p.hood)
        xs = np.linspace(-0.05 * W, 1.05 * W, 24)
        ys = top + (((xs - W / 2) / (W / 2)) ** 2) * self.p.hood * H * 0.6
        col = np.asarray(self.light(self.p.hood_colour), float)
        self._poly(img, np.r_[xs, W * 1.05, -0.05 * W], np.r_[ys, H + 2, H + 2], col * 0.8)
        self._poly(img, np.r_[xs, xs[::-1]], np.r_[ys + 1, ys[::-1] + 0.25 * self.p.hood * H], col * 0.8 + 40)

    # ---- props and vehicles

    def _draw_objects(self, img: np.ndarray) -> None:
        items: list[tuple[float, Any]] = [(q.L - self.s, q) for q in self.props]
        items += [(v.L - self.s, v) for v in self.vehicles]
        items = [it for it in items if 1.0 < it[0] < self.Z_PROPS]
        for Z, obj in sorted(items, key=lambda it: -it[0]):
            if isinstance(obj, _Vehicle):
                self._draw_vehicle(img, obj, Z)
            else:
                self._draw_prop(img, obj, Z)

    def _hazed(self, colour: Sequence[float], Z: float) -> BGR:
        h = self.p.haze * (1 - math.exp(-Z / 260.0))
        hc = self._horizon_tuple
        return (
            colour[0] + (hc[0] - colour[0]) * h,
            colour[1] + (hc[1] - colour[1]) * h,
            colour[2] + (hc[2] - colour[2]) * h,
        )

    def _draw_prop(self, img: np.ndarray, q: Prop, Z: float) -> None:
        x, y = self.project(Z, q.X)
        k = self.f / Z  # pixels per metre at this distance
        if q.size * k < 1.0 or not (-0.5 * self.W < x < 1.5 * self.W):
            return
        c1, c2 = self._hazed(q.colour, Z), self._hazed(q.colour2, Z)
        PROP_DRAW[q.kind](self, img, float(x), float(y), k, q, c1, c2, Z)

    def _rect(self, img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: Sequence[float]) -> None:
        if max(abs(x0), abs(x1), abs(y0), abs(y1)) > 1e5:
            return
        a, b, c, d = int(x0 * 16), int(y0 * 16), int(x1 * 16), int(y1 * 16)
        pts = np.array([[a, b], [c, b], [c, d], [a, d]], np.int32)
        cv2.fillConvexPoly(img, pts, (float(colour[0]), float(colour[1]), float(colour[2])), cv2.LINE_AA, 4)

    def _draw_vehicle(self, img: np.ndarray, v: _Vehicle, Z: float) -> None:
        X = self.lane_centre(v.lane) + 0.15 * math.sin(v.L * 0.05)
        x, y = self.project(Z, X)
        k = self.f / Z
        if v.width * k < 1.5 or not (-0.5 * self.W < x < 1.5 * self.W):
            return
        w2 = v.width / 2 * k
        body = self._hazed(v.colour, Z)
        dark = self._hazed((25, 25, 28), Z)
        # contact shadow: a short strip only, since the car's sides are not drawn (it would show beside a close car)
        Zs = np.array([Z - 0.3, Z + min(1.2, 0.25 * v.length)])
        xs0, ys0 = self.project(Zs, X - v.width * 0.55)
        xs1, _ = self.project(Zs, X + v.width * 0.55)
        road = np.asarray(self.light(self.p.asphalt)) * 0.45
        if v.v > 0 or Z > 8:  # an oncoming car this close is mostly off-screen: its shadow alone looks wrong
            self._poly(img, np.r_[xs0, xs1[::-1]], np.r_[ys0, ys0[::-1]], self._hazed(road, Z))
        self._rect(img, x - w2 * 0.95, y - 0.4 * k, x - w2 * 0.6, y, dark)  # wheels
        self._rect(img, x + w2 * 0.6, y - 0.4 * k, x + w2 * 0.95, y, dark)
        if v.v < 0:
            self._draw_front(img, v, x, y, k, body, Z)
        elif v.kind == "truck":
            self._draw_truck_rear(img, v, x, y, k, body, Z)
        else:
            self._draw_car_rear(img, v, x, y, k, body, Z)

    def _draw_car_rear(self, img: np.ndarray, v: _Vehicle, x: float, y: float, k: float, body: BGR, Z: float) -> None:
        w2, belt, top = v.width / 2 * k, y - 0.95 * k, y - v.height * k
        self._rect(img, x - w2, belt, x + w2, y - 0.25 * k, body)
        self._poly(
            img,
            np.array([x - w2 * 0.93, x - w2 * 0.72, x + w2 * 0.72, x + w2 * 0.93]),
            np.array([belt + 1, top, top, belt + 1]),
            body,
        )
        glass = self._hazed((70, 55, 45), Z)
        gt = top + 0.08 * k
        self._poly(
            img,
            np.array([x - w2 * 0.82, x - w2 * 0.68, x + w2 * 0.68, x + w2 * 0.82]),
            np.array([belt - 0.08 * k, gt, gt, belt - 0.08 * k]),
            glass,
        )
        self._rect(img, x - w2, y - 0.42 * k, x + w2, y - 0.25 * k, self._hazed(np.asarray(body) * 0.5, Z))  # bumper
        plate = self._hazed((225, 225, 225) if v.colour[0] > 100 else (40, 200, 230), Z)
        self._rect(img, x - 0.26 * k, y - 0.62 * k, x + 0.26 * k, y - 0.48 * k, plate)
        tail = (60, 60, 255) if v.brake else (40, 40, 215)
        tail = self._hazed(tail, Z * 0.5)
        for sgn in (-1, 1):
            self._rect(img, x + sgn * w2 * 0.98, belt + 0.02 * k, x + sgn * w2 * 0.7, belt + 0.2 * k, tail)

    def _draw_truck_rear(self, img: np.ndarray, v: _Vehicle, x: float, y: float, k: float, body: BGR, Z: float) -> None:
        w2, top = v.width / 2 * k, y - v.height * k
        self._rect(img, x - w2, top, x + w2, y - 0.9 * k, body)
        edge = self._hazed(np.asarray(body) * 0.7, Z)
        for d in (-0.02, 0.0, 0.02):
            self._rect(img, x + d * k - 0.02 * k, top + 0.1 * k, x + d * k + 0.02 * k, y - 0.95 * k, edge)
        self._rect(img, x - w2 * 0.9, y - 0.6 * k, x + w2 * 0.9, y - 0.45 * k, self._hazed((40, 40, 45), Z))
        tail = self._hazed((60, 60, 255) if v.brake else (40, 40, 215), Z * 0.5)
        for sgn in (-1, 1):
            self._rect(img, x + sgn * w2 * 0.95, y - 1.15 * k, x + sgn * w2 * 0.75, y - 0.95 * k, tail)

    def _draw_front(self, img: np.ndarray, v: _Vehicle, x: float, y: float, k: float, body: BGR, Z: float) -> None:
        w2, belt, top = v.width / 2 * k, y - 0.9 * k, y - v.height * k
        self._rect(img, x - w2, belt, x + w2, y - 0.2 * k, body)
        self._poly(
            img,
            np.array([x - w2 * 0.95, x - w2 * 0.7, x + w2 * 0.7, x + w2 * 0.95]),
            np.array([belt + 1, top, top, belt + 1]),
            body,
        )
        glass = self._hazed((90, 75, 65), Z)
        self._poly(
            img,
            np.array([x - w2 * 0.88, x - w2 * 0.72, x + w2 * 0.72, x + w2 * 0.88]),
            np.array([belt - 0.05 * k, top + 0.06 * k, top + 0.06 * k, belt - 0.05 * k]),
            glass,
        )
        self._rect(img, x - w2 * 0.45, y - 0.7 * k, x + w2 * 0.45, y - 0.45 * k, self._hazed((35, 35, 38), Z))
        lamp = self._hazed((215, 240, 250), Z * 0.5)
        for sgn in (-1, 1):
            self._rect(img, x + sgn * w2 * 0.92, y - 0.75 * k, x + sgn * w2 * 0.6, y - 0.6 * k, lamp)


# ---------------------------------------------------------------------------------------- clips


CAMERA_FIELDS = ("hfov_deg", "cam_height", "horizon", "hood", "hood_colour", "vignette")


def mounted_camera(params: SceneParams, camera_seed: int) -> SceneParams:
    """The drive `params` seen through the dashcam `camera_seed`: lens, mount height, pitch and bonnet.

    A fleet model watches one kind of camera mount; every clip of a sample set shares one, so the
    clips differ in road, scenery, light and traffic, as different drives of one vehicle do.
    """
    camera = SceneParams.sample(np.random.default_rng([camera_seed, 7]))
    return replace(params, **{name: getattr(camera, name) for name in CAMERA_FIELDS})


def render_clip(
    seed: int,
    n_frames: int,
    fps: float,
    width: int = 640,
    height: int = 360,
    events: Sequence[InjectedAnomaly] = (),
    camera_seed: int | None = None,
) -> Iterator[np.ndarray]:
    """BGR uint8 frames of the drive `seed`, with the events' anomalies on their frames.

    Each event's `anchor` and `horizon` are replaced per frame by the scene's own (the ego lane a few
    metres ahead, following the road's curve, and the vibrating horizon), so obstacles and pedestrians
    stay on the road and the night headlight cone on the lane. Sensor faults come after the camera's
    noise, everything else before.
    """
    rng = np.random.default_rng(seed)
    params = SceneParams.sample(rng)
    if camera_seed is not None:
        params = mounted_camera(params, camera_seed)
    scene = DashcamScene(params, width, height, fps, rng)
    for i in range(n_frames):
        frame = scene.render()
        active = [e for e in events if e.covers(i)]
        pre = [e for e in active if e.kind != "sensor_fault"]
        for e in sorted(pre, key=lambda e: APPLY_ORDER.index(e.kind)):
            horizon = round((scene.y0 + 0.5) / height, 4)
            frame = apply_event(frame, replace(e, anchor=scene.anchor, horizon=horizon), i)
        frame = scene.finish(frame)
        for e in active:
            if e.kind == "sensor_fault":
                frame = apply_event(frame, e, i)
        yield frame
