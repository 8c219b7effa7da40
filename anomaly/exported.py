"""Scoring with an exported model (`anomaly export`) in ONNX Runtime or OpenVINO, without torch.

This module and what it imports (numpy, OpenCV for preprocessing, pydantic for the config, the
folder's runtime: `anomaly.runtimes`) never import torch: on a gateway or in a vehicle the exported folder and these few
packages are all that runs. `ExportedDetector` offers what the scorers use of a torch `Detector`
(preprocessing, camera profiles, threshold, `score_prepared`), so `anomaly score` and the batch
scorer take either. The graphs compute every signal and the heat map (`anomaly.export`); the
score is combined here with the same `anomaly.frame_scores.frame_scores` the torch path uses.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from anomaly import __version__
from anomaly.config import COSTLY_SIGNALS, Combination, DetectorConfig, costly_signals_computed
from anomaly.frame_scores import FrameScores, combination_of, frame_scores
from anomaly.heat import HeatLayout
from anomaly.model_files import default_threads, file_sha256
from anomaly.preprocess import Preprocessor
from anomaly.profiles import FLEET, profile_for, profile_note
from anomaly.runtimes import RUNTIME_NAMES, RUNTIMES, CompiledGraph, GraphLoadError, Runtime, load_graph
from anomaly.scene_baseline import SceneBaseline

EXPORT_KIND = "anomaly-exported-detector"
# the graphs' outputs besides the signals: the heat map's cells (`anomaly.heat` makes pixels of them) and the
# frames' summary features (what the scene baseline finds similar frames by, `anomaly.scene_baseline`)
HEAT_CELLS = "heat_cells"
SUMMARY_FEATURES = "summary_features"
SCENE_PREFIX = "scene_"  # a profile's scene baseline in its statistics file: its arrays under this prefix
# what `anomaly export` writes (1: the heat map per pixel, and the discriminator always run; 2: no summary
# features out of the graphs, so no scene baseline)
EXPORT_FORMAT = 3
READABLE_FORMATS = (EXPORT_FORMAT,)


class ExportedModelError(ValueError):
    """An exported model folder that is missing, incomplete, altered or from an incompatible version."""


def graph_key(costly: frozenset[str]) -> str:
    """The name of the graph that computes the cheap signals and exactly these costly ones: "all" for
    every signal, "lean" for none, else the costly signals' names joined by "+"."""
    if costly == COSTLY_SIGNALS:
        return "all"
    return "+".join(sorted(costly)) or "lean"


def needed_graphs(profile_signals: Iterable[Sequence[str]]) -> dict[str, frozenset[str]]:
    """The graphs a folder holds for profiles scoring these signals, by key: every signal ("all", for
    `--all-signals`) and each profile's own costly signals; each key with the costly signals it computes."""
    wanted = {COSTLY_SIGNALS, *(costly_signals_computed(tuple(signals), False) for signals in profile_signals)}
    return {graph_key(c): c for c in sorted(wanted, key=lambda c: (-len(c), sorted(c)))}  # "all" first


def is_exported_model(path: Path) -> bool:
    """An exported model is a folder; a torch model is a file."""
    return Path(path).is_dir()


@dataclass(frozen=True)
class ExportedProfile:
    name: str
    loc: dict[str, float]
    scale: dict[str, float]
    signals: tuple[str, ...]
    threshold: float
    target_false_alarm_rate: float
    stats: dict[str, np.ndarray] = field(repr=False)
    combination: Combination = "max"
    calibration_summary: dict[str, Any] = field(default_factory=dict)
    scene: SceneBaseline | None = None

    def summary(self) -> dict[str, Any]:
        """As `anomaly.calibration.Calibration.summary` of the profile it was exported from."""
        return {**self.calibration_summary, "threshold": self.threshold}


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's detector.json, checked: kind, format version, and every file it names, by SHA-256."""
    folder = Path(folder)
    path = folder / "detector.json"
    if not folder.is_dir():
        raise ExportedModelError(f"exported model folder not found: {folder}")
    if not path.is_file():
        raise ExportedModelError(f"{folder} holds no detector.json: it is not a model written by `anomaly export`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportedModelError(f"{path} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != EXPORT_KIND:
        raise ExportedModelError(f"{path} is not the manifest of an exported anomaly model")
    version = manifest.get("format_version")
    if version not in READABLE_FORMATS:
        raise ExportedModelError(
            f"{path} has export format version {version}, but this build of anomaly ({__version__}) reads "
            f"version {', '.join(map(str, READABLE_FORMATS))}; export the model again with this version"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ExportedModelError(f"{path} lists no files")
    for rel, digest in files.items():
        target = (folder / rel).resolve()
        if folder.resolve() not in target.parents:
            raise ExportedModelError(f"{path} names a file outside its folder: {rel}")
        if not target.is_file():
            raise ExportedModelError(f"{folder} is incomplete: {rel} is missing")
        if file_sha256(target) != digest:
            raise ExportedModelError(f"{folder}/{rel} does not match its checksum in detector.json (altered, damaged)")
    return manifest


def _profiles(folder: Path, manifest: dict[str, Any], inputs: list[str]) -> dict[str, ExportedProfile]:
    out = {}
    for name, p in manifest["profiles"].items():
        with np.load(folder / p["stats"], allow_pickle=False) as arrays:
            stats = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in inputs[1:]}
            scene = {k.removeprefix(SCENE_PREFIX): arrays[k] for k in arrays.files if k.startswith(SCENE_PREFIX)}
        out[str(name)] = ExportedProfile(
            name=str(name),
            loc={k: float(v) for k, v in p["loc"].items()},
            scale={k: float(v) for k, v in p["scale"].items()},
            signals=tuple(p["signals"]),
            threshold=float(p["threshold"]),
            target_false_alarm_rate=float(p["target_false_alarm_rate"]),
            stats=stats,
            combination=combination_of(p),
            calibration_summary=dict(p["summary"]),
            scene=SceneBaseline.from_arrays(scene) if scene else None,
        )
    if FLEET not in out:
        raise ExportedModelError(f"{folder}/detector.json holds no fleet profile")
    return out


class _Sessions:
    """The folder's compiled graphs, each loaded on first use and shared by every copy of a detector."""

    def __init__(self, folder: Path, graphs: dict[str, Any], threads: int, runtime: Runtime = "onnx") -> None:
        self.folder, self.graphs, self.threads, self.runtime = folder, graphs, threads, runtime
        self._open: dict[str, CompiledGraph] = {}

    def get(self, key: str) -> tuple[CompiledGraph, list[str]]:
        if key not in self._open:
            try:
                self._open[key] = load_graph(self.runtime, self.folder / self.graphs[key]["file"], self.threads)
            except GraphLoadError as exc:
                raise ExportedModelError(str(exc)) from None
        return self._open[key], list(self.graphs[key]["outputs"])


@dataclass
class ExportedDetector:
    """An exported model, ready to score: the counterpart of `anomaly.detector.Detector` without torch."""

    folder: Path
    config: DetectorConfig
    profiles_by_name: dict[str, ExportedProfile]
    sessions: _Sessions
    profile: str = FLEET
    all_signals: bool = False
    threshold_override: float | None = None
    preprocessor: Preprocessor = field(init=False)

    def __post_init__(self) -> None:
        self.preprocessor = Preprocessor(self.config.preprocess)

    @property
    def device(self) -> str:
        return f"cpu ({RUNTIME_NAMES[self.sessions.runtime]})"

    @property
    def profiles(self) -> dict[str, ExportedProfile]:
        """Camera profiles (the fleet profile is not among them, as for `Detector.profiles`)."""
        return {k: v for k, v in self.profiles_by_name.items() if k != FLEET}

    @property
    def calibrated(self) -> ExportedProfile:
        return self.profiles_by_name[self.profile]

    @property
    def threshold(self) -> float:
        return self.calibrated.threshold if self.threshold_override is None else self.threshold_override

    def for_camera(self, camera: str | None) -> ExportedDetector:
        name = profile_for(camera, self.profiles)
        return self if name == self.profile else dataclasses.replace(self, profile=name, threshold_override=None)

    def profile_note(self, camera: str | None) -> str:
        """One line saying which profile scores `camera`'s frames."""
        return profile_note(camera, {name: p.threshold for name, p in self.profiles.items()})

    def with_threshold(self, threshold: float) -> ExportedDetector:
        return dataclasses.replace(self, threshold_override=float(threshold))

    def with_all_signals(self, enabled: bool = True) -> ExportedDetector:
        return self if enabled == self.all_signals else dataclasses.replace(self, all_signals=enabled)

    def score_prepared(self, prepared: Sequence[np.ndarray] | np.ndarray) -> FrameScores:
        """Score frames already passed through `preprocessor.prepare` (RGB uint8, model size)."""
        batch = np.ascontiguousarray(np.stack(prepared) if not isinstance(prepared, np.ndarray) else prepared)
        if batch.shape[1:] != (*self.preprocessor.size, 3) or batch.dtype != np.uint8:
            h, w = self.preprocessor.size
            raise ValueError(f"prepared frames must be {w}x{h} RGB uint8, got {batch.shape[1:]} {batch.dtype}")
        cal = self.calibrated
        # the graph without the costly signals this profile's score does not use, as the torch scorer skips them
        graph, outputs = self.sessions.get(graph_key(costly_signals_computed(cal.signals, self.all_signals)))
        values = graph.run(outputs, {"frames": batch, **cal.stats})
        named = dict(zip(outputs, values, strict=True))
        heat_cells, features = named.pop(HEAT_CELLS), named.pop(SUMMARY_FEATURES)
        return frame_scores(
            named,
            heat_cells,
            HeatLayout.of(self.config),
            loc=cal.loc,
            scale=cal.scale,
            names=cal.signals,
            threshold=self.threshold,
            profile=self.profile,
            rule=cal.combination,
            scene=cal.scene,
            features=features,
        )


def load_exported(folder: Path, threads: int | None = None) -> ExportedDetector:
    """An exported model folder, checked (see `read_manifest`), ready to score with `threads` CPU threads."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        config = DetectorConfig.model_validate(manifest["config"])
        inputs = list(manifest["inputs"])
        profiles = _profiles(folder, manifest, inputs)
        graphs = {k: {"file": str(g["file"]), "outputs": list(g["outputs"])} for k, g in manifest["graphs"].items()}
        runtime = manifest["format"]
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        raise ExportedModelError(f"{folder}/detector.json holds a config this version cannot read ({where})") from None
    except (KeyError, TypeError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"[:160]
        raise ExportedModelError(f"{folder}/detector.json is incomplete or damaged ({reason})") from None
    if runtime not in RUNTIMES:
        raise ExportedModelError(
            f"{folder}/detector.json is for the runtime {runtime!r}; this version runs {', '.join(RUNTIMES)}"
        )
    needed = set(needed_graphs(p.signals for p in profiles.values()))
    if not needed <= set(graphs):
        missing = ", ".join(sorted(needed - set(graphs)))
        raise ExportedModelError(f"{folder}/detector.json lacks the graphs its profiles need ({missing})")
    return ExportedDetector(
        folder=folder,
        config=config,
        profiles_by_name=profiles,
        sessions=_Sessions(folder, graphs, threads or default_threads(), runtime),
    )
