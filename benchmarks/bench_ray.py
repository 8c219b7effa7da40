"""Single-process scoring against Ray scoring of the same clips: agreement and frames per second.

    python benchmarks/bench_ray.py [--model runs/ray/model.pt] [--workers 2] [--clips sample_videos/test_*.mp4]

Scores the clips with the local engine (`anomaly score`) and with `--engine ray` on a local Ray
instance, checks that every source's rows agree, and prints frames per second for both, plus the
two ceilings of one core that bound Ray's throughput per worker: decoding alone and the model alone.
Ray's figure excludes starting the Ray instance (printed separately; a cluster is already up) but
includes planning, starting the actors and loading the model into each. The runs alternate
(local, Ray, local, Ray, ...) and the best of `--repeats` is kept, because timings on a shared
machine are noisy. Without --model a default-architecture model is trained for a few steps: speed
depends on the architecture, not on how well it was trained.

Both engines run with the process settings `anomaly score` gives them (`cli.allocator`: this process
for the local engine, the workers' environment for Ray's). `--bare-workers` adds a third engine, Ray
with workers started without them, alternating with the others: what those settings buy there.
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomaly.checkpoint import load_detector
from anomaly.config import DetectorConfig, TrainConfig
from anomaly.device import set_torch_threads
from anomaly.preprocess import Preprocessor
from anomaly.scoring import score_prepared
from anomaly.training.train import TrainingData, train_detector
from batch.local import score_sources
from batch.ray.config import RayScoreConfig
from batch.ray.engine import local_cpus, score_on_ray
from batch.ray.manifest import output_names
from cli.allocator import keep_freed_memory, worker_environment
from footage.ingest import iter_source_frames
from footage.sampling import SamplingConfig
from footage.scores_csv import CSV_COLUMNS
from footage.training_frames import load_prepared_frames

ROOT = Path(__file__).resolve().parents[1]


def quick_model(clip: str, out: Path) -> Path:
    config = DetectorConfig(train=TrainConfig(steps=5, device="cpu"))
    frames = load_prepared_frames([clip], SamplingConfig(), Preprocessor(config.preprocess), 10_000)
    train_detector(config, TrainingData.split(frames, 0.5), out, progress=False, log=lambda _: None)
    return out


def copies(clips: list[str], n: int, folder: Path) -> list[str]:
    """The clips, each n times under distinct names (symlinks), for a longer run."""
    if n == 1:
        return clips
    folder.mkdir()
    out = []
    for k in range(n):
        for clip in clips:
            link = folder / f"{Path(clip).stem}_copy{k}{Path(clip).suffix}"
            link.symlink_to(Path(clip).resolve())
            out.append(str(link))
    return out


def local_fps(model: Path, clips: list[str], out: Path, batch_size: int) -> tuple[float, int]:
    """`anomaly score` at its defaults (all cores but one for torch, decoding in a thread)."""
    set_torch_threads(None)
    detector = load_detector(model, torch.device("cpu"))
    t0 = time.perf_counter()
    summary = score_sources(detector, clips, out, batch_size=batch_size, progress=False)
    return summary.frames / (time.perf_counter() - t0), summary.frames


def ray_fps(config: RayScoreConfig) -> tuple[float, int]:
    t0 = time.perf_counter()
    summary = score_on_ray(config, log=lambda _: None)
    return summary.frames / (time.perf_counter() - t0), summary.frames


def decode_fps(clip: str, preprocess: Preprocessor) -> float:
    """One core decoding and preparing frames (what each decode task does)."""
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_source_frames(clip, transform=preprocess.prepare))
    return n / (time.perf_counter() - t0)


def model_fps(model: Path, clip: str, batch_size: int) -> float:
    """One torch thread scoring prepared frames (what each CPU scoring actor does)."""
    torch.set_num_threads(1)
    detector = load_detector(model, torch.device("cpu"))
    frames = np.stack([f.image for f in iter_source_frames(clip, transform=detector.preprocessor.prepare)])
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch_size):
        score_prepared(detector, frames[i : i + batch_size])
    return len(frames) / (time.perf_counter() - t0)


def compare(local_csv: Path, ray_dir: Path, clips: list[str]) -> dict[str, float]:
    """Rows per source: how many are byte-identical, and the largest numeric difference otherwise."""
    header, *rows = local_csv.read_text().splitlines()
    names = output_names(clips)
    identical = total = 0
    worst = 0.0
    flags_differ = 0
    for src in clips:
        local = [r for r in rows if r.startswith(src + ",")]
        ray_header, *remote = (ray_dir / names[src]).read_text().splitlines()
        if ray_header != header or len(local) != len(remote):
            raise SystemExit(f"{src}: {len(local)} local rows but {len(remote)} Ray rows (or another header)")
        for a, b in zip(local, remote, strict=True):
            total += 1
            if a == b:
                identical += 1
                continue
            fa, fb = a.split(","), b.split(",")
            if fa[:3] != fb[:3]:
                raise SystemExit(f"{src}: rows out of step: {a!r} vs {b!r}")
            flags_differ += fa[-1] != fb[-1]
            nums = [abs(float(x) - float(y)) for x, y in zip(fa[3:-1], fb[3:-1], strict=True)]
            worst = max(worst, *nums)
    return {"rows": total, "identical": identical, "max_abs_diff": worst, "is_anomaly_differs": flags_differ}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "ray" / "model.pt")
    parser.add_argument("--clips", default=str(ROOT / "sample_videos" / "test_*.mp4"), help="glob of clips")
    parser.add_argument("--workers", type=int, default=2, help="Ray scoring actors")
    parser.add_argument("--chunk-frames", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs for each engine")
    parser.add_argument("--copies", type=int, default=1, help="score each clip this many times (as symlinks)")
    parser.add_argument("--bare-workers", action="store_true", help="also time Ray workers without malloc settings")
    args = parser.parse_args()
    keep_freed_memory()  # as `anomaly` does at start
    found = sorted(glob.glob(args.clips))
    if not found:
        raise SystemExit(f"no clips match {args.clips}")

    import ray

    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        clips = copies(found, args.copies, tmp / "clips")
        model = args.model if args.model.exists() else quick_model(clips[0], tmp / "bench_model.pt")
        config = RayScoreConfig(
            sources=tuple(clips),
            out_dir=tmp / "ray",
            model_path=model,
            batch_size=args.batch_size,
            chunk_frames=args.chunk_frames,
            workers=args.workers,
            device="cpu",
            progress=False,
            worker_env=worker_environment(),
        )
        t0 = time.perf_counter()
        ray.init(num_cpus=local_cpus(config), include_dashboard=False, logging_level="WARNING")
        startup = time.perf_counter() - t0
        local, remote, bare = [], [], []
        try:
            for r in range(args.repeats):
                fps, frames = local_fps(model, clips, tmp / "local.csv", args.batch_size)
                local.append(fps)
                fps, ray_frames = ray_fps(config.model_copy(update={"out_dir": tmp / f"ray{r}"}))
                remote.append(fps)
                if args.bare_workers:
                    bare.append(ray_fps(config.model_copy(update={"out_dir": tmp / f"bare{r}", "worker_env": {}}))[0])
        finally:
            ray.shutdown()
        agreement = compare(tmp / "local.csv", tmp / "ray0", clips)
        pre = Preprocessor(load_detector(model, torch.device("cpu")).config.preprocess)
        decode = decode_fps(clips[0], pre)
        per_core_model = model_fps(model, clips[0], args.batch_size)

    print(f"clips: {len(clips)} ({frames} frames), model {model}, {args.workers} Ray worker(s)")
    print(f"local engine          : {max(local):8.1f} frames/s  (runs: {', '.join(f'{v:.1f}' for v in local)})")
    print(f"ray engine            : {max(remote):8.1f} frames/s  (runs: {', '.join(f'{v:.1f}' for v in remote)})")
    print(f"ray / local           : {max(remote) / max(local):8.2f}")
    if bare:
        print(f"ray, bare workers     : {max(bare):8.1f} frames/s  (runs: {', '.join(f'{v:.1f}' for v in bare)})")
    print(f"ray start (once)      : {startup:8.1f} s  (not in the figure above)")
    print(f"one core, decode only : {decode:8.1f} frames/s  (per decode task)")
    print(f"one core, model only  : {per_core_model:8.1f} frames/s  (per CPU scoring worker)")
    print(
        f"agreement             : {agreement['identical']}/{agreement['rows']} rows byte-identical "
        f"({ray_frames} Ray frames); largest difference elsewhere {agreement['max_abs_diff']:.2g}; "
        f"is_anomaly differs in {agreement['is_anomaly_differs']}  (columns: {len(CSV_COLUMNS)})"
    )


if __name__ == "__main__":
    main()
