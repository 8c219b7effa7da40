"""A review app on a real uvicorn server (127.0.0.1, a free port) in a thread, and a hand-made run for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from anomaly.events import Event
from footage.events_json import write_events_json
from review.server import ReviewServer, make_review_server
from review.settings import ReviewSettings


@dataclass
class RunningReview:
    server: ReviewServer
    url: str  # what `anomaly review` prints (with ?token= when guarded)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@contextmanager
def reviewing(settings: ReviewSettings) -> Iterator[RunningReview]:
    urls: list[str] = []
    server = make_review_server(settings, on_ready=urls.append)
    thread = threading.Thread(target=server.run, name="review-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not urls:
        assert thread.is_alive(), "the review app exited during startup"
        assert time.monotonic() < deadline, "the review app did not start"
        time.sleep(0.01)
    try:
        yield RunningReview(server, urls[0])
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the review app did not shut down"


def write_h264(path: Path, frames: int = 12, size: tuple[int, int] = (64, 48), fps: int = 12) -> None:
    """A small real H.264 MP4 (moving gradient)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[..., 1] = (np.arange(size[0]) * 4 + i * 10) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_run(root: Path, *, clip_paths: tuple[str, ...] = ()) -> list[Event]:
    """A run folder with three events on two sources and two cameras; clips for the first two.

    `clip_paths` overrides the clip path written for the events (to test paths that leave the run).
    """
    (root / "clips").mkdir(parents=True, exist_ok=True)
    events = [
        Event("drives/a.mp4", 1.0, 2.0, 25, 50, 3.5, 30, 26, camera="front", signal="spatial"),
        Event("drives/a.mp4", 9.0, 9.4, 225, 235, 1.4, 230, 11, camera="front", signal="latent"),
        Event("drives/b.mp4", 4.0, 6.0, 100, 150, 2.2, 120, 51, camera=None, signal="recon"),
    ]
    for i, e in enumerate(events[:2]):
        name = f"clips/{Path(e.source).stem}_{e.start_frame:06d}"
        write_h264(root / f"{name}.mp4")
        (root / f"{name}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        e.clip = clip_paths[i] if i < len(clip_paths) else f"{name}.mp4"
        e.thumbnail = f"{name}.jpg"
        e.clip_start_s = e.start_s - 2.0
    drift = [{"type": "camera_drift", "camera": "front", "source": "drives/a.mp4", "start_s": 61.0, "end_s": None,
              "peak_exceed_fraction": 0.4, "reference": "p99", "reference_score": 0.9, "max_exceed_fraction": 0.2,
              "window_s": 300.0}]  # fmt: skip
    write_events_json(root / "events.json", events, threshold=1.0, drift=drift)
    return events
