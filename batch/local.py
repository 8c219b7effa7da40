"""Offline scoring of recorded videos and image folders: scores CSV, events JSON, annotated videos, incident clips.

Frames stream through in batches (decode runs ahead in a worker thread), so memory does not grow
with the length of the input. Rows are flushed batch by batch: if a run is interrupted, what was
scored so far is on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomaly.drift import DriftConfig
from anomaly.events import Event, EventConfig
from anomaly.frame_scores import FrameScorer
from anomaly.profiles import rates_by_source
from anomaly.progress import progress_bar
from batch.run_events import RunDrift, RunEvents
from footage.clips import MAX_WIDTH, ClipRecorder
from footage.events_json import write_events_json
from footage.heatmap import AnnotatedVideoWriter, draw_annotation
from footage.ingest import IngestError, iter_frames, probe_source
from footage.prefetch import batched, prefetch
from footage.sampling import SamplingConfig
from footage.scores_csv import (
    ScoredBatch,
    ScoresWriter,
    ScoringRun,
    WrittenRows,
    cut_to_complete_rows,
    read_run_record,
    run_record_path,
    write_run_record,
)


@dataclass
class ScoreRunSummary:
    """What a run did. A source `failed` when it gave no frame at all; it `had problems` when it ended with
    an error after some of its frames were scored (a truncated video, a corrupt image in a folder)."""

    frames: int = 0  # rows in the CSV, those of an earlier interrupted run included
    resumed_frames: int = 0  # of them, rows the interrupted run had written
    events: list[Event] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # every source that ended with an error
    sources: list[str] = field(default_factory=list)
    frames_per_source: dict[str, int] = field(default_factory=dict)
    flagged_per_source: dict[str, int] = field(default_factory=dict)  # of them, frames above the threshold
    drift: list[dict[str, Any]] = field(default_factory=list)  # camera drift found (`anomaly.drift` events)

    @property
    def failed(self) -> dict[str, str]:
        return {s: e for s, e in self.errors.items() if not self.frames_per_source.get(s)}

    @property
    def with_problems(self) -> dict[str, str]:
        return {s: e for s, e in self.errors.items() if self.frames_per_source.get(s)}

    @property
    def anomalies(self) -> int:
        """Frames above the threshold, those of an earlier interrupted run included."""
        return sum(self.flagged_per_source.values())

    @property
    def scored_sources(self) -> int:
        return sum(1 for n in self.frames_per_source.values() if n)

    def flagged_rates(self) -> dict[str, float]:
        """Per source of enough frames (`anomaly.profiles.rates_by_source`), the share of them flagged."""
        return rates_by_source(self.frames_per_source, self.flagged_per_source)


class OutputExists(ValueError):
    """The scores CSV is there already and the run was not asked to resume or overwrite it."""


def open_run(out_csv: Path, run: ScoringRun, *, resume: bool, overwrite: bool) -> WrittenRows | None:
    """What to continue from: the rows an interrupted run left (`resume`), or None to start afresh.

    Without `resume` an existing CSV is kept unless `overwrite`; with it, the CSV must have been written
    by the same model, threshold, sampling and sources, as its run record says.
    """
    out_csv = Path(out_csv)
    if not out_csv.exists():
        return None
    if not resume:
        if overwrite:
            return None
        raise OutputExists(f"{out_csv} exists: pass --resume to continue that run or --overwrite to replace it")
    previous = read_run_record(out_csv)
    if previous is None:
        raise ValueError(
            f"cannot resume {out_csv}: {run_record_path(out_csv).name} beside it, which records how it was written, "
            "is missing or unreadable; rerun with --overwrite"
        )
    differences = previous.differences(run)
    if differences:
        raise ValueError(f"cannot resume {out_csv}: it was written with another " + "; ".join(differences))
    written = cut_to_complete_rows(out_csv)
    written.finished, written.problems = previous.finished, dict(previous.problems)
    return written


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
    detector: FrameScorer,
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
    run: ScoringRun | None = None,
    resume_from: WrittenRows | None = None,
    clips_dir: Path | None = None,
    clip_context_s: float = 2.0,
    clip_max_width: int = MAX_WIDTH,
    camera: str | None = None,
    drift: DriftConfig | None = None,
) -> ScoreRunSummary:
    """Score every frame of `sources` into `out_csv`; bad sources are reported and skipped.

    With `run`, its record is kept beside the CSV (`<csv>.run.json`) and updated as each source
    finishes, so an interrupted run can be continued: `resume_from` (see `open_run`) appends to the
    CSV, skipping the finished sources and starting the unfinished one after its last row.
    With `clips_dir` (and `events_path`, which points at them) each event's stretch, with
    `clip_context_s` seconds around it, is written there as an MP4 (at most `clip_max_width` px wide) and a
    JPEG (`footage.clips`).
    `camera` (the profile's name) is recorded on every event. With `drift`, the camera's scores are watched
    for drift from its calibration over all sources (`anomaly.drift`); what is found goes to the summary
    and the events JSON (`drift`). A resumed run watches only the frames it scores itself.
    """
    sampling = sampling or SamplingConfig()
    summary = ScoreRunSummary(sources=list(sources))
    pre = detector.preprocessor
    if resume_from is not None and annotate_dir is not None:
        raise ValueError("--annotate cannot continue an interrupted run's videos; resume without it")
    if resume_from is not None and clips_dir is not None:
        raise ValueError("--clips cannot continue an interrupted run's clips; resume without it")
    if clips_dir is not None and events_path is None:
        raise ValueError("--clips needs --events: the events JSON is what points at the clips")
    finished = list(resume_from.finished) if resume_from is not None else []
    if resume_from is not None:
        summary.errors.update(resume_from.problems)

    def record_error(src: str, err: IngestError) -> None:
        summary.errors[src] = str(err)
        if on_error:
            on_error(src, err)

    recorder = None
    if clips_dir is not None and events_path is not None:
        recorder = ClipRecorder(
            clips_dir,
            pre,
            lambda source: annotated_fps(source, sampling),
            context_s=clip_context_s,
            max_width=clip_max_width,
            links_relative_to=Path(events_path).parent,
        )
    events = RunEvents(detector.threshold, event_config, summary.events, camera=camera, recorder=recorder)
    if resume_from is not None:  # the events of the rows already written, from their (rounded) scores
        for source, rows in resume_from.rows.items():
            events.replay(source, rows)
            summary.frames_per_source[source] = len(rows)
            summary.flagged_per_source[source] = resume_from.anomalies_per_source.get(source, 0)
        summary.frames = summary.resumed_frames = resume_from.frames
    watch = RunDrift(drift, detector, camera) if drift is not None else None
    todo = [s for s in sources if s not in finished]
    first = {s: i + 1 for s, i in resume_from.last_index.items()} if resume_from is not None else {}

    # Annotation and clips draw on the original frames, so preparation moves to this thread.
    transform = None if annotate_dir or recorder else pre.prepare
    frames = prefetch(
        iter_frames(todo, sampling, transform=transform, on_error=record_error, first=first), maxsize=4 * batch_size
    )
    writers: dict[str, AnnotatedVideoWriter] = {}
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)

    def finish(done: Sequence[str]) -> None:
        if run is not None:
            finished.extend(d for d in done if d not in finished)
            # a copy first: the decode thread adds errors while this one writes the record
            problems = {s: e for s, e in dict(summary.errors).items() if s in finished}
            write_run_record(out_csv, run.model_copy(update={"finished": tuple(finished), "problems": problems}))

    finish([])
    current = 0  # position in `todo` of the source being read
    bar = progress_bar(total=expected_frames(todo, sampling), desc="score", unit="frame", enabled=progress)
    completed = False
    try:
        append = resume_from is not None and out_csv.stat().st_size > 0
        with out_csv.open("a" if append else "w", newline="") as fh:
            writer = ScoresWriter(fh, header=not append)
            for batch in batched(frames, batch_size):
                images = [f.image for f in batch] if transform else [pre.prepare(f.image) for f in batch]
                scored = ScoredBatch(batch, detector.score_prepared(images))
                writer.write(scored)
                events.add(scored, detector)
                if watch is not None:
                    watch.add(scored)
                if annotate_dir:
                    write_annotated(scored, writers, annotate_dir, detector, sampling)
                for f, flagged in zip(batch, scored.scores.is_anomaly, strict=True):
                    summary.frames_per_source[f.source] = summary.frames_per_source.get(f.source, 0) + 1
                    summary.flagged_per_source[f.source] = summary.flagged_per_source.get(f.source, 0) + int(flagged)
                summary.frames += len(batch)
                bar.update(len(batch))
                reached = todo.index(batch[-1].source, current)
                if reached > current:  # every source before the one this batch ended in is complete
                    finish(todo[current:reached])
                    current = reached
        events.close()  # each source's last events (and its clip)
        finish(todo)
        completed = True
    finally:
        bar.close()
        for w in writers.values():
            w.close()
        if recorder is not None:  # an exception or an interruption leaves no partial clip behind
            recorder.close(error=not completed)
    summary.drift = watch.events() if watch is not None else []
    if events_path:
        write_events_json(events_path, summary.events, detector.threshold, camera=camera, drift=summary.drift)
    return summary


def annotated_fps(source: str, sampling: SamplingConfig) -> float:
    """Frame rate of the annotated video: the rate at which frames were sampled from the source."""
    fps = probe_source(source, sampling.folder_fps).fps
    return min(fps, sampling.target_fps) if sampling.target_fps else fps / sampling.stride


def write_annotated(
    scored: ScoredBatch,
    writers: dict[str, AnnotatedVideoWriter],
    directory: Path,
    detector: FrameScorer,
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
