"""What a user sees when scoring a file: the whole `anomaly score` process against decode-only, per model format.

    python benchmarks/bench_scoring.py [--video PATH] [--model MODEL.pt] [--repeats 3] [--lengths 60,600]

For each input length (seconds of video, the clip looped without re-encoding: its H.264 packets are
copied with PyAV, `pip install -e '.[bench]'`; without PyAV the loop is re-encoded as mp4v, and the
table says so), in one run and alternating, it times as separate processes:

- decode-only: the project's own ingestion (`footage.ingest.iter_source_frames`), no model;
- `python -m anomaly score FILE --model MODEL.pt` (PyTorch), and `--model DIR` of its exports (ONNX
  Runtime, OpenVINO: `pip install -e '.[openvino]'`);
- with CUDA present, the PyTorch model with `--device cuda` too.

Each figure is the median of `--repeats` runs: frames/s (frames over the process's whole wall time,
start-up included), the ratio to decode-only, the process's peak RSS, and the seconds from start to
the first scored row in the CSV (rows are flushed per batch of 16 frames). Without --model, a model
of the default architecture is trained for a few steps on the clip: speed depends on the
architecture and the memory, not on how well it was trained.

Internal: `--measure OUT.json -- CMD...` runs CMD as this process's only child and writes its wall
time, peak RSS and (with `--watch CSV`) the time the CSV got its first row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_CLIP = ROOT.parent / "shared" / "data" / "solidWhiteRight.mp4"
SAMPLE_CLIP = ROOT / "sample_videos" / "test_00.mp4"
DECODE = (  # with the process settings `anomaly` itself starts with (`cli.allocator`), for a like-for-like ratio
    "import sys\n"
    "from cli.allocator import keep_freed_memory\n"
    "keep_freed_memory()\n"
    "from footage.ingest import iter_source_frames\n"
    "from footage.sampling import SamplingConfig\n"
    "print(sum(1 for _ in iter_source_frames(sys.argv[1], SamplingConfig())))\n"
)


def measure_child(out: Path, cmd: list[str], watch: Path | None) -> None:
    """Run `cmd` (this process's only child) and write its wall time, peak RSS and first-row time."""
    first_row: list[float] = []
    started = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def poll() -> None:
        while child.poll() is None and watch is not None:
            try:
                if watch.stat().st_size and watch.read_text().count("\n") >= 2:
                    first_row.append(time.perf_counter() - started)
                    return
            except OSError:
                pass
            time.sleep(0.005)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - started
    watcher.join()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({child.returncode}): {stderr.strip()[-500:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    out.write_text(json.dumps({"wall_s": wall, "peak_mib": peak, "first_row_s": first_row[0] if first_row else None}))


def run_measured(cmd: list[str], watch: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.json"
        args = [sys.executable, __file__, "--measure", str(out)]
        if watch is not None:
            args += ["--watch", str(watch)]
        subprocess.run([*args, "--", *cmd], check=True, cwd=ROOT)
        return json.loads(out.read_text())


def loop_video(video: Path, seconds: float, out: Path) -> tuple[Path, str]:
    """`video` played back to back until it lasts `seconds`; copied packet by packet when PyAV is there."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    fps, count = cap.get(cv2.CAP_PROP_FPS) or 25.0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    times = max(1, round(seconds * fps / max(count, 1)))
    try:
        import av
    except ImportError:
        return _reencode(video, times, out), f"{times}x, re-encoded mp4v (no PyAV)"
    with av.open(str(video)) as src, av.open(str(out), "w") as dst:
        stream = src.streams.video[0]
        target = dst.add_stream_from_template(stream)
        offset, step = 0, None
        for _ in range(times):
            src.seek(0)
            last = 0
            for packet in src.demux(stream):
                if packet.dts is None:
                    continue
                step = step or packet.duration or 1
                last = max(last, packet.pts + (packet.duration or step))
                packet.pts += offset
                packet.dts += offset
                packet.stream = target
                dst.mux(packet)
            offset += last
    return out, f"{times}x, H.264 packets copied"


def _reencode(video: Path, times: int, out: Path) -> Path:
    import cv2

    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    h, w = frames[0].shape[:2]
    out = out.with_suffix(".mp4v.mp4")
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for _ in range(times):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return out


def quick_model(video: Path, out: Path) -> Path:
    from anomaly.config import DetectorConfig, TrainConfig
    from anomaly.preprocess import Preprocessor
    from anomaly.training.train import TrainingData, train_detector
    from footage.sampling import SamplingConfig
    from footage.training_frames import load_prepared_frames

    config = DetectorConfig(train=TrainConfig(steps=5))
    frames = load_prepared_frames([str(video)], SamplingConfig(), Preprocessor(config.preprocess), 10_000)
    train_detector(config, TrainingData.split(frames, 0.5), out, progress=False, log=lambda _: None)
    return out


def count_frames(video: Path) -> int:
    done = subprocess.run([sys.executable, "-c", DECODE, str(video)], cwd=ROOT, capture_output=True, text=True)
    return int(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=REAL_CLIP if REAL_CLIP.exists() else SAMPLE_CLIP)
    parser.add_argument("--model", type=Path, default=None, help="a model file from `anomaly train`")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command per length (median)")
    parser.add_argument("--lengths", default="60,600", help="input lengths in seconds, comma-separated")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--watch", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.measure:
        measure_child(args.measure, rest[1:] if rest[:1] == ["--"] else rest, args.watch)
        return

    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        model = args.model or quick_model(args.video, tmp / "bench_model.pt")
        exports = {}
        for fmt, runtime in (("onnx", "ONNX Runtime"), ("openvino", "OpenVINO")):
            exports[runtime] = out = tmp / f"exported_{fmt}"
            subprocess.run(
                [sys.executable, "-m", "anomaly", "export", str(model), "--out", str(out), "--format", fmt],
                cwd=ROOT, check=True, capture_output=True,
            )  # fmt: skip
        import torch

        commands: dict[str, tuple[list[str], bool]] = {"decode only": ([sys.executable, "-c", DECODE], False)}
        score = [sys.executable, "-m", "anomaly", "score"]
        commands["score, PyTorch"] = ([*score, "--model", str(model)], True)
        for runtime, folder in exports.items():
            commands[f"score, {runtime}"] = ([*score, "--model", str(folder)], True)
        if torch.cuda.is_available():
            commands[f"score, PyTorch on {torch.cuda.get_device_name()}"] = (
                [*score, "--model", str(model), "--device", "cuda"],
                True,
            )
        print(f"clip: {args.video}; model: {args.model or 'default architecture, 5 steps'}; cores: {os.cpu_count()}")
        for seconds in (float(s) for s in args.lengths.split(",")):
            video, how = loop_video(args.video, seconds, tmp / f"loop_{int(seconds)}.mp4")
            frames = count_frames(video)
            runs: dict[str, list[dict]] = {name: [] for name in commands}
            for _ in range(args.repeats):  # alternating, so drift in the machine's load touches every command
                for name, (cmd, scores) in commands.items():
                    csv = tmp / "scores.csv"
                    csv.unlink(missing_ok=True)
                    full = [*cmd, str(video)] + (["--out", str(csv), "--no-progress"] if scores else [])
                    runs[name].append(run_measured(full, csv if scores else None))
            decode_fps = frames / statistics.median(r["wall_s"] for r in runs["decode only"])
            print(f"\n{seconds:.0f} s input ({frames} frames, {how}), medians of {args.repeats}:")
            print(f"{'':<42}{'frames/s':>10}{'/ decode':>10}{'peak RSS':>12}{'first row':>11}")
            for name, measured in runs.items():
                fps = frames / statistics.median(r["wall_s"] for r in measured)
                firsts = [r["first_row_s"] for r in measured if r["first_row_s"] is not None]
                first = f"{statistics.median(firsts):.2f} s" if firsts else "-"
                peak = statistics.median(r["peak_mib"] for r in measured)
                print(f"{name:<42}{fps:>10.1f}{fps / decode_fps:>10.2f}{peak:>8.0f} MiB{first:>11}")


if __name__ == "__main__":
    main()
