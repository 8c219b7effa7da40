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
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from anomaly.checkpoint import load_detector
from anomaly.config import PreprocessConfig
from anomaly.preprocess import Preprocessor
from anomaly.progress import progress_bar
from batch.ray.chunks import DECODER_MEMORY_BYTES, ChunkResult, decode_row, plan_source
from batch.ray.config import RayScoreConfig
from batch.ray.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    RayScoreSummary,
    RunWriter,
    SourceOutcome,
    check_out_dir,
    output_names,
    previously_done,
    read_manifest,
    run_key,
)
from batch.ray.scorer import ChunkScorer
from footage.ingest import (
    expand_sources,
)
from footage.scores_csv import CSV_COLUMNS


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
    target = None if config.threshold is not None else detector.calibrated.target_false_alarm_rate
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
        return RayScoreSummary(list(outcomes.values()), threshold, writer.path, target)

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
    return RayScoreSummary(list(outcomes.values()), threshold, writer.path, target)


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
    # the workers' process settings, set before their Python starts (a runtime environment per task)
    worker_env = {"runtime_env": {"env_vars": dict(config.worker_env)}} if config.worker_env else {}
    scored = (
        ray.data.from_items([asdict(s) for s in specs], override_num_blocks=len(specs))
        .map(
            decode_row,
            fn_kwargs={"sampling": config.sampling, "preprocess": preprocess},
            num_cpus=config.decode_cpus,
            memory=decode_memory,
            **worker_env,
        )
        # Ray Data restarts a dead actor and retries its chunk (max_restarts / max_task_retries -1)
        .map(
            scorer,
            fn_constructor_kwargs={
                "model_bytes": model_bytes,
                "device": resources.device,
                "threshold": config.threshold,
                "all_signals": config.all_signals,
                "batch_size": config.batch_size,
                "torch_threads": max(1, int(resources.cpus_per_worker)),
            },
            compute=ray.data.ActorPoolStrategy(size=resources.workers),
            num_cpus=resources.cpus_per_worker,
            num_gpus=resources.gpus_per_worker,
            **worker_env,
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
