"""Small builders shared by the tests: the one tiny config, road-like frames, real encoded videos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anomaly.config import CalibrationConfig, DetectorConfig, ModelConfig, PreprocessConfig, TrainConfig
from anomaly.frame_scores import FrameScore
from anomaly.heat import HeatLayout

# The one tiny configuration of the test suite: 32x24 input, 8-channel networks, CPU. Its score
# leaves out `patch` (in the product's default): at 32x24 the encoder's patch map is 3x4, too coarse
# to be steady on the suite's few frames; tests of `patch` and of the default choose it themselves.
TINY = DetectorConfig(
    preprocess=PreprocessConfig(width=32, height=24),
    model=ModelConfig(widths=(8, 8, 8), latent_channels=4, disc_widths=(8, 8, 8), finder_widths=(8, 8, 8)),
    train=TrainConfig(steps=20, batch_size=8, checkpoint_every=10, device="cpu"),
    calibration=CalibrationConfig(error_pool=4, error_stride=2, signals=("spatial", "latent")),
)


def road_frames(n: int, seed: int = 0, size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """A drifting road-like scene: sky, ground, a moving dashed centre line, light noise. BGR uint8."""
    rng = np.random.default_rng(seed)
    w, h = size
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[: h // 2] = (200, 160, 120)
        f[h // 2 :] = (70, 90, 80)
        for k in range(4):
            y = h // 2 + ((i * 2 + k * 8) % (h // 2))
            cv2.line(f, (w // 2, y), (w // 2, min(h - 1, y + 3)), (230, 230, 230), 2)
        noise = rng.integers(-6, 7, size=f.shape)
        frames[i] = np.clip(f.astype(int) + noise, 0, 255).astype(np.uint8)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: float = 10.0) -> Path:
    fourcc = "MJPG" if Path(path).suffix == ".avi" else "mp4v"
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"cannot write {path}"
    for f in frames:
        writer.write(f)
    writer.release()
    return Path(path)


def with_square(frame: np.ndarray, colour: tuple[int, int, int] = (0, 0, 255), frac: float = 0.15) -> np.ndarray:
    """The frame with a filled square (an 'obstacle') on the road."""
    out = frame.copy()
    h, w = out.shape[:2]
    s = max(2, int(min(h, w) * frac))
    y, x = int(h * 0.7), w // 2 - s // 2
    out[y : y + s, x : x + s] = colour
    return out


# Score distributions of normal frames, light- and heavy-tailed, for tests of scaling and thresholds.
N = 20_000
DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.normal(3.0, 2.0, n),
    "exponential": lambda rng, n: rng.exponential(1.5, n),
    "student-t2": lambda rng, n: rng.standard_t(2, n),  # heavy tails, infinite variance
    "pareto": lambda rng, n: rng.pareto(1.5, n),
}


def video_with_square(path: Path, frames: int, seed: int, anomalous: slice) -> Path:
    """A drive of road-like frames with a square (an obstacle) in the `anomalous` ones, encoded at `path`."""
    source = road_frames(frames, seed=seed)
    source[anomalous] = [with_square(f) for f in source[anomalous]]
    return write_video(path, source)


def frame_score(score: float, threshold: float = 1.0) -> FrameScore:
    """One frame's scores with only the combined score set (a 4x4 heat map of ones), for stream and event logic."""
    return FrameScore(
        score=score,
        recon_error=0.0,
        disc_score=0.0,
        spatial_score=0.0,
        latent_score=0.0,
        is_anomaly=score > threshold,
        threshold=threshold,
        heat_cells=np.ones((4, 4), np.float32),
        heat_layout=HeatLayout(height=4, width=4, cell=1, stride=1),
    )
