"""`anomaly demo` and `anomaly generate-samples`: the bundled synthetic clips, and the model trained on them."""

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from anomaly.config import TrainConfig
from cli.options import DeviceOpt, ProgressOpt, friendly_errors


@friendly_errors
def demo(
    samples: Annotated[Path, typer.Option(help="sample clip folder (generated if missing)")] = Path("sample_videos"),
    out: Annotated[Path, typer.Option(help="where the model, scores and metrics go")] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(min=1)] = TrainConfig.model_fields["steps"].default,
    seed: int = 0,
    device: DeviceOpt = "auto",
    progress: ProgressOpt = True,
) -> None:
    """Generate the sample clips if needed, train on the normal ones, score the labeled ones, report."""
    from anomaly.config import DetectorConfig
    from evaluation.demo import format_report, run_demo

    config = DetectorConfig(train=TrainConfig(steps=steps, seed=seed, device=device))  # type: ignore[arg-type]
    metrics = run_demo(samples, out, config, progress=progress, log=typer.echo)
    typer.echo("")
    typer.echo(format_report(metrics))
    typer.echo(f"\nmodel, scores, events and metrics.json in {out}")


@friendly_errors
def generate_samples(
    out: Annotated[Path, typer.Option(help="folder to write clips and labels to")] = Path("sample_videos"),
    seed: Annotated[int, typer.Option(help="master seed (clip and event seeds derive from it)")] = 0,
    scale: Annotated[int, typer.Option(min=1, help="make every clip this many times longer")] = 1,
    workers: Annotated[int, typer.Option(min=1, help="clips rendered in parallel processes (same files)")] = min(
        4, os.cpu_count() or 1
    ),
) -> None:
    """Write the synthetic dashcam clips (normal ones for training, labeled ones for testing) and manifest.json."""
    from synthetic.sample_set import generate_sample_set

    started = time.perf_counter()
    paths = generate_sample_set(out, seed=seed, scale=scale, workers=workers)
    manifest = json.loads((out / "manifest.json").read_text())
    clips = {c["file"]: c for c in manifest["clips"]}
    total = 0
    for path in paths:
        size = path.stat().st_size
        total += size
        clip = clips.get(path.name)
        typer.echo(
            f"{path}  {size / 1e6:6.2f} MB"
            + (f"  {clip['n_frames']} frames, {len(clip['events'])} events" if clip else "")
        )
    t = manifest["totals"]
    typer.echo(
        f"{total / 1e6:.2f} MB in {time.perf_counter() - started:.1f} s; train frames {t['train_frames']}, test frames "
        f"{t['test_frames']} ({t['test_normal_frames']} normal, {t['test_anomalous_frames']} anomalous: "
        f"{t['test_anomalous_frames_by_kind']})"
    )
