"""Offline scoring speed against decoding speed, and peak memory for a short and a 10x longer clip.

    python benchmarks/bench_scoring.py [--video PATH] [--model MODEL] [--device auto]

Timings on a shared 2-core machine are noisy, so the figure that matters is the ratio of full
scoring throughput (decode + preprocess + model + CSV) to decode-only throughput, both measured in
this run on the same clip. Without --model a model with the default architecture is trained for a
few steps: speed depends on the architecture, not on how well it was trained. Peak memory is
measured in child processes (one per clip length) so each gets its own high-water mark.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from anomaly.checkpoint import load_detector
from anomaly.config import DetectorConfig, TrainConfig
from anomaly.device import resolve_device, set_torch_threads
from anomaly.preprocess import Preprocessor
from anomaly.training.train import TrainingData, train_detector
from batch.local import score_sources
from footage.ingest import iter_source_frames
from footage.sampling import SamplingConfig
from footage.training_frames import load_prepared_frames

REAL_CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "solidWhiteRight.mp4"
SAMPLE_CLIP = Path(__file__).resolve().parents[1] / "sample_videos" / "test_00.mp4"


def decode_only_fps(video: Path, repeats: int) -> float:
    """Frames per second of plain decoding through the same ingestion code, no model."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = sum(1 for _ in iter_source_frames(video, SamplingConfig()))
        best = max(best, n / (time.perf_counter() - t0))
    return best


def scoring_fps(model: Path, video: Path, device: str, repeats: int, out_dir: Path) -> float:
    """Frames per second of `anomaly score` at its defaults (threads, batch size), CSV included."""
    set_torch_threads(None)
    detector = load_detector(model, resolve_device(device))
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        summary = score_sources(detector, [str(video)], out_dir / "bench_scores.csv", progress=False)
        best = max(best, summary.frames / (time.perf_counter() - t0))
    return best


def quick_model(video: Path, out: Path, device: str) -> Path:
    config = DetectorConfig(train=TrainConfig(steps=5, device=device))  # type: ignore[arg-type]
    frames = load_prepared_frames([str(video)], SamplingConfig(), Preprocessor(config.preprocess), 10_000)
    train_detector(config, TrainingData.split(frames, 0.5), out, progress=False, log=lambda _: None)
    return out


def repeat_video(video: Path, times: int, out: Path) -> Path:
    """The clip played `times` times in a row, re-encoded (mp4v) at its own size and rate."""
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for _ in range(times):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return out


def child_peak_rss(model: Path, video: Path, device: str) -> dict:
    """Score `video` in a fresh process; returns its frame count and peak RSS in MiB."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--model", str(model), "--video", str(video), "--device", device],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(args: argparse.Namespace) -> None:
    set_torch_threads(None)
    detector = load_detector(args.model, resolve_device(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        summary = score_sources(detector, [str(args.video)], Path(tmp) / "s.csv", progress=False)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"frames": summary.frames, "peak_rss_mib": round(peak_mib, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=REAL_CLIP if REAL_CLIP.exists() else SAMPLE_CLIP)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs for each throughput")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        model = args.model or quick_model(args.video, tmp / "bench_model.pt", args.device)
        decode = decode_only_fps(args.video, args.repeats)
        score = scoring_fps(model, args.video, args.device, args.repeats, tmp)
        # both lengths re-encoded the same way, so only the length differs
        short = child_peak_rss(model, repeat_video(args.video, 1, tmp / "short.mp4"), args.device)
        long = child_peak_rss(model, repeat_video(args.video, 10, tmp / "long.mp4"), args.device)
    print(f"clip: {args.video}")
    print(f"decode only     : {decode:8.1f} frames/s")
    print(f"full scoring    : {score:8.1f} frames/s")
    print(f"scoring / decode: {score / decode:8.2f}  (target >= 0.50)")
    print(f"peak RSS, {short['frames']:>6} frames: {short['peak_rss_mib']:8.1f} MiB")
    print(f"peak RSS, {long['frames']:>6} frames: {long['peak_rss_mib']:8.1f} MiB")


if __name__ == "__main__":
    main()
