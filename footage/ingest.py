"""Ingestion: videos and image folders -> a stream of tagged frames.

Everything is a generator, so memory stays flat however long the input is. Which frames are kept
is decided from the frame index alone, before decoding: skipped video frames are only `grab()`bed
(never converted to BGR) and skipped images are never read. Problems are `IngestError`s that name
the file; errors found only at the end of a source (a truncated video, unreadable images in a
folder) are raised after every good frame has been yielded, so nothing already decoded is lost.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from footage.sampling import SamplingConfig

VIDEO_EXTENSIONS = (
    ".mp4",
    ".avi",
    ".mov",
    ".mkv",
    ".m4v",
    ".webm",
    ".ts",
    ".mts",
    ".m2ts",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".3gp",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

Transform = Callable[[np.ndarray], np.ndarray]
SourceKind = Literal["video", "images"]


class IngestError(Exception):
    """A source cannot be (fully) read; the message names the file and says what is wrong."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One kept frame. eq=False: frames compare by identity (array equality is not a bool)."""

    image: np.ndarray  # HxWx3 uint8 BGR as decoded, or the transform's output
    source: str  # the path as the user gave it
    index: int  # 0-based position in the source's decoded stream (not the sample number)
    timestamp_s: float  # index / fps (videos) or index / folder_fps (image folders)


@dataclass(frozen=True)
class SourceInfo:
    """What a source says about itself, without decoding it (frame_count as the container reports)."""

    source: str
    kind: SourceKind
    fps: float
    frame_count: int
    width: int
    height: int


# ---------------------------------------------------------------------------------------------
# Sources


def _has_extension(name: str, extensions: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(extensions))


def _natural_key(name: str) -> tuple[list[str | int], str]:
    """frame2 before frame10; case-insensitive, with the name itself as a deterministic tie-break."""
    parts: list[str | int] = [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]
    return parts, name


def _listdir(folder: str, extensions: Sequence[str]) -> list[str]:
    """Paths of the folder's files with these extensions, naturally sorted. Hidden files (such as
    macOS '._clip.mp4' companions on camera cards) are not media and are skipped."""
    try:
        entries = [e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
    except OSError as exc:
        raise IngestError(f"{folder}: cannot list folder: {exc.strerror or exc}") from exc
    names = sorted((n for n in entries if _has_extension(n, extensions)), key=_natural_key)
    return [os.path.join(folder, n) for n in names]


def expand_sources(paths: Sequence[str | Path] | str | Path) -> list[str]:
    """Turn the user's paths into sources: files as given; a folder with videos -> its videos
    (naturally sorted; stray images such as thumbnails beside them are ignored); any other folder ->
    one image-folder source. Paths that do not exist are kept, so that `iter_frames` reports them
    next to the other bad sources instead of one typo aborting the whole run."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        given = str(p)
        videos = _listdir(given, VIDEO_EXTENSIONS) if os.path.isdir(given) else []
        out.extend(videos or [given])
    return list(dict.fromkeys(out))  # drop repeats, keep order


def _source_kind(source: str) -> SourceKind:
    if not os.path.exists(source):
        raise IngestError(f"{source}: does not exist")
    if os.path.isdir(source) or _has_extension(source, IMAGE_EXTENSIONS):
        return "images"
    return "video"


def _image_files(source: str) -> list[str]:
    """The image files of an image source (a folder, or a single image file)."""
    if not os.path.isdir(source):
        return [source]
    files = _listdir(source, IMAGE_EXTENSIONS)
    if not files:
        has_videos = bool(_listdir(source, VIDEO_EXTENSIONS))
        hint = " (it holds videos: pass them, or the folder through expand_sources)" if has_videos else ""
        raise IngestError(f"{source}: folder contains no image files ({', '.join(IMAGE_EXTENSIONS)}){hint}")
    return files


def probe_source(path: str | Path, folder_fps: float = 10.0) -> SourceInfo:
    """Kind, rate, reported length and frame size of a source, reading as little as possible
    (for progress bars and output writers; image folders read their first readable image)."""
    source = str(path)
    if _source_kind(source) == "images":
        files = _image_files(source)
        first = next((img for img in map(_read_image, files) if img is not None), None)
        if first is None:
            raise IngestError(f"{source}: none of its {len(files)} image file(s) could be read")
        return SourceInfo(source, "images", float(folder_fps), len(files), first.shape[1], first.shape[0])
    cap = open_video(source)
    try:
        return SourceInfo(
            source,
            "video",
            video_fps(cap, source),
            int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
    finally:
        cap.release()


# ---------------------------------------------------------------------------------------------
# Frame selection


def _ceil_tolerant(x: float) -> int:
    """ceil that treats 3.0000000000000004 (0.3 * 10) as 3."""
    return round(x) if abs(x - round(x)) < 1e-6 else math.ceil(x)


def _floor_tolerant(x: float) -> int:
    return round(x) if abs(x - round(x)) < 1e-6 else math.floor(x)


class FrameSelector:
    """Decides from the frame index alone whether a frame is kept, so unkept frames are never decoded.

    The time window is [start_s, end_s). Within it, stride keeps every stride-th frame counted from
    the first one in the window; target_fps keeps the first frame of each 1/target_fps time slot.
    """

    def __init__(self, sampling: SamplingConfig, fps: float) -> None:
        self.sampling = sampling
        self.fps = fps
        self.first = _ceil_tolerant(sampling.start_s * fps)
        self.stop = None if sampling.end_s is None else _ceil_tolerant(sampling.end_s * fps)
        self.kept = 0
        self._last_slot = -1

    def finished(self, index: int) -> bool:
        """True once no later frame can be kept: past end_s, or max_frames reached."""
        at_end = self.stop is not None and index >= self.stop
        return at_end or (self.sampling.max_frames is not None and self.kept >= self.sampling.max_frames)

    def wants(self, index: int) -> bool:
        if index < self.first:
            return False
        offset = index - self.first
        if self.sampling.target_fps is None:
            return offset % self.sampling.stride == 0
        slot = _floor_tolerant(offset * self.sampling.target_fps / self.fps)
        if slot <= self._last_slot:
            return False
        self._last_slot = slot
        return True

    def skip_to(self, index: int) -> int:
        """On a new selector: count the frames before `index` that the sequential loop would keep,
        without decoding any, and return where that loop would stop (`index` if it gets there)."""
        for i in range(self.first, index):
            if self.finished(i):
                return i
            if self.wants(i):
                self.kept += 1
        return index


# ---------------------------------------------------------------------------------------------
# Videos


def _mp4_lacks_index(source: str) -> bool:
    """True for an MP4/MOV file whose top-level boxes end without a 'moov' box (the index, which
    recorders write last): the typical result of a recording cut off by power loss or a partial copy."""
    size = os.path.getsize(source)
    with open(source, "rb") as fh:
        if fh.read(8)[4:8] != b"ftyp":
            return False
        pos = 0
        while pos + 8 <= size:
            fh.seek(pos)
            header = fh.read(16)
            box_size, box_type = int.from_bytes(header[:4], "big"), header[4:8]
            if box_type == b"moov":
                return False
            if box_size == 1 and len(header) == 16:
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:
                box_size = size - pos
            if box_size < 8:
                return True
            pos += box_size
    return True


def _unopenable_reason(source: str) -> str:
    try:
        if os.path.getsize(source) == 0:
            return "file is empty (0 bytes)"
        if _mp4_lacks_index(source):
            return (
                "MP4/MOV file without its index ('moov' box, written when recording ends): the file is "
                "truncated (recording cut off or copy incomplete); OpenCV cannot decode any of its frames"
            )
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    return "not a readable video: OpenCV/FFmpeg could not open it (not a video file, or unsupported format)"


def open_video(source: str) -> cv2.VideoCapture:
    if _source_kind(source) != "video":
        raise IngestError(f"{source}: not a video file")
    cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise IngestError(f"{source}: {_unopenable_reason(source)}")
    return cap


def video_fps(cap: cv2.VideoCapture, source: str) -> float:
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    if not (math.isfinite(fps) and fps > 0):
        raise IngestError(f"{source}: video reports no valid frame rate ({fps}), so frames cannot be timed")
    return fps


def check_complete(source: str, decoded: int, reported: int) -> None:
    """Decoding stopped at `decoded` frames: fine if that is (about) what the container reported.
    Containers sometimes estimate their length, so one frame or 2% short is tolerated."""
    if decoded == 0:
        what = f"decoded 0 of {reported} frames" if reported > 0 else "no frames could be decoded"
        raise IngestError(f"{source}: {what}; the video is empty, truncated or corrupt")
    if reported > 0 and reported - decoded > max(1.0, 0.02 * reported):
        raise IngestError(f"{source}: decoded {decoded} of {reported} frames; the file looks truncated or corrupt")


class FrameReader:
    """The decode loop, for the local engine (a whole video) and the Ray engine (a range of one).

    Frames the selector does not want are grabbed (decoded as far as the codec needs) but never
    converted to BGR. After `read`, `next_index` is the first index not read and `stream_ended`
    says whether the video ran out (rather than the range or the selection ending on purpose).
    """

    def __init__(
        self, cap: cv2.VideoCapture, source: str, fps: float, selector: FrameSelector, transform: Transform | None
    ) -> None:
        self.cap, self.source, self.fps, self.selector, self.transform = cap, source, fps, selector, transform
        self.next_index = 0
        self.stream_ended = False

    def read(self, first: int = 0, stop: int | None = None) -> Iterator[Frame]:
        """Frames of [first, stop) that the selector keeps; the capture must be positioned at `first`."""
        index = first
        try:
            while (stop is None or index < stop) and not self.selector.finished(index):
                if not self.cap.grab():
                    self.stream_ended = True
                    break
                if self.selector.wants(index):
                    ok, image = self.cap.retrieve()
                    if not ok:
                        self.stream_ended = True
                        break
                    yield make_frame(image, self.source, index, self.fps, self.transform)
                    self.selector.kept += 1
                index += 1
        finally:
            self.next_index = index


def seek_exact(cap: cv2.VideoCapture, index: int) -> bool:
    """Position `cap` so that the next grab() returns frame `index`, if the container says it can.

    FFmpeg seeks to the keyframe before `index` and decodes forward to it; this was checked to give
    the same frames as sequential decoding for mp4v, MJPG, XVID, VP8, VP9 and H.264 files. A seek
    past the end of the stream reports another position, so it is also False.
    """
    return bool(cap.set(cv2.CAP_PROP_POS_FRAMES, index)) and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == index


def position_at(cap: cv2.VideoCapture, source: str, index: int) -> tuple[cv2.VideoCapture, int]:
    """`cap`, or a reopened capture of `source`, positioned so that the next grab() returns frame `index`.

    An exact seek where the container allows one, else the frames before `index` are grabbed (decoded as far
    as the codec needs, never converted to pixels). Returns the capture to use (the caller releases it) and
    the index reached: less than `index` when the stream ended first.
    """
    if index == 0 or seek_exact(cap, index):
        return cap, index
    cap.release()  # a failed seek leaves the position undefined: read up to `index` from the start
    cap = open_video(source)
    for i in range(index):
        if not cap.grab():
            return cap, i
    return cap, index


def _iter_video(source: str, sampling: SamplingConfig, transform: Transform | None, first: int) -> Iterator[Frame]:
    cap = open_video(source)
    try:
        fps = video_fps(cap, source)
        reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        selector = FrameSelector(sampling, fps)
        if first:
            if selector.skip_to(first) < first:
                return  # the selection ends before `first`: nothing is left to read
            cap, reached = position_at(cap, source, first)
            if reached < first:
                check_complete(source, decoded=reached, reported=reported)
                return
        reader = FrameReader(cap, source, fps, selector, transform)
        yield from reader.read(first)
        if reader.stream_ended:  # not stopped on purpose (end_s / max_frames): did the whole file decode?
            check_complete(source, decoded=reader.next_index, reported=reported)
    finally:
        cap.release()


def make_frame(image: np.ndarray, source: str, index: int, fps: float, transform: Transform | None) -> Frame:
    if transform is not None:
        image = transform(image)
    return Frame(image=image, source=source, index=index, timestamp_s=index / fps)


# ---------------------------------------------------------------------------------------------
# Image folders


def _read_image(path: str) -> np.ndarray | None:
    """HxWx3 uint8 BGR (grey and alpha images converted), or None if unreadable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


def _describe_bad_images(source: str, bad: list[str], total_bad: int, read: int) -> str:
    names = ", ".join(os.path.basename(b) for b in bad)
    if total_bad > len(bad):
        names += f" and {total_bad - len(bad)} more"
    if read == 0:
        return f"{source}: no readable images; {total_bad} unreadable image file(s): {names}"
    return f"{source}: skipped {total_bad} unreadable image file(s) (corrupt or not an image): {names}"


def _iter_images(source: str, sampling: SamplingConfig, transform: Transform | None, first: int) -> Iterator[Frame]:
    files = _image_files(source)
    fps = sampling.folder_fps
    selector = FrameSelector(sampling, fps)
    if first and selector.skip_to(first) < first:
        return
    bad: list[str] = []  # the first few names only: the message stays short, memory flat
    total_bad = 0
    shape: tuple[int, ...] | None = None
    for index, path in enumerate(files[first:], start=first):
        if selector.finished(index):
            break
        if not selector.wants(index):
            continue
        image = _read_image(path)
        if image is None:
            total_bad += 1
            if len(bad) < 5:
                bad.append(path)
            continue
        frame = make_frame(image, source, index, fps, transform)
        shape = shape or frame.image.shape
        if frame.image.shape != shape:
            raise IngestError(
                f"{source}: images differ in size: {os.path.basename(path)} gives {frame.image.shape} but earlier "
                f"images gave {shape}; resize them or pass a transform that resizes (the model's preprocessing does)"
            )
        yield frame
        selector.kept += 1
    if total_bad:
        raise IngestError(_describe_bad_images(source, bad, total_bad, selector.kept))


# ---------------------------------------------------------------------------------------------
# Public iteration


def iter_source_frames(
    path: str | Path, sampling: SamplingConfig | None = None, transform: Transform | None = None, first: int = 0
) -> Iterator[Frame]:
    """Kept frames of one video or image folder, in order, with `transform` applied in this
    (decode) thread. Raises IngestError naming the file; where the problem shows only at the end
    (truncated video, unreadable images in a folder) it is raised after all good frames.

    `first` starts at that frame index, keeping exactly the frames a read from the start would keep
    from there on (a resumed run); the frames before it are skipped without converting them to pixels."""
    source = str(path)
    sampling = sampling or SamplingConfig()
    if _source_kind(source) == "images":
        yield from _iter_images(source, sampling, transform, first)
    else:
        yield from _iter_video(source, sampling, transform, first)


def iter_frames(
    paths: Sequence[str | Path] | str | Path,
    sampling: SamplingConfig | None = None,
    transform: Transform | None = None,
    on_error: Callable[[str, IngestError], None] | None = None,
    first: Mapping[str, int] | None = None,
) -> Iterator[Frame]:
    """Frames of several sources, one after the other. A bad source goes to `on_error(path, err)`
    and the run goes on with the next one (frames it yielded before failing stay yielded);
    without `on_error` the first IngestError is raised. `first` maps a source to the frame index
    it starts at (see `iter_source_frames`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths:
        try:
            yield from iter_source_frames(path, sampling, transform, (first or {}).get(str(path), 0))
        except IngestError as err:
            if on_error is None:
                raise
            on_error(str(path), err)
