"""Anomaly injectors: visible, local where they should be, deterministic, and safe on any frame."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from synthetic.anomalies import (
    KINDS,
    OBSTACLE_SHAPES,
    SENSOR_FAULT_MODES,
    InjectedAnomaly,
    apply_event,
    apply_events,
    event_variant,
    frame_kinds,
)
from synthetic.scene import render_clip


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """One synthetic 640x360 road frame."""
    return next(render_clip(3, 1, 15.0))


@pytest.fixture(scope="module")
def real_like() -> np.ndarray:
    """A 960x540 frame that is not from our renderer: gradient sky, grey road, textured noise."""
    rng = np.random.default_rng(0)
    f = np.zeros((540, 960, 3), np.float32)
    f[:250] = np.linspace(230, 150, 250)[:, None, None] * np.array([1.0, 0.85, 0.7])
    f[250:] = (85, 95, 90)
    cv2.fillPoly(f, [np.array([[470, 250], [490, 250], [900, 540], [60, 540]], np.int32)], (70, 72, 75))
    f += rng.normal(0, 6, f.shape)
    return np.clip(f, 0, 255).astype(np.uint8)


def _changed(a: np.ndarray, b: np.ndarray, tol: int = 12) -> float:
    """Fraction of pixels whose largest channel difference exceeds `tol`."""
    return float((np.abs(a.astype(np.int16) - b).max(axis=2) > tol).mean())


def _contrast(img: np.ndarray) -> float:
    """Mean within-row standard deviation of the grey image: scene contrast, not the sky/ground split."""
    return float(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).std(axis=1).mean())


def _brightness(img: np.ndarray) -> float:
    return float(img.mean())


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_changes_the_frame_and_not_the_input(kind: str, frame: np.ndarray, real_like: np.ndarray) -> None:
    for base in (frame, real_like):
        before = base.copy()
        out = apply_event(base, InjectedAnomaly(kind, 10, 40, seed=5), 25)
        assert out.shape == base.shape and out.dtype == np.uint8
        assert out is not base
        np.testing.assert_array_equal(base, before)
        assert _changed(out, base) > 0.005, kind


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_by_seed(kind: str, frame: np.ndarray) -> None:
    a = apply_event(frame, InjectedAnomaly(kind, 0, 30, seed=11), 12)
    b = apply_event(frame, InjectedAnomaly(kind, 0, 30, seed=11), 12)
    c = apply_event(frame, InjectedAnomaly(kind, 0, 30, seed=12), 12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_outside_its_frames_an_event_changes_nothing(frame: np.ndarray) -> None:
    event = InjectedAnomaly("fog", 10, 20, seed=1)
    for i in (0, 9, 20, 100):
        out = apply_event(frame, event, i)
        assert out is not frame
        np.testing.assert_array_equal(out, frame)


@pytest.mark.parametrize("kind", ["obstacle", "pedestrian"])
def test_objects_are_small_and_local(kind: str, frame: np.ndarray, real_like: np.ndarray) -> None:
    for base in (frame, real_like):
        for seed in range(6):
            event = InjectedAnomaly(kind, 0, 30, seed=seed)
            for i in (0, 15, 29):
                changed = _changed(apply_event(base, event, i), base)
                assert 0.004 < changed < 0.05, (kind, seed, i, changed)


def test_obstacle_shapes_all_occur_and_grow(frame: np.ndarray) -> None:
    shapes = {event_variant(InjectedAnomaly("obstacle", 0, 2, seed=s)) for s in range(40)}
    assert shapes == set(OBSTACLE_SHAPES)
    event = InjectedAnomaly("obstacle", 0, 30, seed=3)
    first = _changed(apply_event(frame, event, 0), frame)
    last = _changed(apply_event(frame, event, 29), frame)
    assert last > first * 1.2


def test_pedestrian_walks_across(frame: np.ndarray) -> None:
    event = InjectedAnomaly("pedestrian", 0, 40, seed=2)

    def centre_x(i: int) -> float:
        diff = np.abs(apply_event(frame, event, i).astype(np.int16) - frame).max(axis=2) > 12
        return float(np.nonzero(diff)[1].mean())

    assert abs(centre_x(39) - centre_x(0)) > 0.25 * frame.shape[1]


def test_lens_mud_covers_5_to_20_percent(real_like: np.ndarray) -> None:
    flat = np.full_like(real_like, 170)
    for seed in range(6):
        out = apply_event(flat, InjectedAnomaly("lens_mud", 0, 10, seed=seed), 5)
        covered = _changed(out, flat, tol=30)
        assert 0.04 < covered < 0.22, (seed, covered)
        # brownish: red channel above blue where covered
        mask = np.abs(out.astype(np.int16) - flat).max(axis=2) > 60
        assert out[mask][:, 2].mean() > out[mask][:, 0].mean()


def test_fog_lowers_contrast(frame: np.ndarray, real_like: np.ndarray) -> None:
    for base in (frame, real_like):
        for seed in range(3):
            out = apply_event(base, InjectedAnomaly("fog", 0, 10, seed=seed), 5)
            assert _contrast(out) < 0.7 * _contrast(base)
            # stronger up the image (far away) than at the bottom (near)
            h = base.shape[0]
            far, near = slice(int(0.4 * h), int(0.55 * h)), slice(int(0.85 * h), h)
            assert _contrast(out[far]) / _contrast(base[far]) < _contrast(out[near]) / _contrast(base[near])


def test_night_is_darker_and_glare_brighter(frame: np.ndarray, real_like: np.ndarray) -> None:
    for base in (frame, real_like):
        for seed in range(3):
            night = apply_event(base, InjectedAnomaly("night", 0, 10, seed=seed), 5)
            glare = apply_event(base, InjectedAnomaly("glare", 0, 10, seed=seed), 5)
            assert _brightness(night) < 0.5 * _brightness(base)
            assert night[..., 0].mean() > night[..., 2].mean()  # blueish
            assert _brightness(glare) > _brightness(base) + 20


def test_sensor_fault_modes_and_per_frame_damage(frame: np.ndarray) -> None:
    events = {event_variant(InjectedAnomaly("sensor_fault", 0, 10, seed=s)): s for s in range(30)}
    assert set(events) == set(SENSOR_FAULT_MODES)
    black = apply_event(frame, InjectedAnomaly("sensor_fault", 0, 10, seed=events["black"]), 3)
    assert black.mean() < 5
    for mode in ("tear", "blocks"):
        event = InjectedAnomaly("sensor_fault", 0, 10, seed=events[mode])
        assert not np.array_equal(apply_event(frame, event, 3), apply_event(frame, event, 9))


def test_glare_flickers(frame: np.ndarray) -> None:
    event = InjectedAnomaly("glare", 0, 60, seed=4)
    means = [apply_event(frame, event, i).mean() for i in range(20, 60, 5)]
    assert np.ptp(means) > 1.0


def test_unknown_kind_and_bad_input_raise(frame: np.ndarray) -> None:
    with pytest.raises(ValueError):
        InjectedAnomaly("meteor", 0, 10, seed=0)
    with pytest.raises(ValueError):
        InjectedAnomaly("fog", 10, 10, seed=0)
    fake = SimpleNamespace(kind="meteor", start_frame=0, end_frame=10, seed=0)
    with pytest.raises(ValueError):
        apply_event(frame, fake, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        apply_event(frame[..., 0], InjectedAnomaly("fog", 0, 10, seed=0), 1)
    with pytest.raises(ValueError):
        apply_event(frame.astype(np.float32), InjectedAnomaly("fog", 0, 10, seed=0), 1)


def test_event_helpers() -> None:
    a = InjectedAnomaly("fog", 2, 5, seed=1)
    b = InjectedAnomaly("pedestrian", 4, 6, seed=2, anchor=(0.4, 0.7))
    assert frame_kinds([a, b], 7) == ["", "", "fog", "fog", "fog+pedestrian", "pedestrian", ""]
    assert InjectedAnomaly.from_dict(b.to_dict()) == b
    assert a.progress(2) == 0.0 and a.progress(4) == 1.0 and 0 < a.progress(3) < 1
    frame = np.full((60, 80, 3), 120, np.uint8)
    both = apply_events(frame, [b, a], 4)
    assert both.shape == frame.shape and not np.array_equal(both, frame)
