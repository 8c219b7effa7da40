"""Exporting a trained detector for runtimes without torch: ONNX graphs (or OpenVINO IR), its calibration beside them.

What an exported model computes is `anomaly.scoring.frame_signals`, traced: the same torch code, not
a second implementation. One graph takes a batch of prepared frames (N x H x W x 3 uint8 RGB, the
output of `Preprocessor.prepare`) and the arrays of one calibration's normal statistics, and gives
every signal, the heat map's cells and the frames' summary features; the score itself
(`anomaly.frame_scores.combine`, a smooth maximum of z-scores, less the scene baseline's level:
`anomaly.scene_baseline`) and the heat map's pixels (`anomaly.heat`) are numpy operations outside it, as
they are for a torch model. The statistics are inputs rather than constants so that one graph serves the
fleet profile and every camera profile, and so that a memory of any size
(at least as many frames as the largest neighbour count) fits.

Written into the output folder, everything plain files (nothing that unpickles):

- `score.onnx`: every signal; and for each set of costly signals (`COSTLY_SIGNALS`, the
  discriminator's among them) that a profile's score uses, a graph with only those and the cheap
  ones, `score_<names joined by +>.onnx` (`score_lean.onnx` for none): the choice `anomaly score` makes for a
  torch model, so that neither computes what the score does not read; for OpenVINO (`--format openvino`)
  each graph is converted by OpenVINO's own converter to its IR (`score.xml` and `score.bin`, float32);
- `profiles/<name>.npz`: each profile's statistics (`numpy.load(..., allow_pickle=False)`), and its scene
  baseline's arrays (`scene_*`) where it has one;
- `detector.json`: format version, runtime (name and version exported with), the detector's config,
  each profile's signal scales, signals and
  threshold, the graphs' input and output names, and the SHA-256 of every file above.

`anomaly.exported` loads and runs it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly import __version__
from anomaly.calibration import Calibration, NormalStats
from anomaly.config import COSTLY_SIGNALS, SIGNAL_NAMES, CalibrationConfig, PreprocessConfig
from anomaly.detector import Detector
from anomaly.exported import EXPORT_FORMAT, EXPORT_KIND, HEAT_CELLS, SCENE_PREFIX, SUMMARY_FEATURES, needed_graphs
from anomaly.model import AutoencoderGAN
from anomaly.model_files import file_sha256
from anomaly.preprocess import normalise
from anomaly.profiles import FLEET
from anomaly.runtimes import GRAPH_SUFFIX, RUNTIME_NAMES, RUNTIMES, Runtime, runtime_version
from anomaly.scoring import frame_signals

OPSET = 18


class ExportError(ValueError):
    """A detector that cannot be exported as asked."""


class ScoringGraph(nn.Module):
    """`frame_signals` of prepared uint8 frames, given one calibration's statistics as tensors."""

    def __init__(
        self,
        model: AutoencoderGAN,
        preprocess: PreprocessConfig,
        calibration: CalibrationConfig,
        stats_fields: tuple[str, ...],
        outputs: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.calibration = calibration
        self.stats_fields = stats_fields
        self.outputs = outputs
        self.skip = frozenset(COSTLY_SIGNALS - set(outputs))

    def forward(self, frames: torch.Tensor, *stats_arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stats = NormalStats(**dict(zip(self.stats_fields, stats_arrays, strict=True)))
        x = normalise(frames, self.preprocess)
        signals, heat, features = frame_signals(self.model, x, stats, self.calibration, self.skip)
        return (*(signals[name] for name in self.outputs if name not in (HEAT_CELLS, SUMMARY_FEATURES)), heat, features)


def present_fields(stats: NormalStats) -> tuple[str, ...]:
    return tuple(f.name for f in fields(NormalStats) if getattr(stats, f.name) is not None)


def memory_floor(calibration: CalibrationConfig) -> int:
    """The fewest memory frames an exported graph accepts: its neighbour counts are fixed in the graph."""
    return max(calibration.knn_k, calibration.local_neighbours, calibration.patch_neighbours)


def layout_mismatch(name: str, fields_of_profile: tuple[str, ...], fleet_fields: tuple[str, ...]) -> str:
    """Why a profile cannot share the fleet profile's graph, and what to recalibrate: a camera calibrated by a
    later release than the fleet holds statistics of signals the fleet was calibrated without."""
    extra = [f for f in fields_of_profile if f not in fleet_fields]
    missing = [f for f in fleet_fields if f not in fields_of_profile]
    if extra and not missing:
        return (
            f"profile {name!r} holds statistics the fleet profile was calibrated without ({', '.join(extra)}: "
            "signals added since); recalibrate the fleet profile with `anomaly train --resume` on its training "
            "run (the networks stay as they are), then the camera with `anomaly calibrate`"
        )
    return (
        f"profile {name!r} lacks statistics the fleet profile holds ({', '.join(missing)}); "
        "recalibrate it with `anomaly calibrate`"
    )


def checked_profiles(detector: Detector) -> dict[str, Calibration]:
    """Every profile (the fleet's first), its statistics checked to fit one graph."""
    profiles = {FLEET: detector.for_camera(None).calibrated, **detector.profiles}
    layout = present_fields(profiles[FLEET].stats)
    floor = memory_floor(detector.config.calibration)
    for name, cal in profiles.items():
        s = cal.stats
        if present_fields(s) != layout:
            raise ExportError(layout_mismatch(name, present_fields(s), layout))
        if s.memory_features is not None and len(s.memory_features) < floor:
            raise ExportError(
                f"profile {name!r} keeps {len(s.memory_features)} memory frames, fewer than the {floor} nearest "
                "frames its signals use; calibrate it on more footage (or lower the neighbour counts) to export it"
            )
    return profiles


def stats_arrays(stats: NormalStats, layout: tuple[str, ...], stored: bool = False) -> dict[str, np.ndarray]:
    """The statistics as the graph takes them (float32), or with `stored` as the folder keeps them: the
    fields checkpoints keep in half precision (the memory patches) in half precision here too."""
    state = stats.to_state()
    return {name: (state[name] if stored else state[name].float()).numpy() for name in layout}


def _export_graph(graph: ScoringGraph, example: tuple[torch.Tensor, ...], path: Path, floor: int) -> None:
    batch = torch.export.Dim("frames", min=1, max=4096)
    memory = torch.export.Dim("memory_frames", min=floor, max=1_000_000)
    dynamic = ({0: batch}, tuple({0: memory} if name.startswith("memory_") else None for name in graph.stats_fields))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            example,
            str(path),
            input_names=["frames", *graph.stats_fields],
            output_names=list(graph.outputs),
            dynamic_shapes=dynamic,
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
        )


def to_openvino(onnx_path: Path) -> list[Path]:
    """An exported ONNX graph as OpenVINO IR beside it (`.xml` and `.bin`, weights kept in float32), the
    ONNX file removed; returns the IR's files."""
    try:
        import openvino as ov
    except ImportError:
        raise ExportError("exporting for OpenVINO needs it installed: pip install 'anomaly[openvino]'") from None
    xml = onnx_path.with_suffix(".xml")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    onnx_path.unlink()
    return [xml, xml.with_suffix(".bin")]


def export_detector(detector: Detector, out_dir: Path, fmt: Runtime = "onnx", *, source_sha256: str = "") -> Path:
    """Write `detector` as an exported model for the runtime `fmt` into `out_dir` (replaced whole,
    atomically); returns its JSON. OpenVINO's folder holds the same graphs, converted to its IR."""
    if fmt not in RUNTIMES:
        raise ExportError(f"unknown export format {fmt!r}: choose {' or '.join(RUNTIMES)}")
    config = detector.config
    profiles_in = checked_profiles(detector)
    layout = present_fields(profiles_in[FLEET].stats)
    floor = memory_floor(config.calibration) if "memory_features" in layout else 1
    model = detector.model.to("cpu").eval()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "detector.json").is_file():
        raise ExportError(f"{out_dir} exists and is not an exported model: give a new or empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        h, w = config.preprocess.height, config.preprocess.width
        example_frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, h, w, 3), dtype=np.uint8))
        fleet_arrays = stats_arrays(profiles_in[FLEET].stats, layout)
        example = (example_frames, *(torch.from_numpy(a) for a in fleet_arrays.values()))
        graphs, outputs, graph_files = {}, {}, []
        for key, costly in needed_graphs(p.signals for p in profiles_in.values()).items():
            graphs[key] = "score" if key == "all" else f"score_{key}"
            signals = (n for n in SIGNAL_NAMES if n not in COSTLY_SIGNALS or n in costly)
            outputs[key] = (*signals, HEAT_CELLS, SUMMARY_FEATURES)
        with torch.no_grad():
            for key, stem in graphs.items():
                graph = ScoringGraph(model, config.preprocess, config.calibration, layout, outputs[key]).eval()
                path = tmp / f"{stem}.onnx"
                _export_graph(graph, example, path, floor)
                graph_files += to_openvino(path) if fmt == "openvino" else [path]
                graphs[key] = f"{stem}{GRAPH_SUFFIX[fmt]}"
        (tmp / "profiles").mkdir()
        profiles: dict[str, Any] = {}
        for i, (name, cal) in enumerate(profiles_in.items()):
            rel = f"profiles/{i:03d}.npz"  # numbered: camera names are free text
            scene = {} if cal.scene is None else {SCENE_PREFIX + k: v for k, v in cal.scene.to_arrays().items()}
            np.savez(tmp / rel, **stats_arrays(cal.stats, layout, stored=True), **scene)
            profiles[name] = {
                "stats": rel,
                "loc": cal.loc,
                "scale": cal.scale,
                "signals": list(cal.signals),
                "combination": cal.combination,
                "threshold": cal.threshold,
                "target_false_alarm_rate": cal.target_false_alarm_rate,
                "summary": cal.summary(),
            }
        files = [*(p.name for p in graph_files), *(p["stats"] for p in profiles.values())]
        manifest = {
            "kind": EXPORT_KIND,
            "format_version": EXPORT_FORMAT,
            "anomaly_version": __version__,
            "format": fmt,
            "runtime": {"name": RUNTIME_NAMES[fmt], "version": runtime_version(fmt)},
            "opset": OPSET,
            "exported_from_sha256": source_sha256,
            "config": config.model_dump(mode="json"),
            "graphs": {key: {"file": name, "outputs": list(outputs[key])} for key, name in graphs.items()},
            "inputs": ["frames", *layout],
            "profiles": profiles,
            "files": {rel: file_sha256(tmp / rel) for rel in files},
        }
        (tmp / "detector.json").write_text(json.dumps(manifest, indent=1) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the finished folder is an ordinary one
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "detector.json"
