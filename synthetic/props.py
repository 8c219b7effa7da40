"""Roadside props of the synthetic scene (trees, bushes, buildings, poles, posts), drawn in perspective."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from synthetic.scene import DashcamScene

BGR = tuple[float, float, float]


@dataclass
class Prop:
    """A static roadside object at world position (along L, lateral X from the road centre)."""

    kind: str
    L: float
    X: float
    size: float
    colour: BGR
    colour2: BGR
    extra: tuple[float, ...] = ()


def _draw_tree(
    sc: DashcamScene, img: np.ndarray, x: float, y: float, k: float, q: Prop, c1: BGR, c2: BGR, Z: float
) -> None:
    e = q.extra
    trunk_h = q.size * (0.35 + 0.1 * e[0])
    sc._rect(img, x - 0.15 * k, y - trunk_h * k - 2, x + 0.15 * k, y, c2)
    crown = q.size * (0.35 + 0.05 * e[1])
    cy = y - (trunk_h + crown * 0.8) * k
    blobs = [(0, 0, 1.0, 1.0), (e[2] * 0.5, e[3] * 0.3, 0.7, 0.8), (e[4] * 0.6, -0.3 + 0.2 * e[5], 0.6, 1.15)]
    blobs.append((e[6] * 0.5, 0.25, 0.65, 0.85))
    for dx, dy, rr, shade in blobs:
        col = tuple(min(255.0, c * shade) for c in c1)
        r = max(1, int(crown * rr * k * 16))
        cv2.circle(img, (int((x + dx * crown * k) * 16), int((cy + dy * crown * k) * 16)), r, col, -1, cv2.LINE_AA, 4)


def _draw_conifer(
    sc: DashcamScene, img: np.ndarray, x: float, y: float, k: float, q: Prop, c1: BGR, c2: BGR, Z: float
) -> None:
    h = q.size
    sc._rect(img, x - 0.12 * k, y - 0.2 * h * k, x + 0.12 * k, y, c2)
    for j, (lo, hi, w) in enumerate(((0.12, 0.6, 0.32), (0.35, 0.82, 0.25), (0.6, 1.0, 0.17))):
        col = tuple(c * (0.85 + 0.1 * j) for c in c1)
        sc._poly(
            img,
            np.array([x - w * h * k, x, x + w * h * k]),
            np.array([y - lo * h * k, y - hi * h * k, y - lo * h * k]),
            col,
        )


def _draw_bush(
    sc: DashcamScene, img: np.ndarray, x: float, y: float, k: float, q: Prop, c1: BGR, c2: BGR, Z: float
) -> None:
    ax, ay = max(1, int(q.size * 0.8 * k * 16)), max(1, int(q.size * 0.5 * k * 16))
    cv2.ellipse(img, (int(x * 16), int((y - q.size * 0.4 * k) * 16)), (ax, ay), 0, 0, 360, c1, -1, cv2.LINE_AA, 4)


def _draw_building(
    sc: DashcamScene, img: np.ndarray, x: float, y: float, k: float, q: Prop, c1: BGR, c2: BGR, Z: float
) -> None:
    """A box: the end wall facing us, the side wall along the road, a flat or gabled roof."""
    width, depth, gable = q.extra
    side = 1 if q.X > 0 else -1
    near_x = q.X - side * width / 2
    Zs = np.array([Z, Z + depth])
    xs_side, yb = sc.project(Zs, near_x)
    _, yt = sc.project(Zs, near_x, q.size)
    sc._poly(img, np.r_[xs_side, xs_side[::-1]], np.r_[yb, yt[::-1]], tuple(c * 0.8 for c in c1))
    xa, ya = sc.project(Z, near_x)
    xb, _ = sc.project(Z, q.X + side * width / 2)
    _, ytop = sc.project(Z, near_x, q.size)
    sc._rect(img, min(xa, xb), ytop, max(xa, xb), ya, c1)
    if gable:
        _, ypeak = sc.project(Z, q.X, q.size + width * 0.3)
        sc._poly(img, np.array([xa, (xa + xb) / 2, xb]), np.array([ytop, ypeak, ytop]), c2)
    if abs(xb - xa) > 12:
        win = sc._hazed((70, 60, 50), Z)
        for fx in (0.2, 0.45, 0.7):
            for fy in (0.35, 0.7):
                wx = xa + (xb - xa) * fx
                wy = ya + (ytop - ya) * fy
                sc._rect(img, wx, wy, wx + (xb - xa) * 0.12, wy + 0.8 * k, win)


def _draw_pole(
    sc: DashcamScene, img: np.ndarray, x: float, y: float, k: float, q: Prop, c1: BGR, c2: BGR, Z: float
) -> None:
    top = y - q.size * k
    sc._rect(img, x - 0.12 * k, top, x + 0.12 * k, y, c1)
    sc._rect(img, x - 0.9 * k, top + 0.3 * k, x + 0.9 * k, top + 0.45 * k, c1)


def _draw_post(
    sc: DashcamScene, img: np.ndarray, x: float, y: float, k: float, q: Prop, c1: BGR, c2: BGR, Z: float
) -> None:
    sc._rect(img, x - 0.06 * k, y - 1.0 * k, x + 0.06 * k, y, c1)
    sc._rect(img, x - 0.06 * k, y - 0.85 * k, x + 0.06 * k, y - 0.7 * k, sc._hazed((20, 20, 20), Z))
    sc._rect(img, x - 0.04 * k, y - 0.97 * k, x + 0.04 * k, y - 0.9 * k, sc._hazed((30, 140, 240), Z * 0.5))


PROP_DRAW = {
    "tree": _draw_tree,
    "conifer": _draw_conifer,
    "bush": _draw_bush,
    "building": _draw_building,
    "pole": _draw_pole,
    "post": _draw_post,
}
