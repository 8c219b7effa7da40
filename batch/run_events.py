"""What a run makes of its scored frames besides the CSV: events per source (and their clips), drift per camera.

Both are fed frame by frame in time order, as the service feeds the same trackers from streams, so a
recorded drive and a live one report the same events and the same drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from anomaly.drift import DriftConfig, DriftTracker
from anomaly.events import Event, EventConfig, EventTracker
from anomaly.frame_scores import SIGNAL_FIELDS, FrameScorer, FrameScores, ProfileView, z_scores
from footage.clips import ClipFrame, ClipRecorder
from footage.scores_csv import ScoredBatch


class RunEvents:
    """The event trackers of a run, one per source, each closed as soon as its source ends (sources are read
    one after another), so a source's events and its last clip are complete before the next source's.

    With a clip recorder, every frame goes to it with what it did to its tracker. Finished events are
    appended to `events`, with the run's `camera`.
    """

    def __init__(
        self,
        threshold: float,
        config: EventConfig | None,
        events: list[Event],
        *,
        camera: str | None = None,
        recorder: ClipRecorder | None = None,
    ) -> None:
        self.threshold, self.config, self.events = threshold, config, events
        self.camera, self.recorder = camera, recorder
        self.trackers: dict[str, EventTracker] = {}

    def replay(self, source: str, rows: Sequence[tuple[int, float, float]]) -> None:
        """The rows an interrupted run wrote, from their (rounded) scores."""
        tracker = self._tracker(source)
        for row in rows:
            self._collect(tracker.update(*row).finished)

    def add(self, scored: ScoredBatch, detector: FrameScorer) -> None:
        s = scored.scores
        signals = top_signals(s, detector.calibrated) if self.recorder is not None else [None] * len(s)
        for i, f in enumerate(scored.frames):
            update = self._tracker(f.source).update(f.index, f.timestamp_s, float(s.score[i]))
            if self.recorder is not None:
                frame = ClipFrame(
                    f.source, f.image, s.heatmap[i], float(s.score[i]), s.threshold, f.timestamp_s, f.index, signals[i]
                )
                self.recorder.add(frame, update)
            self._collect(update.finished)

    def end_source(self, source: str) -> None:
        tracker = self.trackers.pop(source, None)
        last = tracker.close() if tracker is not None else []
        if self.recorder is not None:
            self.recorder.end_source(source, last)
        self._collect(last)

    def close(self) -> None:
        for source in list(self.trackers):
            self.end_source(source)

    def _tracker(self, source: str) -> EventTracker:
        """The source's tracker; a new source means the others have ended."""
        tracker = self.trackers.get(source)
        if tracker is None:
            self.close()
            tracker = self.trackers[source] = EventTracker(source, self.threshold, self.config)
        return tracker

    def _collect(self, finished: Sequence[Event]) -> None:
        for ev in finished:
            ev.camera = self.camera
        self.events.extend(finished)


def top_signals(scores: FrameScores, profile: ProfileView) -> list[str | None]:
    """The signal that made the most of each frame's score: the one with the largest calibrated z-score of
    the profile's signals, which is the score under the maximum and its largest share under the log-mean-exp
    (`anomaly.frame_scores.combine`). None where a signal was not computed."""
    columns = {n: getattr(scores, SIGNAL_FIELDS[n]) for n in profile.signals}
    if not columns or any(c is None for c in columns.values()):
        return [None] * len(scores)
    z = z_scores(columns, profile.loc, profile.scale, profile.signals)
    return [profile.signals[i] for i in z.argmax(axis=0)]


class RunDrift:
    """Drift of the run's camera (`anomaly.drift`), over its sources in the order they are read.

    A camera's drive is often one file a minute, so the sources are one stream of time for the
    monitor (timestamps that start again at 0 continue its clock); each drift names the source and
    timestamp where it started and ended.
    """

    def __init__(self, config: DriftConfig, detector: FrameScorer, camera: str | None) -> None:
        self.tracker = DriftTracker.for_scorer(config, detector)
        self.camera = camera
        self.started_in: list[str] = []  # per drift, in order: the source of the frame that raised it ...
        self.ended_in: list[str] = []  # ... and of the frame that ended it

    def add(self, scored: ScoredBatch) -> None:
        for f, score in zip(scored.frames, scored.scores.score, strict=True):
            update = self.tracker.update(self.camera, f.timestamp_s, float(score))
            if update.started:
                self.started_in.append(f.source)
            elif update.ended:
                self.ended_in.append(f.source)

    def events(self) -> list[dict[str, Any]]:
        """Every drift of the run, in order (one camera: the finished ones, then one still open with `end_s`
        None and its peak so far), each with the sources where it started and ended."""
        out = []
        for i, event in enumerate(self.tracker.events()):
            ended = {"end_source": self.ended_in[i]} if i < len(self.ended_in) else {}
            out.append({**event.to_dict(), "source": self.started_in[i], **ended})
        return out
