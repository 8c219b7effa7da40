"""`anomaly evaluate`: how well a model separates labeled anomalies, at which threshold, against baselines.

Steps, all on the same frames:

1. scores: read a scores CSV from `anomaly score`, or score the given clips first (written as
   `scores.csv` in the output folder, so a later run can start from it);
2. labels (per-frame or interval CSVs, `footage.labels`) joined to the scored frames;
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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly.checkpoint import save_detector
from anomaly.config import DetectorConfig
from anomaly.detector import Detector
from anomaly.preprocess import Preprocessor
from anomaly.thresholds import (
    ThresholdChoice,
    sweep,
    threshold_from_flags,
)
from evaluation.baselines import run_baselines
from evaluation.config import EvaluationConfig
from evaluation.inputs import join_labels, label_paths, read_scores, score_clips
from evaluation.measures import frame_figures, signal_figures, stretch_ids, temporal_view, threshold_table, top_rows
from evaluation.outputs import _json_ready, clear_outputs, write_figures, write_json, write_sweep_csv, write_top_frames
from evaluation.pixels import read_pixels
from evaluation.report import write_report


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    files: dict[str, Path]
    notes: list[str]


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
    thresholds = threshold_table(scored, result, calibrated, choice, config.report_far)
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
        ("target FPR", "report_far"),
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
