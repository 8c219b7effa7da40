"""`anomaly evaluate`: how well a model separates labeled anomalies, at which threshold, against baselines.

Steps, all on the same frames:

1. scores: read a scores CSV from `anomaly score`, or score the given clips first (written as
   `scores.csv` in the output folder, so a later run can start from it);
2. labels (per-frame or interval CSVs, `pipelines.labels`) joined to the scored frames;
3. frame level: AUROC and average precision overall and per kind, the full threshold sweep, and the
   figures at the calibrated, best-F1, target-false-positive-rate and operating thresholds;
4. temporal: each clip's scores run through `EventTracker` (the streaming service's own event
   logic) at the operating threshold, and the events matched to the labeled stretches;
5. baselines (PCA, autoencoder without the adversarial part) trained on normal clips and scored on
   the same frames, when those frames' pixels can be read;
6. `metrics.json`, `sweep.csv`, `events.json`, PNG figures, the most anomalous frames with heat maps,
   and `report.html`, which holds all of it in one file.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomaly.baselines import AutoencoderOnlyBaseline, PCABaseline
from anomaly.checkpoint import save_detector
from anomaly.config import DetectorConfig
from anomaly.detector import Detector
from anomaly.events import Event, EventConfig, EventTracker
from anomaly.metrics import (
    Stretch,
    StretchMatch,
    auroc,
    average_precision,
    event_metrics,
    kind_metrics,
    kind_parts,
    labeled_stretches,
    match_events,
    normal_hours,
)
from anomaly.preprocess import Preprocessor
from anomaly.scoring import score_frames
from anomaly.thresholds import ThresholdChoice, ThresholdSweep, best_f1, operating_point, sweep, threshold_for_fpr
from anomaly.train import TrainingData
from pipelines.ingest import IngestError, SamplingConfig, expand_sources, iter_source_frames, probe_source
from pipelines.labels import LabelError, Labels, SourceExtent, labels_path_for
from pipelines.plots import frame_pair, histogram_figure, kind_colours, pr_figure, roc_figure, save_png, timeline_figure
from pipelines.report import Picture, write_report
from pipelines.score_videos import REQUIRED_COLUMNS, read_scores_csv, score_sources
from pipelines.training import load_prepared_frames

SIGNAL_COLUMNS = {
    "spatial": "spatial_score",
    "latent": "latent_score",
    "recon": "recon_error",
    "disc": "disc_score",
    "knn": "knn_score",
    "local": "local_score",
    "disc_patch": "disc_patch_score",
}
TOP_FRAME_GAP_S = 1.0  # the strip shows at most one frame per second of a clip, not one event ten times
UNDEFINED_POINT = dict.fromkeys(
    ("threshold", "tp", "fp", "fn", "tn", "precision", "recall", "false_positive_rate", "f1")
)


@dataclass(frozen=True)
class EvaluationConfig:
    """Everything `anomaly evaluate` was asked to do; checked on construction so mistakes fail before any work."""

    out_dir: Path
    sources: tuple[str, ...] = ()  # clips to score with the model; or
    scores_csv: Path | None = None  # a scores CSV from `anomaly score`
    model_path: Path | None = None
    labels: tuple[Path, ...] = ()  # empty: <clip>.labels.csv beside each clip
    threshold: str | None = None  # a number, best-f1, far:RATE or calibrated (see ThresholdChoice)
    write_model: Path | None = None  # copy of the model with the operating threshold
    target_far: float = 0.01
    events: EventConfig = field(default_factory=EventConfig)
    baseline_train: tuple[str, ...] = ()  # normal clips for the baselines; empty: no baselines
    baseline_steps: int | None = None  # AE-only training steps (default: the model's)
    top_k: int = 12
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    batch_size: int = 16
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if bool(self.sources) == (self.scores_csv is not None):
            raise ValueError("give either clips to score (with --model) or --scores CSV, not both or neither")
        if self.sources and self.model_path is None:
            raise ValueError("scoring clips needs --model; or evaluate a scores CSV with --scores")
        if self.write_model is not None:
            if self.model_path is None or self.threshold is None:
                raise ValueError("--write-model needs --model and --threshold (the threshold to write)")
            if Path(self.write_model).resolve() == Path(self.model_path).resolve():
                raise ValueError("--write-model must be a new file: the model given with --model is left unchanged")
        if self.threshold is not None:
            ThresholdChoice.parse(self.threshold)
        if not 0.0 <= self.target_far < 1.0:
            raise ValueError(f"--target-far must be in [0, 1), got {self.target_far}")
        if self.top_k < 0 or self.batch_size < 1:
            raise ValueError("top_k must be >= 0 and batch_size >= 1")
        if self.baseline_steps is not None and self.baseline_steps < 1:
            raise ValueError("--baseline-steps must be >= 1")


@dataclass
class Scored:
    """The evaluated frames: CSV columns plus labels, in CSV order."""

    cols: dict[str, np.ndarray]
    labels: np.ndarray
    kinds: list[str]

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(self.cols["source"]))

    def rows_of(self, source: str) -> np.ndarray:
        """Row positions of one source, in frame order."""
        rows = np.flatnonzero(self.cols["source"] == source)
        return rows[np.argsort(self.cols["frame_index"][rows], kind="stable")]


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    files: dict[str, Path]
    notes: list[str]


# ---------------------------------------------------------------------------------------------
# Inputs


def read_scores(path: Path) -> dict[str, np.ndarray]:
    """A scores CSV as columns, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise OSError(f"scores CSV not found: {path}")
    with path.open(newline="") as fh:
        header = next(csv.reader(fh), [])
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path} is not a scores CSV from `anomaly score` (missing {', '.join(missing)})")
    cols = read_scores_csv(path)
    if len(cols["score"]) == 0:
        raise ValueError(f"{path} holds no scored frames")
    if not np.isfinite(cols["score"]).all():
        raise ValueError(f"{path}: some scores are not finite numbers")
    return cols


def score_clips(detector: Detector, config: EvaluationConfig, out_csv: Path) -> Path:
    """Score the clips with the model (the same code as `anomaly score`); any unreadable clip is an error."""
    summary = score_sources(
        detector,
        list(config.sources),
        out_csv,
        sampling=config.sampling,
        batch_size=config.batch_size,
        progress=config.progress,
    )
    if summary.errors:
        raise IngestError("; ".join(f"{src}: {err}" for src, err in summary.errors.items()))
    return out_csv


def label_paths(config: EvaluationConfig, sources: Sequence[str]) -> list[Path]:
    """The label files given, or `<clip>.labels.csv` beside each clip."""
    if config.labels:
        return list(config.labels)
    found = [labels_path_for(Path(s)) for s in sources if labels_path_for(Path(s)).is_file()]
    if not found:
        raise LabelError("no labels: pass --labels, or put <clip>.labels.csv beside each clip")
    return found


def source_extents(sources: Sequence[str], cols: dict[str, np.ndarray]) -> tuple[dict[str, SourceExtent], list[str]]:
    """Length of each clip that can be probed (for the past-the-end check), and those that cannot."""
    extents, unknown = {}, []
    for src in sources:
        try:
            info = probe_source(src)
        except IngestError:
            unknown.append(src)
            continue
        scored = cols["frame_index"][cols["source"] == src]
        n = max(info.frame_count, int(scored.max()) + 1 if scored.size else 0)
        if n <= 0 or info.fps <= 0:
            unknown.append(src)
            continue
        extents[src] = SourceExtent(n_frames=n, duration_s=n / info.fps)
    return extents, unknown


def join_labels(cols: dict[str, np.ndarray], paths: Sequence[Path], notes: list[str]) -> Scored:
    labels = Labels.read(paths)
    sources = list(dict.fromkeys(cols["source"]))
    labels.check_sources(sources)
    extents, unknown = source_extents(sources, cols)
    labels.check_extents(extents)
    if unknown:
        notes.append(
            "Could not open " + ", ".join(unknown) + " to check that the labels stay within the video's length."
        )
    joined, kinds = labels.join(list(cols["source"]), list(cols["frame_index"]), list(cols["timestamp_s"]))
    return Scored(cols=cols, labels=joined, kinds=kinds)


def threshold_from_flags(scores: np.ndarray, flagged: np.ndarray) -> float:
    """The threshold a scoring run used, recovered from its `is_anomaly` column (a value that reproduces it)."""
    scores, flagged = np.asarray(scores, dtype=np.float64), np.asarray(flagged, dtype=bool)
    calm = scores[~flagged]
    if calm.size == 0:
        return float(np.nextafter(scores.min(), -np.inf))
    top_calm = float(calm.max())
    if not flagged.any():
        return top_calm
    low_flag = float(scores[flagged].min())
    if low_flag <= top_calm:
        raise ValueError(
            "the scores CSV's is_anomaly column does not follow from one threshold (was it edited or concatenated "
            "from runs with different thresholds?); pass --model or --threshold"
        )
    return (top_calm + low_flag) / 2.0


# ---------------------------------------------------------------------------------------------
# Figures


def track_source(
    source: str,
    frame_indices: np.ndarray,
    timestamps_s: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    config: EventConfig,
) -> tuple[np.ndarray, list[Event]]:
    """One clip through the streaming event tracker: smoothed scores and the events it reports."""
    tracker = EventTracker(source, threshold, config)
    smoothed = np.empty(len(scores))
    events: list[Event] = []
    for k, (i, t, s) in enumerate(zip(frame_indices, timestamps_s, scores, strict=True)):
        upd = tracker.update(int(i), float(t), float(s))
        smoothed[k] = upd.smoothed
        events.extend(upd.finished)
    events.extend(tracker.close())
    return smoothed, events


def frame_figures(scored: Scored, op: float) -> dict[str, Any]:
    """Frame-level figures of the model: overall and per kind (with the share flagged at threshold `op`)."""
    cols, labels, kinds = scored.cols, scored.labels, scored.kinds
    per_kind = kind_metrics(labels, kinds, cols["score"])
    flagged = cols["score"] > op
    for kind, entry in per_kind.items():
        mine = np.array([lab and kind in kind_parts(k) for lab, k in zip(labels, kinds, strict=True)])
        entry["recall"] = float(flagged[mine].mean())
    return {
        "auroc": auroc(labels, cols["score"]),
        "average_precision": average_precision(labels, cols["score"]),
        "per_kind": per_kind,
    }


def signal_figures(scored: Scored) -> dict[str, Any]:
    """AUROC of each raw signal in the CSV, to show which one carries which kind."""
    return {
        name: {
            "auroc": auroc(scored.labels, scored.cols[col]),
            "auroc_per_kind": {
                k: v["auroc"] for k, v in kind_metrics(scored.labels, scored.kinds, scored.cols[col]).items()
            },
        }
        for name, col in SIGNAL_COLUMNS.items()
        if col in scored.cols
    }


def top_rows(
    scored: Scored,
    k: int,
    among: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    gap_s: float = TOP_FRAME_GAP_S,
) -> list[int]:
    """The k highest-scoring rows (of those `among` marks) for a strip an analyst reads: no two from the
    same group (labeled stretch, id >= 0) and none within `gap_s` seconds of another of its clip."""
    cols = scored.cols
    chosen: list[int] = []
    for r in np.argsort(-cols["score"], kind="stable"):
        if len(chosen) >= k:
            break
        if among is not None and not among[r]:
            continue
        if groups is not None and groups[r] >= 0 and any(groups[c] == groups[r] for c in chosen):
            continue
        if any(
            cols["source"][c] == cols["source"][r] and abs(cols["timestamp_s"][c] - cols["timestamp_s"][r]) < gap_s
            for c in chosen
        ):
            continue
        chosen.append(int(r))
    return chosen


def stretch_ids(scored: Scored, stretches: Sequence[Stretch]) -> np.ndarray:
    """Per row, the position of the labeled stretch it belongs to (-1 for normal frames)."""
    cols = scored.cols
    ids = np.full(len(scored.labels), -1)
    for i, st in enumerate(stretches):
        inside = (cols["frame_index"] >= st.start_frame) & (cols["frame_index"] <= st.end_frame)
        ids[(cols["source"] == st.source) & inside & scored.labels] = i
    return ids


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


def clear_outputs(out: Path) -> None:
    """Remove images an earlier run left in the output folders (other clips, other frames); nothing else."""
    for folder, pattern in (("timelines", "*.png"), ("top_frames", "*.jpg"), ("top_normal_frames", "*.jpg")):
        for old in (out / folder).glob(pattern):
            old.unlink()


# ---------------------------------------------------------------------------------------------
# Pixels: top frames and baselines need the frames again


def read_pixels(
    scored: Scored, wanted_bgr: set[int], preprocessor: Preprocessor | None
) -> tuple[dict[int, np.ndarray], np.ndarray | None, list[str]]:
    """Decode the scored frames again: full frames for `wanted_bgr` rows, prepared frames for every row
    (when `preprocessor` is given). Returns those and the clips that could not be read."""
    cols = scored.cols
    bgr: dict[int, np.ndarray] = {}
    prepared: np.ndarray | None = None
    missing: list[str] = []
    for src in scored.sources:
        rows = scored.rows_of(src)
        want_rows = {int(cols["frame_index"][r]): int(r) for r in rows}
        keep_bgr = {int(cols["frame_index"][r]) for r in rows if int(r) in wanted_bgr}
        if preprocessor is None and not keep_bgr:
            continue
        found: dict[int, np.ndarray] = {}
        try:
            last = max(want_rows) if preprocessor is not None else max(keep_bgr)
            for frame in iter_source_frames(src, SamplingConfig(max_frames=last + 1)):
                row = want_rows.get(frame.index)
                if row is None:
                    continue
                if frame.index in keep_bgr:
                    bgr[row] = frame.image
                if preprocessor is not None:
                    found[row] = preprocessor.prepare(frame.image)
        except IngestError as err:
            missing.append(f"{src} ({err})")
            continue
        if preprocessor is not None:
            if len(found) < len(rows):
                missing.append(f"{src} (only {len(found)} of its {len(rows)} scored frames could be decoded)")
                continue
            if prepared is None:
                h, w = preprocessor.size
                prepared = np.zeros((len(cols["score"]), h, w, 3), np.uint8)
            for row, img in found.items():
                prepared[row] = img
    return bgr, (prepared if not missing else None), missing


def run_baselines(
    scored: Scored,
    prepared: np.ndarray,
    base_config: DetectorConfig,
    config: EvaluationConfig,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """PCA and AE-only baselines trained on the normal clips and scored on the evaluated frames."""
    train_sources = expand_sources(list(config.baseline_train))
    pre = Preprocessor(base_config.preprocess)
    log(f"baselines: reading {len(train_sources)} normal clip(s) ...")
    per_source = load_prepared_frames(
        train_sources,
        SamplingConfig(),
        pre,
        base_config.train.max_train_frames,
        lambda src, err: log(f"warning: skipped {src}: {err}"),
    )
    labels, kinds = scored.labels, scored.kinds
    out: dict[str, Any] = {}

    log("baselines: PCA ...")
    pca = PCABaseline().fit(np.concatenate(per_source))
    pca_scores = pca.score(prepared)
    out["pca"] = {
        "label": "PCA",
        "description": f"reconstruction error of a {pca.pca.n_components_}-component PCA of 64x36 frames",
        "components": int(pca.pca.n_components_),
        "scores": pca_scores,
    }

    ae = AutoencoderOnlyBaseline(base_config, steps=config.baseline_steps)
    log(f"baselines: autoencoder without the adversarial part ({ae.config.train.steps} steps) ...")
    model_file = config.out_dir / "baselines" / "ae_only.pt"
    ae.fit(
        TrainingData.split(per_source, ae.config.train.holdout_fraction),
        model_file,
        progress=config.progress,
        log=log,
    )
    ae_scores = ae.score(prepared, batch_size=max(config.batch_size, 32))
    out["ae_only"] = {
        "label": "AE only",
        "description": "the same autoencoder trained without the adversarial loss, scored by its mean and worst-cell "
        "reconstruction error",
        "steps": ae.config.train.steps,
        "model_file": str(model_file),
        "scores": ae_scores["score"],
        "signals": {
            name: {
                "auroc": auroc(labels, ae_scores[name]),
                "auroc_per_kind": {k: v["auroc"] for k, v in kind_metrics(labels, kinds, ae_scores[name]).items()},
            }
            for name in ("recon", "spatial")
        },
    }
    for entry in out.values():
        s = entry["scores"]
        entry.update(
            auroc=auroc(labels, s),
            average_precision=average_precision(labels, s),
            per_kind=kind_metrics(labels, kinds, s),
        )
    return out


# ---------------------------------------------------------------------------------------------
# Outputs


def write_sweep_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = ["threshold", "tp", "fp", "fn", "tn", "precision", "recall", "false_positive_rate", "f1"]
    with Path(path).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(
                ["" if r[c] is None else (f"{r[c]:.10g}" if isinstance(r[c], float) else r[c]) for c in columns]
            )
    return Path(path)


def _json_ready(value: Any) -> Any:
    """numpy scalars to Python, NaN to null (metrics.json must be strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, payload: Any) -> Path:
    Path(path).write_text(json.dumps(_json_ready(payload), indent=2, allow_nan=False))
    return Path(path)


def write_top_frames(
    scored: Scored,
    rows: list[int],
    bgr: dict[int, np.ndarray],
    detector: Detector | None,
    folder: Path,
) -> list[Picture]:
    """Frames beside their heat maps (heat maps need the model), as JPEGs to keep the report light."""
    cols = scored.cols
    rows = [r for r in rows if r in bgr]
    if not rows:
        return []
    heat = score_frames(detector, [bgr[r] for r in rows]).heatmap if detector is not None else None
    pictures = []
    folder.mkdir(parents=True, exist_ok=True)
    for n, r in enumerate(rows):
        src, idx, t, s = cols["source"][r], int(cols["frame_index"][r]), float(cols["timestamp_s"][r]), cols["score"][r]
        if detector is not None and heat is not None:
            scale = max(2.0 * detector.threshold, 1.0)
            image = frame_pair(bgr[r], heat[n], preprocessor=detector.preprocessor, heat_scale=scale)
        else:
            image = frame_pair(bgr[r])
        path = folder / f"{n + 1:02d}_{safe_name(Path(src).stem)}_f{idx}.jpg"
        if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 88]):
            raise OSError(f"cannot write {path}")
        truth = f"labeled {scored.kinds[r] or 'anomaly'}" if scored.labels[r] else "labeled normal"
        pictures.append(Picture(path, f"{Path(src).name} frame {idx} at {t:.2f} s: score {s:.2f} ({truth})"))
    return pictures


def threshold_table(
    scored: Scored, result: ThresholdSweep, calibrated: tuple[float, str], choice: ThresholdChoice, target_far: float
) -> dict[str, Any]:
    """Figures at the calibrated, best-F1, target-FPR and operating thresholds."""
    labels, scores = scored.labels, scored.cols["score"]
    operating = choice.resolve(result, calibrated[0])
    far = threshold_for_fpr(result, target_far).to_dict() if result.negatives else UNDEFINED_POINT
    return {
        "calibrated": {**operating_point(labels, scores, calibrated[0]).to_dict(), "source": calibrated[1]},
        "best_f1": best_f1(result).to_dict() if result.positives else UNDEFINED_POINT,
        "target_far": {"target": target_far, **far},
        "operating": {**operating_point(labels, scores, operating).to_dict(), "choice": choice.describe()},
    }


@dataclass
class Temporal:
    """The clips run through the event tracker at the operating threshold, and the labeled stretches."""

    smoothed: np.ndarray
    events: list[Event]
    stretches: list[Stretch]
    metrics: dict[str, Any]
    matches: list[StretchMatch]
    false_alarms: list[int]


def temporal_view(scored: Scored, threshold: float, config: EventConfig) -> Temporal:
    cols, labels = scored.cols, scored.labels
    smoothed = np.empty(len(labels))
    events: list[Event] = []
    for src in scored.sources:
        rows = scored.rows_of(src)
        smoothed[rows], found = track_source(
            src, cols["frame_index"][rows], cols["timestamp_s"][rows], cols["score"][rows], threshold, config
        )
        events.extend(found)
    stretches = labeled_stretches(cols["source"], cols["frame_index"], cols["timestamp_s"], labels, scored.kinds)
    hours = normal_hours(cols["source"], cols["timestamp_s"], labels)
    matches, false_alarms = match_events(stretches, events)
    return Temporal(smoothed, events, stretches, event_metrics(stretches, events, hours), matches, false_alarms)


def write_figures(
    scored: Scored,
    thresholds: dict[str, Any],
    temporal: Temporal,
    baselines: dict[str, Any],
    out: Path,
) -> tuple[list[Picture], list[Picture]]:
    """Curves and histogram (model and baselines), and one score-over-time figure per clip."""
    cols, labels, scores = scored.cols, scored.labels, scored.cols["score"]
    curves = {"model": (labels, scores), **{b["label"]: (labels, b["scores"]) for b in baselines.values()}}
    op = thresholds["operating"]
    roc_marks, pr_marks = {}, {}
    if op["recall"] is not None and op["false_positive_rate"] is not None:
        roc_marks["operating threshold"] = (op["false_positive_rate"], op["recall"])
    if op["recall"] is not None and op["precision"] is not None:
        pr_marks["operating threshold"] = (op["recall"], op["precision"])
    lines = {"calibrated": thresholds["calibrated"]["threshold"]}
    if thresholds["best_f1"]["threshold"] is not None:
        lines["best F1"] = thresholds["best_f1"]["threshold"]
    if op["threshold"] not in lines.values():
        lines["operating"] = op["threshold"]
    figures = [
        Picture(save_png(roc_figure(curves, roc_marks), out / "roc.png"), "ROC curves of the model and baselines"),
        Picture(save_png(pr_figure(curves, pr_marks), out / "pr.png"), "Precision-recall curves"),
        Picture(
            save_png(histogram_figure(scores, labels, lines), out / "histogram.png"),
            "Score histograms of normal and anomalous frames",
        ),
    ]
    colours = kind_colours(scored.kinds)
    timelines = []
    for n, src in enumerate(scored.sources):
        rows = scored.rows_of(src)
        fig = timeline_figure(
            src,
            cols["timestamp_s"][rows],
            scores[rows],
            temporal.smoothed[rows],
            op["threshold"],
            [s for s in temporal.stretches if s.source == src],
            [e for e in temporal.events if e.source == src],
            colours,
        )
        path = save_png(fig, out / "timelines" / f"{n + 1:02d}_{safe_name(Path(src).stem)}.png")
        timelines.append(Picture(path, f"{src}: score over time; labeled stretches shaded, detected events in red"))
    return figures, timelines


def evaluate(
    config: EvaluationConfig, detector: Detector | None, *, log: Callable[[str], None] = print
) -> EvaluationResult:
    """Run the whole evaluation and write its files into `config.out_dir`."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    notes: list[str] = []

    # scores and labels
    if config.sources:
        if detector is None:
            raise ValueError("scoring clips needs the model")
        log(f"scoring {len(config.sources)} clip(s) ...")
        scores_csv = files["scores_csv"] = score_clips(detector, config, out / "scores.csv")
    else:
        scores_csv = Path(config.scores_csv)  # type: ignore[arg-type]
    cols = read_scores(scores_csv)
    paths = label_paths(config, list(dict.fromkeys(cols["source"])))
    scored = join_labels(cols, paths, notes)
    labels, scores = scored.labels, cols["score"]
    if not labels.any() or labels.all():
        notes.append("The labels hold only one class of frames: AUROC, precision and the curves are undefined.")

    # frame level and thresholds
    result = sweep(labels, scores)
    if detector is not None:
        calibrated = (detector.threshold, "model")
    else:
        calibrated = (threshold_from_flags(scores, cols["is_anomaly"]), "recovered from the scores CSV's flags")
    choice = ThresholdChoice.parse(config.threshold) if config.threshold else ThresholdChoice("calibrated")
    thresholds = threshold_table(scored, result, calibrated, choice, config.target_far)
    operating = thresholds["operating"]["threshold"]
    files["sweep_csv"] = write_sweep_csv(out / "sweep.csv", result.rows())

    # temporal view at the operating threshold
    temporal = temporal_view(scored, operating, config.events)
    metrics: dict[str, Any] = {
        "inputs": {
            "scores_csv": str(scores_csv),
            "model": str(config.model_path) if config.model_path else None,
            "labels": [str(p) for p in paths],
            "sources": scored.sources,
            "baseline_train": list(config.baseline_train),
        },
        "frames": {
            "total": len(scores),
            "normal": int((~labels).sum()),
            "anomalous": int(labels.sum()),
            "sources": len(scored.sources),
        },
        "frame_metrics": frame_figures(scored, operating),
        "signals": signal_figures(scored),
        "thresholds": thresholds,
        "events": {"threshold": operating, "config": config.events.model_dump(), **temporal.metrics},
    }

    # pixels: the frame strips and the baselines need the frames again
    base_config = detector.config if detector is not None else DetectorConfig()
    base_config = base_config.model_copy(
        update={"train": base_config.train.model_copy(update={"device": config.device})}
    )
    want_baselines = bool(config.baseline_train)
    top = top_rows(scored, config.top_k, groups=stretch_ids(scored, temporal.stretches))
    top_normal = top_rows(scored, config.top_k // 2, among=~labels)
    pre = Preprocessor(base_config.preprocess) if want_baselines else None
    wanted = set(top) | set(top_normal)
    bgr, prepared, unreadable = read_pixels(scored, wanted, pre) if (wanted or pre) else ({}, None, [])
    if unreadable:
        notes.append(
            "Could not read the frames of "
            + "; ".join(unreadable)
            + ": "
            + ("baselines skipped; " if want_baselines else "")
            + "the frame strips leave those clips out. Baselines and frame strips need the clips' pixels: "
            "evaluate from the clips, or keep them where the scores CSV names them."
        )
    baselines: dict[str, Any] = {}
    if want_baselines and prepared is not None:
        baselines = run_baselines(scored, prepared, base_config, config, log)
        files["ae_only_model"] = out / "baselines" / "ae_only.pt"
    elif not want_baselines:
        notes.append("No baselines were run: pass --baseline-train with normal clips to compare PCA and AE-only.")
    metrics["baselines"] = {k: {kk: vv for kk, vv in v.items() if kk != "scores"} for k, v in baselines.items()}
    if detector is None and wanted:
        notes.append("Heat maps need the model: pass --model to see them next to the most anomalous frames.")

    # files
    log("writing figures and report ...")
    clear_outputs(out)
    figures, timelines = write_figures(scored, thresholds, temporal, baselines, out)
    strip = write_top_frames(scored, top, bgr, detector, out / "top_frames")
    normal_strip = write_top_frames(scored, top_normal, bgr, detector, out / "top_normal_frames")
    if config.write_model is not None:
        assert detector is not None  # checked by EvaluationConfig
        save_detector(detector.with_threshold(operating), config.write_model)
        metrics["written_model"] = {"path": str(config.write_model), "threshold": operating}
        files["written_model"] = Path(config.write_model)
        log(f"wrote {config.write_model} with threshold {operating:.6g}")
    alarms = set(temporal.false_alarms)
    events_payload = {
        "threshold": operating,
        "config": config.events.model_dump(),
        "labeled": [m.to_dict() for m in temporal.matches],
        "detected": [{**e.to_dict(), "false_alarm": i in alarms} for i, e in enumerate(temporal.events)],
    }
    files["events_json"] = write_json(out / "events.json", events_payload)
    metrics["notes"] = notes
    metrics["files"] = {
        **{k: str(v) for k, v in files.items()},
        "metrics_json": str(out / "metrics.json"),
        "report_html": str(out / "report.html"),
        "figures": [str(p.path) for p in figures + timelines],
        "top_frames": [str(p.path) for p in strip + normal_strip],
    }
    metrics = _json_ready(metrics)
    files["metrics_json"] = write_json(out / "metrics.json", metrics)
    files["report_html"] = write_report(
        out / "report.html",
        metrics=metrics,
        stretches=_json_ready(events_payload["labeled"]),
        figures=figures,
        timelines=timelines,
        strip=strip,
        normal_strip=normal_strip,
        notes=notes,
    )
    return EvaluationResult(metrics=metrics, files=files, notes=notes)


def format_summary(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal; the report has the rest."""
    fm, th, ev = metrics["frame_metrics"], metrics["thresholds"], metrics["events"]

    def f(v: float | None, pct: bool = False) -> str:
        return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")

    lines = [
        f"frames: {metrics['frames']['total']} ({metrics['frames']['normal']} normal, "
        f"{metrics['frames']['anomalous']} anomalous) from {metrics['frames']['sources']} clip(s)",
        f"AUROC {f(fm['auroc'])}   average precision {f(fm['average_precision'])}",
    ]
    for name, key in (
        ("calibrated", "calibrated"),
        ("best F1", "best_f1"),
        ("target FPR", "target_far"),
        ("operating", "operating"),
    ):
        p = th[key]
        lines.append(
            f"  {name:<11} threshold {f(p['threshold']):>8}  precision {f(p['precision'], True):>6}  "
            f"recall {f(p['recall'], True):>6}  FPR {f(p['false_positive_rate'], True):>6}  F1 {f(p['f1'])}"
        )
    lines.append(
        f"events: {ev['detected_events']}/{ev['labeled_events']} labeled stretches detected, "
        f"{ev['false_alarms']} false alarm(s) ({f(ev['false_alarms_per_hour'])} per hour of normal driving), "
        f"median delay {f(ev['delay_s']['median'])}" + (" s" if ev["delay_s"]["median"] is not None else "")
    )
    kinds = list(fm["per_kind"])
    if kinds:
        names = ["model", *[b["label"] for b in metrics["baselines"].values()]]
        lines.append(f"{'AUROC per kind':<16}" + "".join(f"{n:>10}" for n in names))
        for k in kinds:
            vals = [
                fm["per_kind"][k]["auroc"],
                *[b["per_kind"].get(k, {}).get("auroc") for b in metrics["baselines"].values()],
            ]
            lines.append(f"{k:<16}" + "".join(f"{f(v):>10}" for v in vals))
        vals = [fm["auroc"], *[b["auroc"] for b in metrics["baselines"].values()]]
        lines.append(f"{'all':<16}" + "".join(f"{f(v):>10}" for v in vals))
    return "\n".join(lines)
