"""Read training sources into prepared frames, per source, for `anomaly.training.train`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import closing
from itertools import groupby

import numpy as np

from anomaly.preprocess import Preprocessor
from footage.ingest import IngestError, iter_frames, iter_source_frames
from footage.prefetch import prefetch
from footage.sampling import SamplingConfig


def load_prepared_frames(
    sources: Sequence[str],
    sampling: SamplingConfig,
    preprocessor: Preprocessor,
    max_frames: int,
    on_error: Callable[[str, IngestError], None] | None = None,
) -> list[np.ndarray]:
    """Prepared (model-size RGB) frames of each source, in time order.

    Training frames are held in memory at the model's small input size (27 KB a frame at the
    default 128x72), so `max_frames` bounds memory; each source contributes frames evenly spaced
    in time rather than only its beginning.
    """
    return [frames for _, frames in load_named_prepared_frames(sources, sampling, preprocessor, max_frames, on_error)]


def load_named_prepared_frames(
    sources: Sequence[str],
    sampling: SamplingConfig,
    preprocessor: Preprocessor,
    max_frames: int,
    on_error: Callable[[str, IngestError], None] | None = None,
) -> list[tuple[str, np.ndarray]]:
    """`load_prepared_frames` with each source's name beside its frames."""
    frames = prefetch(iter_frames(sources, sampling, transform=preprocessor.prepare, on_error=on_error))
    per_source = [(name, np.stack([f.image for f in group])) for name, group in groupby(frames, key=lambda f: f.source)]
    if not per_source:
        raise IngestError("no frames could be read from the training sources")
    total = sum(len(s) for _, s in per_source)
    if total > max_frames:
        keep = max_frames / total
        per_source = [
            (name, s[np.linspace(0, len(s) - 1, max(2, int(len(s) * keep))).round().astype(int)])
            for name, s in per_source
        ]
    return per_source


def load_stretch(source: str, start_frame: int, end_frame: int, preprocessor: Preprocessor) -> np.ndarray:
    """Prepared frames `start_frame..end_frame` (inclusive) of one source: a reviewed event's stretch."""
    frames = []
    with closing(iter_source_frames(source, SamplingConfig(), transform=preprocessor.prepare, first=start_frame)) as it:
        for frame in it:
            if frame.index > end_frame:
                break
            frames.append(frame.image)
    if not frames:
        raise IngestError(f"{source}: no frames {start_frame}-{end_frame} (is it the file that was reviewed?)")
    return np.stack(frames)
