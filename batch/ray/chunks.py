"""Work chunks: a source cut into ranges of decoded frames, each decoded from a seek exactly as the local engine
would read it, and put back together in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from anomaly.config import PreprocessConfig
from anomaly.preprocess import Preprocessor
from footage.ingest import (
    Frame,
    FrameReader,
    FrameSelector,
    IngestError,
    check_complete,
    iter_source_frames,
    open_video,
    position_at,
    probe_source,
    video_fps,
)
from footage.sampling import SamplingConfig

OPEN_END = -1  # a chunk's `stop` when it runs to the end of the stream
DECODER_MEMORY_BYTES = 768 * 2**20  # a decode worker: Python with OpenCV and torch loaded, and its decoder
# Errors of one source (unreadable file, a frame the preprocessing rejects): recorded, the run goes on.
SOURCE_ERRORS = (IngestError, ValueError, OSError, cv2.error)


@dataclass(frozen=True)
class ChunkSpec:
    """A range [first, stop) of one source's decoded frame indices (`whole`: the source, read by ingest)."""

    source_id: int
    source: str
    chunk: int
    n_chunks: int
    first: int = 0
    stop: int = OPEN_END
    whole: bool = True
    reported: int = 0  # frame count the container reports (the truncation check compares to it)


@dataclass
class ChunkResult:
    """A scored chunk as it comes back to the driver: its rows already formatted as CSV text."""

    source_id: int
    chunk: int
    n_chunks: int
    csv: str
    frames: int
    anomalies: int
    eof: int = OPEN_END  # index at which decoding hit the end of the stream, if it did
    reported: int = 0
    error: str = ""


@dataclass
class DecodedChunk:
    frames: list[Frame]
    eof: int = OPEN_END
    error: str = ""


def plan_source(source_id: int, source: str, sampling: SamplingConfig, chunk_frames: int) -> list[ChunkSpec]:
    """Cut one source into chunks of `chunk_frames` decoded frames, inside the sampling window.

    Image folders, short videos, videos that do not report their length and sources that cannot
    be opened are one whole chunk, read by the local engine's own `iter_source_frames` (which
    also produces the error message for a bad source). The last chunk of a video runs to the end
    of the stream, so a container that under-reports its length loses no frames.
    """
    whole = [ChunkSpec(source_id, source, 0, 1)]
    if chunk_frames <= 0:
        return whole
    try:
        info = probe_source(source, sampling.folder_fps)
    except IngestError:
        return whole
    if info.kind != "video" or info.frame_count <= 0:
        return whole
    selector = FrameSelector(sampling, info.fps)
    first = selector.first
    stop = info.frame_count if selector.stop is None else min(info.frame_count, selector.stop)
    if sampling.max_frames is not None:  # where the local loop would stop (arithmetic only)
        stop = selector.skip_to(stop)
    if stop - first <= chunk_frames:
        return whole
    bounds = list(range(first, stop, chunk_frames))
    n = len(bounds)
    # every chunk stops where the next begins; the last runs on until the local loop would stop
    # (end of stream, end_s or max_frames), so a container that under-reports its length loses nothing
    return [
        ChunkSpec(
            source_id,
            source,
            i,
            n,
            first=bounds[i],
            stop=bounds[i + 1] if i + 1 < n else OPEN_END,
            whole=False,
            reported=info.frame_count,
        )
        for i in range(n)
    ]


def selector_at(sampling: SamplingConfig, fps: float, index: int) -> FrameSelector | None:
    """The frame selector as the local engine's sequential loop leaves it just before `index`
    (None when that loop would already have stopped). Replays the selection, which costs
    arithmetic only: no frame before `index` is decoded."""
    selector = FrameSelector(sampling, fps)
    if selector.skip_to(index) < index or selector.finished(index):
        return None
    return selector


def decode_video_range(spec: ChunkSpec, sampling: SamplingConfig, transform: Callable) -> DecodedChunk:
    """The frames the local engine keeps in [first, stop), decoded from a seek to `first`."""
    cap = open_video(spec.source)
    try:
        fps = video_fps(cap, spec.source)
        selector = selector_at(sampling, fps, spec.first)
        if selector is None:
            return DecodedChunk([])  # sampling stopped before this chunk (max_frames)
        cap, reached = position_at(cap, spec.source, spec.first)
        if reached < spec.first:
            return DecodedChunk([], eof=reached)
        reader = FrameReader(cap, spec.source, fps, selector, transform)
        frames = list(reader.read(spec.first, None if spec.stop == OPEN_END else spec.stop))
        return DecodedChunk(frames, eof=reader.next_index if reader.stream_ended else OPEN_END)
    finally:
        cap.release()


def decode_chunk(spec: ChunkSpec, sampling: SamplingConfig, preprocessor: Preprocessor) -> DecodedChunk:
    """Decode and prepare one chunk; a bad source becomes an error message, not an exception."""
    frames: list[Frame] = []
    try:
        if spec.whole:
            for frame in iter_source_frames(spec.source, sampling, transform=preprocessor.prepare):
                frames.append(frame)
            return DecodedChunk(frames)
        return decode_video_range(spec, sampling, preprocessor.prepare)
    except SOURCE_ERRORS as exc:
        return DecodedChunk(frames, error=str(exc) if isinstance(exc, IngestError) else f"{spec.source}: {exc}")


def decode_row(row: dict[str, Any], sampling: SamplingConfig, preprocess: PreprocessConfig) -> dict[str, Any]:
    """Ray Data map function: chunk spec row -> prepared frames (model-size RGB, small to ship)."""
    spec = ChunkSpec(**{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()})
    pre = Preprocessor(preprocess)
    decoded = decode_chunk(spec, sampling, pre)
    h, w = pre.size
    images = np.stack([f.image for f in decoded.frames]) if decoded.frames else np.zeros((0, h, w, 3), np.uint8)
    return {
        "source_id": spec.source_id,
        "source": spec.source,
        "chunk": spec.chunk,
        "n_chunks": spec.n_chunks,
        "reported": spec.reported,
        "images": images,
        "indices": np.array([f.index for f in decoded.frames], dtype=np.int64),
        "timestamps": np.array([f.timestamp_s for f in decoded.frames], dtype=np.float64),
        "eof": decoded.eof,
        "error": decoded.error,
    }


def assemble(source: str, parts: Sequence[ChunkResult]) -> tuple[str, int, int, str | None]:
    """A source's rows from its chunks, in order, and its error: what the local engine reports.

    Rows of chunks after the one where decoding stopped early are dropped (sequential decoding
    would not have reached them); the stop is checked against the container's frame count with
    the local engine's rule, so a truncated file fails with the same message.
    """
    text, frames, anomalies = [], 0, 0
    for part in sorted(parts, key=lambda p: p.chunk):
        text.append(part.csv)
        frames += part.frames
        anomalies += part.anomalies
        if part.error:
            return "".join(text), frames, anomalies, part.error
        if part.eof != OPEN_END:
            try:
                check_complete(source, decoded=part.eof, reported=part.reported)
            except IngestError as exc:
                return "".join(text), frames, anomalies, str(exc)
            break
    return "".join(text), frames, anomalies, None
