"""Ingestion on real encoded files: each frame carries its index as 8 black/white bars (one per bit),
which survives lossy codecs, so every test can check that the right frames came back."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from footage.ingest import (
    Frame,
    FrameSelector,
    IngestError,
    expand_sources,
    iter_frames,
    iter_source_frames,
    probe_source,
)
from footage.prefetch import prefetch
from footage.sampling import SamplingConfig

W, H, FPS, N = 160, 90, 10.0, 30
BAR = W // 8


def pattern(i: int, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """A BGR frame whose bar k is white when bit k of `i` is set."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    bar = w // 8
    for bit in range(8):
        if i >> bit & 1:
            img[:, bit * bar : (bit + 1) * bar] = 255
    return img


def read_pattern(img: np.ndarray) -> int:
    bar = img.shape[1] // 8
    return sum(1 << bit for bit in range(8) if img[:, bit * bar + 3 : (bit + 1) * bar - 3].mean() > 127)


def write_video(path: Path, fourcc: str, n: int = N, fps: float = FPS) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert writer.isOpened(), f"cannot write {path}"
    for i in range(n):
        writer.write(pattern(i))
    writer.release()
    return path


def write_images(folder: Path, numbers: list[int], ext: str = ".png", size: tuple[int, int] = (W, H)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in numbers:
        assert cv2.imwrite(str(folder / f"frame{i}{ext}"), pattern(i, size))
    return folder


def indices(frames: list[Frame]) -> list[int]:
    return [f.index for f in frames]


@pytest.fixture(params=[("mp4v", ".mp4"), ("MJPG", ".avi")], ids=["mp4", "avi"])
def video(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    fourcc, ext = request.param
    return write_video(tmp_path / f"clip{ext}", fourcc)


@pytest.fixture
def mp4(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4", "mp4v")


@pytest.fixture
def capture_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts grab/retrieve calls on every cv2.VideoCapture: does ingestion decode what it skips?"""
    calls = {"grab": 0, "retrieve": 0, "release": 0}
    real_capture = cv2.VideoCapture

    class CountingCapture:
        def __init__(self, *args: object) -> None:
            self._cap = real_capture(*args)

        def grab(self) -> bool:
            calls["grab"] += 1
            return self._cap.grab()

        def retrieve(self) -> tuple[bool, np.ndarray]:
            calls["retrieve"] += 1
            return self._cap.retrieve()

        def release(self) -> None:
            calls["release"] += 1
            self._cap.release()

        def __getattr__(self, name: str) -> object:
            return getattr(self._cap, name)

    monkeypatch.setattr(cv2, "VideoCapture", CountingCapture)
    return calls


# --- videos ---------------------------------------------------------------------------------


def test_video_yields_every_frame_in_order(video: Path) -> None:
    frames = list(iter_source_frames(video, SamplingConfig()))
    assert indices(frames) == list(range(N))
    assert [read_pattern(f.image) for f in frames] == list(range(N))
    assert [f.timestamp_s for f in frames] == pytest.approx([i / FPS for i in range(N)])
    assert {f.source for f in frames} == {str(video)}
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)


def test_source_is_the_path_as_given(video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(video.parent)
    frames = list(iter_frames([video.name], SamplingConfig(max_frames=2)))
    assert {f.source for f in frames} == {video.name}


def test_stride_keeps_every_nth_frame(video: Path) -> None:
    frames = list(iter_source_frames(video, SamplingConfig(stride=4)))
    assert indices(frames) == list(range(0, N, 4))
    assert [read_pattern(f.image) for f in frames] == list(range(0, N, 4))


@pytest.mark.parametrize(
    ("target", "expected"),
    [(5.0, list(range(0, N, 2))), (2.5, list(range(0, N, 4))), (10.0, list(range(N))), (50.0, list(range(N)))],
)
def test_target_fps_is_time_based(mp4: Path, target: float, expected: list[int]) -> None:
    frames = list(iter_source_frames(mp4, SamplingConfig(target_fps=target)))
    assert indices(frames) == expected
    assert [read_pattern(f.image) for f in frames] == expected


def test_target_fps_that_does_not_divide_source_fps(mp4: Path) -> None:
    kept = indices(list(iter_source_frames(mp4, SamplingConfig(target_fps=3.0))))
    assert kept[0] == 0
    assert len(kept) == 9  # 3 s at 3 fps
    assert set(np.diff(kept)) <= {3, 4}


def test_time_window(video: Path) -> None:
    frames = list(iter_source_frames(video, SamplingConfig(start_s=1.0, end_s=2.0)))
    assert indices(frames) == list(range(10, 20))
    assert [f.timestamp_s for f in frames] == pytest.approx([i / FPS for i in range(10, 20)])
    assert [read_pattern(f.image) for f in frames] == list(range(10, 20))


def test_skipped_frames_are_grabbed_not_retrieved_and_reading_stops_at_end(
    mp4: Path, capture_calls: dict[str, int]
) -> None:
    frames = list(iter_source_frames(mp4, SamplingConfig(stride=3, start_s=1.0, end_s=2.0)))
    assert indices(frames) == [10, 13, 16, 19]
    assert capture_calls == {"grab": 20, "retrieve": 4, "release": 1}  # frames 20..29 are never touched


def test_max_frames_stops_reading(mp4: Path, capture_calls: dict[str, int]) -> None:
    frames = list(iter_source_frames(mp4, SamplingConfig(stride=2, max_frames=5)))
    assert indices(frames) == [0, 2, 4, 6, 8]
    assert capture_calls == {"grab": 9, "retrieve": 5, "release": 1}


def test_skip_to_counts_kept_frames_and_finds_where_reading_stops() -> None:
    sampling = SamplingConfig(stride=2, start_s=0.5, max_frames=5)  # at 10 fps keeps 5, 7, 9, 11, 13
    ahead = FrameSelector(sampling, fps=10.0)
    assert ahead.skip_to(9) == 9 and ahead.kept == 2
    assert not ahead.finished(9) and ahead.wants(9)
    assert FrameSelector(sampling, fps=10.0).skip_to(100) == 14  # stops after the fifth kept frame
    assert FrameSelector(sampling, fps=10.0).skip_to(3) == 3  # before the window: nothing kept yet


def test_window_past_the_end_yields_nothing(mp4: Path) -> None:
    assert list(iter_source_frames(mp4, SamplingConfig(start_s=10.0))) == []


def test_transform_is_applied_to_kept_frames(mp4: Path) -> None:
    seen: list[tuple[int, ...]] = []

    def shrink(img: np.ndarray) -> np.ndarray:
        seen.append(img.shape)
        return cv2.resize(img, (W // 2, H // 2), interpolation=cv2.INTER_AREA)

    frames = list(iter_source_frames(mp4, SamplingConfig(stride=10), transform=shrink))
    assert seen == [(H, W, 3)] * 3
    assert [f.image.shape for f in frames] == [(H // 2, W // 2, 3)] * 3
    assert [read_pattern(f.image) for f in frames] == [0, 10, 20]


def test_probe_video(video: Path) -> None:
    info = probe_source(video)
    assert (info.kind, info.fps, info.frame_count, info.width, info.height) == ("video", FPS, N, W, H)


# --- image folders --------------------------------------------------------------------------


def test_image_folder_natural_order_and_folder_fps(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", [10, 2, 1, 33])
    (folder / "notes.txt").write_text("not an image")
    (folder / "._frame0.png").write_bytes(b"macOS metadata")
    frames = list(iter_source_frames(folder, SamplingConfig(folder_fps=4.0)))
    assert [read_pattern(f.image) for f in frames] == [1, 2, 10, 33]
    assert indices(frames) == [0, 1, 2, 3]
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert {f.source for f in frames} == {str(folder)}


def test_image_folder_sampling(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", list(range(20)), ext=".jpg")
    sampling = SamplingConfig(stride=2, start_s=0.5, end_s=1.5, folder_fps=10.0)
    frames = list(iter_source_frames(folder, sampling))
    assert indices(frames) == [5, 7, 9, 11, 13]
    assert [read_pattern(f.image) for f in frames] == [5, 7, 9, 11, 13]


def test_corrupt_image_is_reported_and_skipped(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", [0, 1, 2, 3, 4])
    (folder / "frame2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    errors: list[tuple[str, IngestError]] = []
    frames = list(iter_frames([folder], SamplingConfig(), on_error=lambda src, err: errors.append((src, err))))
    assert indices(frames) == [0, 1, 3, 4]
    assert [read_pattern(f.image) for f in frames] == [0, 1, 3, 4]
    assert len(errors) == 1 and errors[0][0] == str(folder)
    assert "frame2.png" in str(errors[0][1])


def test_corrupt_image_raised_after_the_good_ones(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", [0, 1, 2])
    (folder / "frame1.png").write_bytes(b"")
    got: list[Frame] = []
    with pytest.raises(IngestError, match=r"frame1\.png"):
        got.extend(iter_source_frames(folder, SamplingConfig()))
    assert indices(got) == [0, 2]


def test_images_of_different_sizes(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", [0, 1])
    write_images(folder, [2], size=(W * 2, H * 2))
    with pytest.raises(IngestError, match=r"imgs.*differ in size.*frame2\.png"):
        list(iter_source_frames(folder, SamplingConfig()))
    frames = list(iter_source_frames(folder, SamplingConfig(), transform=lambda im: cv2.resize(im, (32, 32))))
    assert [f.image.shape for f in frames] == [(32, 32, 3)] * 3


def test_empty_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    with pytest.raises(IngestError, match=r"empty.*no image files"):
        list(iter_source_frames(folder, SamplingConfig()))


def test_probe_image_folder(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", [0, 1, 2])
    info = probe_source(folder, folder_fps=5.0)
    assert (info.kind, info.fps, info.frame_count, info.width, info.height) == ("images", 5.0, 3, W, H)


# --- errors ---------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(IngestError, match=r"nope\.mp4.*does not exist"):
        list(iter_source_frames(missing, SamplingConfig()))
    with pytest.raises(IngestError, match="does not exist"):
        probe_source(missing)


def test_text_file_named_mp4(tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(IngestError, match=r"fake\.mp4.*not a readable video"):
        list(iter_source_frames(fake, SamplingConfig()))


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(IngestError, match=r"empty\.mp4.*empty"):
        list(iter_source_frames(empty, SamplingConfig()))


@pytest.mark.parametrize(("fourcc", "ext"), [("MJPG", ".avi"), ("mp4v", ".mp4")])
def test_zero_frame_video(tmp_path: Path, fourcc: str, ext: str) -> None:
    path = write_video(tmp_path / f"nothing{ext}", fourcc, n=0)
    with pytest.raises(IngestError, match=rf"nothing\{ext}"):
        list(iter_source_frames(path, SamplingConfig()))


def test_zero_frame_avi_says_no_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "nothing.avi", "MJPG", n=0)
    with pytest.raises(IngestError, match=r"nothing\.avi: no frames could be decoded"):
        list(iter_source_frames(path, SamplingConfig()))


def test_cut_mp4_is_reported_as_truncated(tmp_path: Path) -> None:
    """OpenCV's mp4 writer puts the index ('moov') at the end, so a cut mp4 cannot be opened at all."""
    path = write_video(tmp_path / "cut.mp4", "mp4v")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.4)])
    with pytest.raises(IngestError, match=r"cut\.mp4.*truncated"):
        list(iter_source_frames(path, SamplingConfig()))


def check_partial_decode(path: Path, sampling: SamplingConfig) -> list[Frame]:
    """Frames decoded before the damage are yielded, in order, then the error names the file."""
    got: list[Frame] = []
    with pytest.raises(IngestError) as info:
        got.extend(iter_source_frames(path, sampling))
    assert 0 < len(got) < N
    message = str(info.value)
    assert str(path) in message and "truncated or corrupt" in message
    return got


def test_cut_avi_yields_what_decodes_then_raises(tmp_path: Path) -> None:
    path = write_video(tmp_path / "cut.avi", "MJPG")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.5)])
    got = check_partial_decode(path, SamplingConfig())
    assert indices(got) == list(range(len(got)))
    # the last frame may be a half-decoded one (FFmpeg conceals the damage); the others are exact
    assert [read_pattern(f.image) for f in got[:-1]] == list(range(len(got) - 1))


def test_damaged_mp4_yields_what_decodes_then_raises(tmp_path: Path) -> None:
    """Index intact, media data zeroed from 40% on: decoding stops at the damage."""
    path = write_video(tmp_path / "damaged.mp4", "mp4v")
    data = bytearray(path.read_bytes())
    moov = data.find(b"moov") - 4
    start = int(len(data) * 0.4)
    data[start:moov] = bytes(moov - start)
    path.write_bytes(bytes(data))
    got = check_partial_decode(path, SamplingConfig())
    assert indices(got) == list(range(len(got)))
    assert [read_pattern(f.image) for f in got[:-1]] == list(range(len(got) - 1))


def test_truncation_is_detected_with_stride(tmp_path: Path) -> None:
    path = write_video(tmp_path / "cut.avi", "MJPG")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.5)])
    got = check_partial_decode(path, SamplingConfig(stride=2))
    assert indices(got) == list(range(0, 2 * len(got), 2))


def test_truncation_is_not_reported_when_the_window_ends_before_it(tmp_path: Path) -> None:
    path = write_video(tmp_path / "cut.avi", "MJPG")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.5)])
    assert indices(list(iter_source_frames(path, SamplingConfig(end_s=0.3)))) == [0, 1, 2]


# --- several sources ------------------------------------------------------------------------


def test_bad_sources_are_reported_and_skipped(tmp_path: Path) -> None:
    good_video = write_video(tmp_path / "a.mp4", "mp4v", n=5)
    fake = tmp_path / "b.mp4"
    fake.write_text("not a video")
    good_folder = write_images(tmp_path / "c", [0, 1])
    missing = tmp_path / "d.avi"
    sources = [good_video, fake, missing, good_folder]
    errors: dict[str, str] = {}
    frames = list(iter_frames(sources, SamplingConfig(), on_error=lambda src, err: errors.update({src: str(err)})))
    assert [(f.source, f.index) for f in frames] == [(str(good_video), i) for i in range(5)] + [
        (str(good_folder), 0),
        (str(good_folder), 1),
    ]
    assert set(errors) == {str(fake), str(missing)}
    assert all(src in msg for src, msg in errors.items())


def test_without_on_error_the_first_bad_source_raises(tmp_path: Path) -> None:
    good = write_video(tmp_path / "a.mp4", "mp4v", n=3)
    got: list[Frame] = []
    with pytest.raises(IngestError, match="does not exist"):
        got.extend(iter_frames([good, tmp_path / "missing.mp4", good], SamplingConfig()))
    assert indices(got) == [0, 1, 2]


def test_iteration_is_lazy(mp4: Path, capture_calls: dict[str, int]) -> None:
    frames = iter_frames([mp4, mp4], SamplingConfig())
    assert next(frames).index == 0
    assert capture_calls == {"grab": 1, "retrieve": 1, "release": 0}
    frames.close()
    assert capture_calls["release"] == 1


def test_stopping_a_prefetched_run_releases_the_video(mp4: Path, capture_calls: dict[str, int]) -> None:
    with prefetch(iter_frames([mp4], SamplingConfig()), maxsize=2) as frames:
        assert next(frames).index == 0
    assert capture_calls["release"] == 1
    assert capture_calls["grab"] < N


def test_expand_sources(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ["clip10.mp4", "clip2.MP4", "._clip1.mp4", "thumb.jpg", "notes.txt"]:
        (clips / name).write_bytes(b"x")
    images = write_images(tmp_path / "imgs", [0])
    single = tmp_path / "one.avi"
    single.write_bytes(b"x")
    missing = str(tmp_path / "missing.mp4")
    got = expand_sources([clips, images, str(single), missing, single])
    assert got == [str(clips / "clip2.MP4"), str(clips / "clip10.mp4"), str(images), str(single), missing]


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stride": 0}, "stride"),
        ({"stride": 1.5}, "stride"),
        ({"target_fps": 0}, "target_fps"),
        ({"target_fps": -2.0}, "target_fps"),
        ({"target_fps": float("nan")}, "target_fps"),
        ({"stride": 2, "target_fps": 5.0}, "either stride or target_fps"),
        ({"start_s": -1.0}, "start_s"),
        ({"start_s": 5.0, "end_s": 5.0}, "end_s"),
        ({"end_s": -1.0}, "end_s"),
        ({"end_s": float("inf")}, "end_s"),
        ({"folder_fps": 0}, "folder_fps"),
        ({"max_frames": 0}, "max_frames"),
    ],
)
def test_sampling_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


def test_sampling_config_is_immutable() -> None:
    config = SamplingConfig(stride=2)
    with pytest.raises(ValidationError, match="frozen"):
        config.stride = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(),
        SamplingConfig(stride=3),
        SamplingConfig(target_fps=4.0, start_s=0.3),
        SamplingConfig(max_frames=5),
    ],
    ids=["all", "stride", "fps", "max_frames"],
)
def test_starting_at_a_frame_keeps_what_a_read_from_the_start_keeps_from_there(video, tmp_path, sampling):
    """What `anomaly score --resume` relies on, for videos and image folders."""
    folder = write_images(tmp_path / "imgs", list(range(24)))
    for source in (video, folder):
        whole = indices(list(iter_source_frames(source, sampling)))
        for first in (0, 7, 13, 40):
            assert indices(list(iter_source_frames(source, sampling, first=first))) == [i for i in whole if i >= first]
