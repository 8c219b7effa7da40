"""Fleet-scale batch scoring on a Ray cluster (`anomaly score --engine ray`), with Ray Data.

One process cannot keep up with a fleet's footage, and fleets that size already run a cluster, so
this runs on theirs. The work is cut into chunks of frames so that one long video spreads over many
workers:

1. plan (one small Ray task per source, where the files are readable): probe the source and cut
   its frame range into chunks of `chunk_frames` decoded frames;
2. decode (Ray Data tasks on CPU workers): seek to the chunk, decode and prepare its frames with
   the checkpoint's own `Preprocessor.prepare`, exactly the frames the local path keeps;
3. score (a pool of Ray Data actors, one model load each, on GPUs when the cluster has them):
   `anomaly.scoring.score_prepared`, formatted by `footage.scores_csv.csv_rows`;
4. write (this process): when every chunk of a source is back, its rows go to
   `<out>/<source-stem>.scores.csv` (temporary file, then rename) and `manifest.json` records it.

Restartable: a source whose output exists and whose manifest entry says it was done with the same
model and settings is skipped on a rerun. Ray retries the chunk of a crashed worker; chunks are
keyed by (source, chunk number), so a retried chunk replaces rather than repeats rows, and a
source is written only once all of its chunks are present. Ray is imported only when a run
starts, so the rest of this module (and the local engine) works without the `ray` extra.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from anomaly.checkpoint import load_detector
from anomaly.config import Device, PreprocessConfig
from anomaly.preprocess import Preprocessor
from anomaly.progress import progress_bar
from anomaly.scoring import score_prepared
from footage.ingest import (
    Frame,
    FrameReader,
    FrameSelector,
    IngestError,
    check_complete,
    expand_sources,
    iter_source_frames,
    open_video,
    probe_source,
    video_fps,
)
from footage.sampling import SamplingConfig
from footage.scores_csv import CSV_COLUMNS, ScoredBatch, atomic_write_text, csv_rows, csv_text

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
SCORES_SUFFIX = ".scores.csv"
OPEN_END = -1  # a chunk's `stop` when it runs to the end of the stream
DECODER_MEMORY_BYTES = 768 * 2**20  # a decode worker: Python with OpenCV and torch loaded, and its decoder
# Errors of one source (unreadable file, a frame the preprocessing rejects): recorded, the run goes on.
SOURCE_ERRORS = (IngestError, ValueError, OSError, cv2.error)


class RayScoreConfig(BaseModel):
    """Everything one `--engine ray` run needs; built once by the CLI."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: tuple[str, ...] = Field(min_length=1)
    out_dir: Path
    model_path: Path
    sampling: SamplingConfig = SamplingConfig()
    threshold: float | None = Field(None, allow_inf_nan=False, description="overrides the calibrated threshold")
    batch_size: int = Field(16, ge=1, description="frames per model pass inside a chunk")
    chunk_frames: int = Field(256, ge=0, description="decoded frames per chunk; 0 scores each source as one chunk")
    workers: int | None = Field(None, ge=1, description="scoring actors; None: one per GPU, or half the CPUs")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs of a scoring actor, also its torch threads")
    decode_cpus: float = Field(1.0, gt=0, description="CPUs each decode task reserves")
    device: Device = "auto"  # auto: GPU actors when the cluster has GPUs
    address: str | None = None  # None starts a local Ray instance
    progress: bool = True


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
class SourceOutcome:
    source: str
    output: str | None
    status: Literal["done", "failed", "pending"]
    frames: int = 0
    anomalies: int = 0
    error: str | None = None
    reused: bool = False  # complete from an earlier run, not recomputed


@dataclass
class RayScoreSummary:
    outcomes: list[SourceOutcome]
    threshold: float
    manifest: Path

    @property
    def computed(self) -> list[str]:
        return [o.source for o in self.outcomes if not o.reused and o.status != "pending"]

    @property
    def reused(self) -> list[str]:
        return [o.source for o in self.outcomes if o.reused]

    @property
    def errors(self) -> dict[str, str]:
        return {o.source: o.error or "" for o in self.outcomes if o.status == "failed"}

    @property
    def frames(self) -> int:
        return sum(o.frames for o in self.outcomes)

    @property
    def anomalies(self) -> int:
        return sum(o.anomalies for o in self.outcomes)


# ---------------------------------------------------------------------------------------------
# Inputs and outputs


def read_source_list(path: Path) -> list[str]:
    """Sources listed in a file: one path per line (blank lines and `#` comments ignored), or the
    `manifest.json` of an earlier `--engine ray` run (its sources, in order)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"source list {path}: cannot read it ({exc.strerror or exc})") from exc
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            entries = data["sources"] if isinstance(data, dict) else data
            sources = [e["source"] if isinstance(e, dict) else e for e in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"source list {path}: expected a manifest.json or a JSON list of paths ({exc})") from exc
        if not all(isinstance(s, str) for s in sources):
            raise ValueError(f"source list {path}: every source must be a string")
    else:
        sources = [s for s in (line.split("#", 1)[0].strip() for line in text.splitlines()) if s]
    if not sources:
        raise ValueError(f"source list {path} names no sources")
    return sources


def output_names(sources: Sequence[str]) -> dict[str, str]:
    """`<stem>.scores.csv` per source; stems shared by several sources get a short hash of the path."""
    stems = [Path(s.rstrip("/\\")).stem or "source" for s in sources]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    return {
        src: f"{stem}-{hashlib.sha1(src.encode()).hexdigest()[:8]}{SCORES_SUFFIX}"
        if counts[stem] > 1
        else f"{stem}{SCORES_SUFFIX}"
        for src, stem in zip(sources, stems, strict=True)
    }


def check_out_dir(out_dir: Path) -> None:
    """`--out` of a Ray run is a folder; catch the local engine's habit of naming a CSV file."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(
            f"--out {out_dir} is a file; with --engine ray --out is a folder that receives one "
            f"<source-stem>{SCORES_SUFFIX} per source and {MANIFEST_NAME}"
        )
    if out_dir.suffix.lower() in (".csv", ".json", ".txt"):
        raise ValueError(
            f"--out {out_dir} looks like a file name; with --engine ray --out is a folder that receives one "
            f"<source-stem>{SCORES_SUFFIX} per source and {MANIFEST_NAME}"
        )


def run_key(model_sha256: str, config: RayScoreConfig) -> str:
    """What the rows depend on: model, threshold, sampling, columns. Not chunking, batching or workers."""
    payload = {
        "model": model_sha256,
        "threshold": config.threshold,
        "sampling": config.sampling.model_dump(),
        "columns": list(CSV_COLUMNS),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format_version") == MANIFEST_FORMAT else None


def previously_done(manifest: dict[str, Any] | None, key: str, out_dir: Path, names: dict[str, str]) -> dict:
    """Sources an earlier run with the same key finished, whose output is still there."""
    if not manifest or manifest.get("run_key") != key:
        return {}
    done = {}
    for entry in manifest.get("sources", []):
        src = entry.get("source")
        complete = entry.get("status") == "done" and src in names and entry.get("output") == names[src]
        if complete and (Path(out_dir) / names[src]).is_file():
            done[src] = entry
    return done


# ---------------------------------------------------------------------------------------------
# Plan and decode (run on the cluster's CPU workers)


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


@dataclass
class DecodedChunk:
    frames: list[Frame]
    eof: int = OPEN_END
    error: str = ""


def selector_at(sampling: SamplingConfig, fps: float, index: int) -> FrameSelector | None:
    """The frame selector as the local engine's sequential loop leaves it just before `index`
    (None when that loop would already have stopped). Replays the selection, which costs
    arithmetic only: no frame before `index` is decoded."""
    selector = FrameSelector(sampling, fps)
    if selector.skip_to(index) < index or selector.finished(index):
        return None
    return selector


def seek_exact(cap: cv2.VideoCapture, index: int) -> bool:
    """Position `cap` so that the next grab() returns frame `index`, if the container says it can.

    FFmpeg seeks to the keyframe before `index` and decodes forward to it; this was checked to give
    the same frames as sequential decoding for mp4v, MJPG, XVID, VP8, VP9 and H.264 files. A seek
    past the end of the stream reports another position, so it is also False.
    """
    return bool(cap.set(cv2.CAP_PROP_POS_FRAMES, index)) and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == index


def decode_video_range(spec: ChunkSpec, sampling: SamplingConfig, transform: Callable) -> DecodedChunk:
    """The frames the local engine keeps in [first, stop), decoded from a seek to `first`."""
    cap = open_video(spec.source)
    try:
        fps = video_fps(cap, spec.source)
        selector = selector_at(sampling, fps, spec.first)
        if selector is None:
            return DecodedChunk([])  # sampling stopped before this chunk (max_frames)
        if spec.first and not seek_exact(cap, spec.first):
            cap.release()  # read up to the chunk sequentially, as the local engine would
            cap = open_video(spec.source)
            for i in range(spec.first):
                if not cap.grab():
                    return DecodedChunk([], eof=i)
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


# ---------------------------------------------------------------------------------------------
# Score (Ray Data actors)


class ChunkScorer:
    """A scoring actor: loads the model once, then scores chunk after chunk with the scoring core."""

    def __init__(
        self, model_bytes: bytes, device: str, threshold: float | None, batch_size: int, torch_threads: int
    ) -> None:
        torch.set_num_threads(max(1, torch_threads))
        # the checkpoint travels with the actor, so workers need not see the driver's files
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            path.write_bytes(model_bytes)
            detector = load_detector(path, torch.device(device))
        self.detector = detector if threshold is None else detector.with_threshold(threshold)
        self.batch_size = batch_size

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        images, indices, timestamps = row["images"], row["indices"], row["timestamps"]
        source = str(row["source"])
        parts, anomalies = [], 0
        for i in range(0, len(images), self.batch_size):
            sl = slice(i, i + self.batch_size)
            frames = [
                Frame(image=img, source=source, index=int(idx), timestamp_s=float(ts))
                for img, idx, ts in zip(images[sl], indices[sl], timestamps[sl], strict=True)
            ]
            # Ray hands out read-only views of its object store; torch wants arrays it may write to
            scored = ScoredBatch(frames, score_prepared(self.detector, images[sl].copy()))
            parts.append(csv_text(csv_rows(scored)))
            anomalies += int(scored.scores.is_anomaly.sum())
        return {
            "source_id": int(row["source_id"]),
            "chunk": int(row["chunk"]),
            "n_chunks": int(row["n_chunks"]),
            "csv": "".join(parts),
            "frames": len(images),
            "anomalies": anomalies,
            "eof": int(row["eof"]),
            "reported": int(row["reported"]),
            "error": str(row["error"]),
        }


# ---------------------------------------------------------------------------------------------
# Assemble and write (driver)


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


class RunWriter:
    """Writes each finished source and keeps `manifest.json` current (atomically, at most every
    `min_interval_s` while running), so an interrupted run leaves a truthful record behind."""

    def __init__(self, config: RayScoreConfig, outcomes: dict[str, SourceOutcome], header: dict[str, Any]) -> None:
        self.config = config
        self.outcomes = outcomes
        self.header = header
        self.path = Path(config.out_dir) / MANIFEST_NAME
        self.min_interval_s = 1.0
        self._last_write = 0.0

    def finish_source(self, source: str, parts: Sequence[ChunkResult]) -> SourceOutcome:
        rows, frames, anomalies, error = assemble(source, parts)
        outcome = self.outcomes[source]
        if rows or not error:  # a failed source with no rows leaves no file
            atomic_write_text(Path(self.config.out_dir) / str(outcome.output), csv_text([CSV_COLUMNS]) + rows)
        else:
            outcome.output = None
        outcome.frames, outcome.anomalies, outcome.error = frames, anomalies, error
        outcome.status = "failed" if error else "done"
        self.write_manifest()
        return outcome

    def write_manifest(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_write < self.min_interval_s:
            return
        self._last_write = now
        outcomes = list(self.outcomes.values())
        payload = {
            **self.header,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "complete": all(o.status != "pending" for o in outcomes),
            "totals": {
                "sources": len(outcomes),
                "done": sum(o.status == "done" for o in outcomes),
                "failed": sum(o.status == "failed" for o in outcomes),
                "pending": sum(o.status == "pending" for o in outcomes),
                "frames": sum(o.frames for o in outcomes),
                "anomalies": sum(o.anomalies for o in outcomes),
            },
            "sources": [{k: v for k, v in asdict(o).items() if k != "reused"} for o in outcomes],
        }
        atomic_write_text(self.path, json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class Resources:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    device: str


def plan_resources(config: RayScoreConfig, cluster: dict[str, float]) -> Resources:
    """Scoring actors and what each reserves; at least one CPU must stay free for decoding."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if config.device == "cuda" and gpus < 1:
        raise ValueError("--device cuda was asked for, but the Ray cluster has no GPUs (use --device auto or cpu)")
    use_gpu = config.device == "cuda" or (config.device == "auto" and gpus >= 1)
    workers = config.workers or (int(gpus) if use_gpu else max(1, int(cpus) // 2))
    if use_gpu and workers > gpus:
        raise ValueError(f"{workers} GPU scoring workers asked for, but the Ray cluster has {gpus:g} GPUs")
    if cpus - workers * config.cpus_per_worker < config.decode_cpus:
        raise ValueError(
            f"{workers} scoring worker(s) with {config.cpus_per_worker:g} CPU(s) each leave no CPU of the cluster's "
            f"{cpus:g} for decoding; use fewer --workers or --threads"
        )
    return Resources(workers, config.cpus_per_worker, 1.0 if use_gpu else 0.0, "cuda" if use_gpu else "cpu")


def local_cpus(config: RayScoreConfig) -> int:
    """Logical CPUs of a local instance: the machine's, but never fewer than the actors plus one
    decoding slot (on a small laptop decoding and scoring then share the cores)."""
    machine = os.cpu_count() or 1
    workers = config.workers or max(1, machine // 2)
    return max(machine, math.ceil(workers * config.cpus_per_worker + config.decode_cpus))


def score_on_ray(
    config: RayScoreConfig, log: Callable[[str], None] = print, *, scorer: type[ChunkScorer] = ChunkScorer
) -> RayScoreSummary:
    """Score `config.sources` into `config.out_dir` on Ray; see the module docstring.

    Uses the Ray instance this process is connected to, if any; otherwise joins `config.address`
    or starts (and afterwards stops) a local one. `scorer` is the actor class (a subclass can add
    per-chunk work; the tests use one that crashes its worker).
    """
    import ray

    check_out_dir(config.out_dir)
    out_dir = Path(config.out_dir)
    detector = load_detector(config.model_path, torch.device("cpu"))  # fail early on a bad model file
    threshold = config.threshold if config.threshold is not None else detector.threshold
    sources = expand_sources(list(config.sources))
    names = output_names(sources)
    model_bytes = Path(config.model_path).read_bytes()
    model_sha256 = hashlib.sha256(model_bytes).hexdigest()
    key = run_key(model_sha256, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = previously_done(read_manifest(out_dir / MANIFEST_NAME), key, out_dir, names)

    outcomes: dict[str, SourceOutcome] = {}
    for src in sources:
        entry = done.get(src)
        if entry:
            outcomes[src] = SourceOutcome(
                src, names[src], "done", int(entry.get("frames", 0)), int(entry.get("anomalies", 0)), reused=True
            )
        else:
            outcomes[src] = SourceOutcome(src, names[src], "pending")
    header = {
        "format_version": MANIFEST_FORMAT,
        "engine": "ray",
        "model": str(config.model_path),
        "model_sha256": model_sha256,
        "run_key": key,
        "threshold": threshold,
        "sampling": config.sampling.model_dump(),
        "columns": list(CSV_COLUMNS),
    }
    writer = RunWriter(config, outcomes, header)
    todo = [src for src in sources if outcomes[src].status == "pending"]
    if done:
        log(f"{len(done)} source(s) already scored with this model and settings; {len(todo)} to do")
    if not todo:
        writer.write_manifest(final=True)
        return RayScoreSummary(list(outcomes.values()), threshold, writer.path)

    started_here = not ray.is_initialized()
    if started_here:
        if config.address:
            ray.init(address=config.address, logging_level="WARNING")
        else:
            ray.init(num_cpus=local_cpus(config), include_dashboard=False, logging_level="WARNING")
    try:
        run_chunks(config, detector.config.preprocess, model_bytes, sources, todo, writer, log, scorer)
    finally:
        writer.write_manifest(final=True)
        if started_here:
            ray.shutdown()
    return RayScoreSummary(list(outcomes.values()), threshold, writer.path)


def run_chunks(
    config: RayScoreConfig,
    preprocess: PreprocessConfig,
    model_bytes: bytes,
    sources: Sequence[str],
    todo: Sequence[str],
    writer: RunWriter,
    log: Callable[[str], None],
    scorer: type[ChunkScorer] = ChunkScorer,
) -> None:
    """Plan on the cluster, stream chunks through decode tasks and scoring actors, write sources as they finish."""
    import ray
    import ray.data

    resources = plan_resources(config, ray.cluster_resources())
    source_ids = {src: i for i, src in enumerate(sources)}
    plan = ray.remote(num_cpus=config.decode_cpus)(plan_source)
    specs = [
        spec
        for specs in ray.get([plan.remote(source_ids[src], src, config.sampling, config.chunk_frames) for src in todo])
        for spec in specs
    ]
    log(
        f"scoring {len(todo)} source(s) in {len(specs)} chunk(s) on Ray: {resources.workers} scoring worker(s) "
        f"on {resources.device}"
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    h, w = Preprocessor(preprocess).size
    # A decode task holds a decoder and a chunk of prepared frames. Reserving that memory keeps a
    # node from taking more decoders than it can hold, and (its remote arguments differing from the
    # actors') keeps Ray Data from fusing decoding into the scoring actors, where it would take
    # turns with the model instead of running beside it.
    decode_memory = DECODER_MEMORY_BYTES + max(config.chunk_frames, 1) * h * w * 3
    scored = (
        ray.data.from_items([asdict(s) for s in specs], override_num_blocks=len(specs))
        .map(
            decode_row,
            fn_kwargs={"sampling": config.sampling, "preprocess": preprocess},
            num_cpus=config.decode_cpus,
            memory=decode_memory,
        )
        # Ray Data restarts a dead actor and retries its chunk (max_restarts / max_task_retries -1)
        .map(
            scorer,
            fn_constructor_kwargs={
                "model_bytes": model_bytes,
                "device": resources.device,
                "threshold": config.threshold,
                "batch_size": config.batch_size,
                "torch_threads": max(1, int(resources.cpus_per_worker)),
            },
            compute=ray.data.ActorPoolStrategy(size=resources.workers),
            num_cpus=resources.cpus_per_worker,
            num_gpus=resources.gpus_per_worker,
        )
    )
    pending: dict[int, dict[int, ChunkResult]] = {}
    bar = progress_bar(total=len(todo), desc="sources", unit="source", enabled=config.progress)
    try:
        for row in scored.iter_rows():
            part = ChunkResult(**{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()})
            chunks = pending.setdefault(part.source_id, {})
            chunks[part.chunk] = part  # a retried chunk replaces, never adds to, its rows
            if len(chunks) == part.n_chunks:
                src = sources[part.source_id]
                outcome = writer.finish_source(src, list(chunks.values()))
                del pending[part.source_id]
                bar.update(1)
                if outcome.error:
                    log(f"warning: {outcome.error}")
    finally:
        bar.close()
