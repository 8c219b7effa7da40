"""Synthetic dashcam clips: deterministic, varied, and a sample set whose labels match the decoded frames."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from synthetic.anomalies import KINDS, InjectedAnomaly, event_variant
from synthetic.sample_set import EVENT_SECONDS, LABEL_HEADER, count_decoded_frames, generate_sample_set, plan_sample_set
from synthetic.scene import CAMERA_FIELDS, DashcamScene, SceneParams, mounted_camera, render_clip


def _frames(seed: int, n: int = 6, **kw: object) -> np.ndarray:
    return np.stack(list(render_clip(seed, n, 15.0, **kw)))  # type: ignore[arg-type]


def test_same_seed_same_frames_different_seed_different_frames() -> None:
    a, b, c = _frames(7), _frames(7), _frames(8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(np.int16) - c).mean() > 5


def test_frames_shape_dtype_and_content() -> None:
    frames = _frames(2, n=12)
    assert frames.shape == (12, 360, 640, 3) and frames.dtype == np.uint8
    assert frames.std() > 20  # a scene, not a flat image
    assert np.abs(frames[0].astype(np.int16) - frames[11]).mean() > 2  # things move
    small = _frames(2, n=2, width=320, height=180)
    assert small.shape == (2, 180, 320, 3)


def test_scene_params_are_seeded_and_varied() -> None:
    draw = [SceneParams.sample(np.random.default_rng(s)) for s in range(8)]
    assert SceneParams.sample(np.random.default_rng(3)) == draw[3]
    assert len({p.asphalt for p in draw}) == 8 and len({p.speed for p in draw}) == 8
    assert {p.two_way for p in draw} == {True, False}


def test_events_only_change_their_own_frames() -> None:
    event = InjectedAnomaly("obstacle", 3, 6, seed=4)
    plain = _frames(5, n=8)
    with_event = np.stack(list(render_clip(5, 8, 15.0, events=[event])))
    for i in range(8):
        same = np.array_equal(plain[i], with_event[i])
        assert same == (not event.covers(i)), i


def test_default_plan_covers_every_kind_with_enough_normal_frames() -> None:
    fps = 15.0
    plans = plan_sample_set()
    train = [p for p in plans if p.split == "train"]
    test = [p for p in plans if p.split == "test"]
    assert 6 <= len(train) <= 8 and len(test) == 4
    assert len({p.seed for p in plans}) == len(plans)
    assert all(p.n_frames == round(20 * fps) and not p.events for p in train)
    counts = Counter(e.kind for p in test for e in p.events)
    assert set(counts) == set(KINDS) and min(counts.values()) >= 2
    total = sum(p.n_frames for p in test)
    anomalous = sum(e.end_frame - e.start_frame for p in test for e in p.events)
    assert 0.25 < anomalous / total < 0.4
    assert total - anomalous >= 1000
    for p in test:
        assert 30 * fps <= p.n_frames <= 40 * fps
        spans = sorted((e.start_frame, e.end_frame) for e in p.events)
        assert spans[0][0] >= 2 * fps  # the clip starts with normal driving
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start - end >= 2 * fps  # normal driving between stretches
        for a, b in spans:
            assert EVENT_SECONDS[0] * fps - 1 <= b - a <= EVENT_SECONDS[1] * fps + 1
        assert spans[-1][1] <= p.n_frames
    variants = {(e.kind, event_variant(e)) for p in test for e in p.events}
    assert len({v for k, v in variants if k == "obstacle"}) >= 3  # box, tyre, debris, animal in turn
    assert len({v for k, v in variants if k == "sensor_fault"}) == 2
    assert plan_sample_set() == plans  # deterministic


def test_scale_makes_the_set_longer() -> None:
    one, two = plan_sample_set(scale=1), plan_sample_set(scale=2)
    assert sum(p.n_frames for p in two) == 2 * sum(p.n_frames for p in one)
    with pytest.raises(ValueError):
        plan_sample_set(scale=0)


def test_generate_tiny_sample_set(tmp_path: Path) -> None:
    fps = 10.0
    paths = generate_sample_set(
        tmp_path / "set", seed=3, n_train=1, n_test=2, train_seconds=1.0, test_seconds=3.0, fps=fps
    )
    names = sorted(p.name for p in paths)
    assert names == sorted(
        ["normal_00.mp4", "test_00.mp4", "test_00.labels.csv", "test_01.mp4", "test_01.labels.csv", "manifest.json"]
    )
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["fps"] == fps and manifest["width"] == 640 and manifest["height"] == 360
    clips = {c["file"]: c for c in manifest["clips"]}
    assert count_decoded_frames(tmp_path / "set" / "normal_00.mp4") == clips["normal_00.mp4"]["n_frames"] == 10
    for name in ("test_00", "test_01"):
        video, labels = tmp_path / "set" / f"{name}.mp4", tmp_path / "set" / f"{name}.labels.csv"
        with labels.open(newline="") as fh:
            reader = csv.reader(fh)
            assert tuple(next(reader)) == LABEL_HEADER
            rows = list(reader)
        assert count_decoded_frames(video) == len(rows) == clips[f"{name}.mp4"]["n_frames"] == 30
        assert [int(r[1]) for r in rows] == list(range(30))
        assert all(r[0] == f"{name}.mp4" for r in rows)
        assert abs(float(rows[-1][2]) - 29 / fps) < 1e-3
        events = [
            InjectedAnomaly.from_dict({k: e[k] for k in ("kind", "start_frame", "end_frame", "seed")})
            for e in clips[f"{name}.mp4"]["events"]
        ]
        assert events, "every test clip has at least one anomaly"
        for i, (_, _, _, label, kind) in enumerate(rows):
            active = [e.kind for e in events if e.covers(i)]
            assert label == ("1" if active else "0")
            assert kind == "+".join(active)


def test_clips_of_a_set_share_one_camera_mount_but_not_the_road() -> None:
    plans = plan_sample_set(seed=3)
    assert {p.camera_seed for p in plans} == {3}
    scenes = [mounted_camera(SceneParams.sample(np.random.default_rng(p.seed)), 3) for p in plans[:3]]
    for name in CAMERA_FIELDS:
        assert len({getattr(s, name) for s in scenes}) == 1, name
    assert len({(s.n_lanes, s.lane_width, s.asphalt) for s in scenes}) == 3


def test_camera_seed_changes_only_the_camera() -> None:
    plain, mounted = _frames(4, n=1), _frames(4, n=1, camera_seed=11)
    assert plain.shape == mounted.shape
    assert np.abs(plain.astype(np.int16) - mounted).mean() > 1


def test_traffic_ahead_in_the_ego_lane_keeps_a_safe_gap() -> None:
    # a vehicle filling the windscreen is an incident, not normal driving: normal clips must not show one
    closest = []
    for seed in (4, 6, 1004):  # drives that used to tailgate before the gap was enforced
        rng = np.random.default_rng(seed)
        scene = DashcamScene(SceneParams.sample(rng), 160, 90, 15.0, rng)
        for _ in range(300):
            scene.render()
            ahead = [v.L - scene.s for v in scene.vehicles if v.v > 0 and v.lane == scene.p.ego_lane]
            closest.extend(z for z in ahead if z > -2)
    assert closest and min(closest) >= DashcamScene.MIN_GAP - 1e-6
