"""`anomaly demo` and `anomaly generate-samples`: the bundled synthetic clips, and the model trained on them."""

import json
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
    seed: int = 0,
    scale: Annotated[int, typer.Option(min=1, help="make every clip this many times longer")] = 1,
) -> None:
    """Write the synthetic dashcam clips (normal ones for training, labeled ones for testing)."""
    from synthetic.scene import generate_sample_set

    written = generate_sample_set(out, seed=seed, scale=scale)
    typer.echo(json.dumps([str(p) for p in written], indent=2))
