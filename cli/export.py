"""`anomaly export`: a trained model as ONNX graphs (or OpenVINO IR) and its calibration, for runtimes without torch."""

import time
from pathlib import Path
from typing import Annotated

import typer

from anomaly.runtimes import Runtime
from cli.options import friendly_errors


@friendly_errors
def export(
    model: Annotated[Path, typer.Argument(help="model file from `anomaly train` or `anomaly calibrate`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write the exported model into (replaced)")],
    format: Annotated[  # noqa: A002 - the option is --format
        Runtime,
        typer.Option(
            "--format",
            help="onnx: ONNX graphs for ONNX Runtime (opset 18); openvino: the same graphs as OpenVINO IR "
            "(needs pip install 'anomaly[openvino]')",
        ),
    ] = "onnx",
) -> None:
    """Export a model (networks, scoring, camera profiles) for ONNX Runtime or OpenVINO: `anomaly score --model DIR`."""
    import torch

    from anomaly.checkpoint import load_detector
    from anomaly.export import export_detector
    from anomaly.model_files import file_sha256

    started = time.perf_counter()
    detector = load_detector(model, torch.device("cpu"))
    manifest = export_detector(detector, out, format, source_sha256=file_sha256(model))
    cameras = ", ".join(sorted(detector.profiles)) or "none"
    typer.echo(
        f"exported {model} as {format} to {out} in {time.perf_counter() - started:.1f} s "
        f"(camera profiles: {cameras}); score with `anomaly score ... --model {out}`"
    )
    typer.echo(f"manifest: {manifest}", err=True)
