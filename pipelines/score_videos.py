"""Offline scoring of recorded videos and image folders: scores CSV, events JSON, annotated videos.

Frames stream through in batches (decode runs ahead in a worker thread), so memory does not grow
with the length of the input. Rows are flushed batch by batch: if a run is interrupted, what was
scored so far is on disk.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from anomaly.detector import Detector
from anomaly.events import Event, EventConfig, EventTracker
from anomaly.scoring import FrameScores, score_prepared
from pipelines.annotate import AnnotatedVideoWriter, draw_annotation
from pipelines.ingest import Frame, IngestError, SamplingConfig, iter_frames, probe_source
from pipelines.prefetch import batched, prefetch

REQUIRED_COLUMNS = (
    "source",
    "frame_index",
    "timestamp_s",
    "score",
    "recon_error",
    "disc_score",
    "spatial_score",
    "latent_score",
    "is_anomaly",
)
# signals of the memory and the discriminator's patches (checkpoint format 4), after the original columns
EXTRA_COLUMNS = ("knn_score", "local_score", "disc_patch_score")
CSV_COLUMNS = REQUIRED_COLUMNS + EXTRA_COLUMNS


@dataclass
class ScoredBatch:
    frames: list[Frame]
    scores: FrameScores


@dataclass
class ScoreRunSummary:
    frames: int = 0
    anomalies: int = 0
    events: list[Event] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


def csv_rows(batch: ScoredBatch) -> Iterator[tuple]:
    s = batch.scores
    for i, f in enumerate(batch.frames):
        yield (
            f.source,
            f.index,
            f"{f.timestamp_s:.4f}",
            f"{s.score[i]:.6g}",
            f"{s.recon_error[i]:.6g}",
            f"{s.disc_score[i]:.6g}",
            f"{s.spatial_score[i]:.6g}",
            f"{s.latent_score[i]:.6g}",
            int(s.is_anomaly[i]),
            *(
                f"{extra[i]:.6g}" if extra is not None else ""
                for extra in (s.knn_score, s.local_score, s.disc_patch_score)
            ),
        )


def expected_frames(sources: Sequence[str], sampling: SamplingConfig) -> int | None:
    """Rough total for the progress bar; None when a source cannot say."""
    total = 0
    for src in sources:
        try:
            info = probe_source(src, sampling.folder_fps)
        except IngestError:
            continue
        if not info.frame_count or info.frame_count <= 0:
            return None
        n = info.frame_count
        if sampling.target_fps and info.fps:
            n = int(n * min(1.0, sampling.target_fps / info.fps))
        else:
            n = n // sampling.stride
        total += min(n, sampling.max_frames or n)
    return total or None


def annotated_path(directory: Path, source: str) -> Path:
    return Path(directory) / f"{Path(source).stem}.annotated.mp4"


def score_sources(
    detector: Detector,
    sources: Sequence[str],
    out_csv: Path,
    *,
    sampling: SamplingConfig | None = None,
    batch_size: int = 16,
    events_path: Path | None = None,
    event_config: EventConfig | None = None,
    annotate_dir: Path | None = None,
    progress: bool = True,
    on_error: Callable[[str, IngestError], None] | None = None,
) -> ScoreRunSummary:
    """Score every frame of `sources` into `out_csv`; bad sources are reported and skipped."""
    sampling = sampling or SamplingConfig()
    summary = ScoreRunSummary(sources=list(sources))
    pre = detector.preprocessor

    def record_error(src: str, err: IngestError) -> None:
        summary.errors[src] = str(err)
        if on_error:
            on_error(src, err)

    # With annotation the original frames are needed for drawing, so preparation moves to this thread.
    transform = None if annotate_dir else pre.prepare
    frames = prefetch(
        iter_frames(sources, sampling, transform=transform, on_error=record_error), maxsize=4 * batch_size
    )
    trackers: dict[str, EventTracker] = {}
    writers: dict[str, AnnotatedVideoWriter] = {}
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=expected_frames(sources, sampling), desc="score", unit="frame", disable=not progress)
    try:
        with out_csv.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for batch in batched(frames, batch_size):
                images = [f.image for f in batch] if transform else [pre.prepare(f.image) for f in batch]
                scored = ScoredBatch(batch, score_prepared(detector, images))
                writer.writerows(csv_rows(scored))
                fh.flush()
                track_events(scored, trackers, detector.threshold, event_config, summary)
                if annotate_dir:
                    write_annotated(scored, writers, annotate_dir, detector, sampling)
                summary.frames += len(batch)
                summary.anomalies += int(scored.scores.is_anomaly.sum())
                bar.update(len(batch))
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    for tracker in trackers.values():
        summary.events.extend(tracker.close())
    if events_path:
        write_events(events_path, summary.events, detector.threshold)
    return summary


def track_events(
    scored: ScoredBatch,
    trackers: dict[str, EventTracker],
    threshold: float,
    config: EventConfig | None,
    summary: ScoreRunSummary,
) -> None:
    for f, score in zip(scored.frames, scored.scores.score, strict=True):
        tracker = trackers.get(f.source)
        if tracker is None:
            tracker = trackers[f.source] = EventTracker(f.source, threshold, config)
        summary.events.extend(tracker.update(f.index, f.timestamp_s, float(score)).finished)


def annotated_fps(source: str, sampling: SamplingConfig) -> float:
    """Frame rate of the annotated video: the rate at which frames were sampled from the source."""
    fps = probe_source(source, sampling.folder_fps).fps
    return min(fps, sampling.target_fps) if sampling.target_fps else fps / sampling.stride


def write_annotated(
    scored: ScoredBatch,
    writers: dict[str, AnnotatedVideoWriter],
    directory: Path,
    detector: Detector,
    sampling: SamplingConfig,
) -> None:
    s = scored.scores
    for i, f in enumerate(scored.frames):
        writer = writers.get(f.source)
        if writer is None:
            fps = annotated_fps(f.source, sampling)
            writer = writers[f.source] = AnnotatedVideoWriter(annotated_path(directory, f.source), fps)
        writer.write(
            draw_annotation(f.image, s.heatmap[i], float(s.score[i]), s.threshold, f.timestamp_s, detector.preprocessor)
        )


def write_events(path: Path, events: list[Event], threshold: float) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"threshold": threshold, "events": [e.to_dict() for e in events]}
    path.write_text(json.dumps(payload, indent=2))


def read_scores_csv(path: Path) -> dict[str, np.ndarray]:
    """A scores CSV back as columns (numeric ones as arrays)."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {c: np.array([]) for c in CSV_COLUMNS}
    cols: dict[str, np.ndarray] = {"source": np.array([r["source"] for r in rows], dtype=object)}
    for c in CSV_COLUMNS[1:]:
        if c in rows[0] and all(r[c] not in ("", None) for r in rows):
            cols[c] = np.array([float(r[c]) for r in rows])
    cols["frame_index"] = cols["frame_index"].astype(int)
    cols["is_anomaly"] = cols["is_anomaly"].astype(bool)
    return cols
