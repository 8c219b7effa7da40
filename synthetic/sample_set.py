"""The bundled sample set: which drives, which anomalies where, the label CSVs and manifest.json.

`generate_sample_set` renders it (`anomaly generate-samples`); the same seed gives the same files,
byte for byte, with any number of workers.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from synthetic.anomalies import KINDS, OBSTACLE_SHAPES, SENSOR_FAULT_MODES, InjectedAnomaly, event_variant, frame_kinds
from synthetic.scene import render_clip

LABEL_HEADER = ("source", "frame_index", "timestamp_s", "label", "kind")
GENERATOR = "anomaly generate-samples"

ANOMALY_SHARE = 1 / 3  # of the test frames
EVENT_SECONDS = (1.5, 4.0)
LEAD_SECONDS = 3.0  # normal driving before the first event of a test clip
GAP_SECONDS = 2.0  # at least this much normal driving after each event
VARIANTS = {"obstacle": OBSTACLE_SHAPES, "sensor_fault": SENSOR_FAULT_MODES}  # cycled through across the test set


@dataclass(frozen=True)
class ClipPlan:
    """One clip of the sample set: which drive to render and, for test clips, where the anomalies are."""

    name: str  # file name, e.g. "test_00.mp4"
    split: str  # "train" | "test"
    seed: int
    n_frames: int
    events: tuple[InjectedAnomaly, ...] = ()
    camera_seed: int | None = None  # the dashcam mount shared by the clips of a set

    @property
    def labels_name(self) -> str | None:
        return f"{Path(self.name).stem}.labels.csv" if self.split == "test" else None


def _layout(rng: np.random.Generator, n: int, durations: list[int], lead: int, gap: int) -> list[tuple[int, int]]:
    """Place events of the given lengths in n frames: `lead` normal frames first, >= `gap` after each."""
    k = len(durations)
    need = sum(durations) + lead + k * gap
    if need > n:  # tiny clips (tests): shrink everything proportionally
        f = n / need
        durations = [max(2, int(d * f)) for d in durations]
        lead, gap = max(1, int(lead * f)), max(1, int(gap * f))
    slack = max(0, n - sum(durations) - lead - k * gap)
    extra = np.floor(rng.dirichlet(np.ones(k + 1)) * slack).astype(int)
    spans, pos = [], lead + int(extra[0])
    for j, d in enumerate(durations):
        end = min(n, pos + d)
        if end - pos >= 1:
            spans.append((pos, end))
        pos = end + gap + int(extra[j + 1])
    return spans


def _deal_kinds(rng: np.random.Generator, counts: list[int]) -> list[list[str]]:
    """Kinds per clip: every kind equally often (the remainder drawn at random), no repeats within a clip."""
    total = sum(counts)
    pool = list(KINDS) * (total // len(KINDS)) + list(rng.choice(KINDS, total % len(KINDS), replace=False))
    best: list[list[str]] = []
    for _ in range(200):
        order = [str(k) for k in rng.permutation(pool)]
        dealt, at = [], 0
        for c in counts:
            dealt.append(order[at : at + c])
            at += c
        best = dealt
        if all(len(set(d)) == len(d) for d in dealt):
            break
    return best


def _varied_event(rng: np.random.Generator, kind: str, start: int, end: int, seen: Counter[str]) -> InjectedAnomaly:
    """An event whose seed gives the next variant of its kind in turn (box, tyre, ...; tear, blocks, black)."""
    variants = VARIANTS.get(kind, ("",))
    want = variants[seen[kind] % len(variants)]
    seen[kind] += 1
    for _ in range(200):
        event = InjectedAnomaly(kind, start, end, int(rng.integers(0, 2**31)))
        if event_variant(event) == want:
            break
    return event


def plan_sample_set(
    seed: int = 0,
    scale: int = 1,
    *,
    n_train: int = 7,
    n_test: int = 4,
    train_seconds: float = 20.0,
    test_seconds: float = 34.0,
    fps: float = 15.0,
) -> list[ClipPlan]:
    """The clips and events of a sample set, without rendering anything (cheap: tests check the plan)."""
    if scale < 1:
        raise ValueError("scale must be >= 1")
    rng = np.random.default_rng([seed, 99])
    plans = [
        ClipPlan(f"normal_{j:02d}.mp4", "train", seed * 1000 + j, round(train_seconds * scale * fps), (), seed)
        for j in range(n_train)
    ]
    n_test_frames = [round(test_seconds * scale * fps)] * n_test
    mean_event = sum(EVENT_SECONDS) / 2 * fps
    counts = [max(1, round(n * ANOMALY_SHARE / mean_event)) for n in n_test_frames]
    kinds = _deal_kinds(rng, counts)
    seen: Counter[str] = Counter()
    for j, (n, clip_kinds) in enumerate(zip(n_test_frames, kinds, strict=True)):
        raw = rng.uniform(*EVENT_SECONDS, len(clip_kinds))
        raw = np.clip(raw * (n * ANOMALY_SHARE / fps) / raw.sum(), *EVENT_SECONDS)  # about a third of the clip
        durations = [round(d * fps) for d in raw]
        spans = _layout(rng, n, durations, round(LEAD_SECONDS * fps), round(GAP_SECONDS * fps))
        # tiny clips may have room for fewer events than kinds dealt: strict=False drops the extra kinds
        events = tuple(_varied_event(rng, kind, a, b, seen) for kind, (a, b) in zip(clip_kinds, spans, strict=False))
        plans.append(ClipPlan(f"test_{j:02d}.mp4", "test", seed * 1000 + 500 + j, n, events, seed))
    return plans


def count_decoded_frames(path: Path) -> int:
    """How many frames OpenCV decodes from a video (what scoring will see), read to the end."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise RuntimeError(f"cannot open {path}")
        n = 0
        while cap.read()[0]:
            n += 1
        return n
    finally:
        cap.release()


def write_labels(path: Path, source: str, n_frames: int, fps: float, events: Sequence[InjectedAnomaly]) -> None:
    """One row per frame: `source,frame_index,timestamp_s,label,kind` (kind empty on normal frames)."""
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(LABEL_HEADER)
        for i, kind in enumerate(frame_kinds(events, n_frames)):
            w.writerow([source, i, f"{i / fps:.4f}", int(bool(kind)), kind])


def _write_clip(plan: ClipPlan, out_dir: Path, fps: float, width: int, height: int) -> dict[str, Any]:
    """Render, encode, decode back to check the frame count, and write the labels of one clip."""
    cv2.setNumThreads(1)
    path = out_dir / plan.name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path} (mp4v)")
    written = 0
    try:
        for frame in render_clip(plan.seed, plan.n_frames, fps, width, height, plan.events, plan.camera_seed):
            writer.write(frame)
            written += 1
    finally:
        writer.release()
    decoded = count_decoded_frames(path)
    if not written == decoded == plan.n_frames:
        raise RuntimeError(f"{path}: planned {plan.n_frames} frames, wrote {written}, decoded {decoded}")
    if plan.labels_name:
        write_labels(out_dir / plan.labels_name, plan.name, plan.n_frames, fps, plan.events)
    return {"file": plan.name, "decoded_frames": decoded}


def _manifest(plans: Sequence[ClipPlan], seed: int, scale: int, fps: float, width: int, height: int) -> dict[str, Any]:
    clips, by_kind = [], dict.fromkeys(KINDS, 0)
    for plan in plans:
        kinds = frame_kinds(plan.events, plan.n_frames)
        for k in kinds:
            if k:
                by_kind[k] += 1
        events = [
            {
                **e.to_dict(),
                "variant": event_variant(e),
                "start_s": round(e.start_frame / fps, 4),
                "end_s": round(e.end_frame / fps, 4),
            }
            for e in plan.events
        ]
        clips.append(
            {
                "file": plan.name,
                "split": plan.split,
                "seed": plan.seed,
                "n_frames": plan.n_frames,
                "duration_s": round(plan.n_frames / fps, 3),
                "labels": plan.labels_name,
                "anomalous_frames": sum(1 for k in kinds if k),
                "events": events,
            }
        )
    test = [c for c in clips if c["split"] == "test"]
    return {
        "generator": GENERATOR,
        "seed": seed,
        "scale": scale,
        "fps": fps,
        "width": width,
        "height": height,
        "fourcc": "mp4v",
        "label_columns": list(LABEL_HEADER),
        "note": "render_clip replaces each event's anchor/horizon per frame with the scene's own "
        "(ego lane a few metres ahead, current horizon); the values listed are the defaults",
        "totals": {
            "train_frames": sum(c["n_frames"] for c in clips if c["split"] == "train"),
            "test_frames": sum(c["n_frames"] for c in test),
            "test_normal_frames": sum(c["n_frames"] - c["anomalous_frames"] for c in test),
            "test_anomalous_frames": sum(c["anomalous_frames"] for c in test),
            "test_anomalous_frames_by_kind": by_kind,
        },
        "clips": clips,
    }


def generate_sample_set(
    out_dir: Path,
    seed: int = 0,
    scale: int = 1,
    *,
    n_train: int = 7,
    n_test: int = 4,
    train_seconds: float = 20.0,
    test_seconds: float = 34.0,
    fps: float = 15.0,
    width: int = 640,
    height: int = 360,
    workers: int = 1,
) -> list[Path]:
    """Render the training and test clips, their label CSVs and manifest.json into `out_dir`; return the paths.

    Every clip is decoded back after writing and must yield exactly its planned number of frames, so the
    label rows match what OpenCV reads. `workers` > 1 renders clips in parallel processes (same output).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_sample_set(
        seed, scale, n_train=n_train, n_test=n_test, train_seconds=train_seconds, test_seconds=test_seconds, fps=fps
    )
    jobs = sorted(plans, key=lambda p: -p.n_frames)  # longest first: better packing across workers
    if workers > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            list(pool.map(partial(_write_clip, out_dir=out_dir, fps=fps, width=width, height=height), jobs))
    else:
        for plan in jobs:
            _write_clip(plan, out_dir, fps, width, height)
    manifest = out_dir / "manifest.json"
    manifest.write_text(json.dumps(_manifest(plans, seed, scale, fps, width, height), indent=1) + "\n")
    paths = []
    for plan in plans:
        paths.append(out_dir / plan.name)
        if plan.labels_name:
            paths.append(out_dir / plan.labels_name)
    return [*paths, manifest]
