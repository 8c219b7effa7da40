"""The end-to-end demo: bundled sample clips -> trained model -> scored test clips -> quality figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from anomaly.config import DetectorConfig
from anomaly.frame_scores import SIGNAL_FIELDS
from anomaly.metrics import auroc, frame_summary, per_kind_auroc
from anomaly.preprocess import Preprocessor
from anomaly.training.train import TrainingData, train_detector
from batch.local import score_sources
from footage.labels import FrameLabels, labels_path_for
from footage.sampling import SamplingConfig
from footage.scores_csv import read_scores_csv
from footage.training_frames import load_named_prepared_frames
from synthetic.sample_set import generate_sample_set

DEMO_CLIP_WIDTH = 480  # px: sharp enough in the review page's player, a few seconds of the demo


def sample_clips(sample_dir: Path, log: Callable[[str], None]) -> tuple[list[Path], list[Path]]:
    """Training and labeled test clips of the sample set, generating it first if it is missing."""
    train = sorted(sample_dir.glob("normal_*.mp4"))
    test = sorted(sample_dir.glob("test_*.mp4"))
    if not train or not test:
        log(f"generating sample clips in {sample_dir} ...")
        generate_sample_set(sample_dir)
        train, test = sorted(sample_dir.glob("normal_*.mp4")), sorted(sample_dir.glob("test_*.mp4"))
    return train, test


def run_demo(
    sample_dir: Path,
    out_dir: Path,
    config: DetectorConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    train_clips, test_clips = sample_clips(Path(sample_dir), log)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"training on {len(train_clips)} normal clips ({config.train.steps} steps) ...")
    named = load_named_prepared_frames(
        [str(p) for p in train_clips], SamplingConfig(), Preprocessor(config.preprocess), config.train.max_train_frames
    )
    detector = train_detector(
        config,
        TrainingData.split(
            [f for _, f in named], config.train.holdout_fraction, names=[Path(n).name for n, _ in named]
        ),
        out_dir / "model.pt",
        progress=progress,
        log=log,
    )
    log(f"scoring {len(test_clips)} labeled test clips ...")
    scores_csv = out_dir / "scores.csv"
    score_sources(  # every signal: the demo reports each one's AUROC
        detector.with_all_signals(),
        [str(p) for p in test_clips],
        scores_csv,
        events_path=out_dir / "events.json",
        # each event as a short MP4 beside events.json, for review in a browser; 320 px wide keeps this to about
        # 3 s on a 2-core CPU (the default 640 px, where drawing the heat map dominates, adds about 7 s)
        clips_dir=out_dir / "clips",
        clip_max_width=DEMO_CLIP_WIDTH,
        progress=progress,
    )
    cols = read_scores_csv(scores_csv)
    labels, kinds = FrameLabels.read([labels_path_for(p) for p in test_clips]).join(cols["source"], cols["frame_index"])
    metrics = frame_summary(labels, kinds, cols["score"], detector.threshold)
    metrics["target_false_alarm_rate"] = detector.calibrated.target_false_alarm_rate
    metrics["signals"] = {
        name: {"auroc": auroc(labels, cols[col]), "auroc_per_kind": per_kind_auroc(labels, kinds, cols[col])}
        for name, col in SIGNAL_FIELDS.items()
        if col in cols
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def format_report(metrics: dict) -> str:
    """A short plain-text table of the demo's figures."""

    def width(name: str) -> int:  # a column as wide as its name and a space, at least 11
        return max(11, len(name) + 1)

    kinds = sorted(metrics["auroc_per_kind"])
    lines = [
        f"test frames: {metrics['frames']} "
        f"({metrics['normal_frames']} normal, {metrics['anomalous_frames']} anomalous)",
        f"AUROC (all kinds): {metrics['auroc']:.3f}    average precision: {metrics['average_precision']:.3f}",
        f"at the calibrated threshold {metrics['threshold']:.3f}: false-alarm rate {metrics['false_alarm_rate']:.2%} "
        f"(target {metrics['target_false_alarm_rate']:.2%}), detection rate {metrics['detection_rate']:.2%}",
        "",
        f"{'AUROC per kind':<16}{'combined':>10}" + "".join(f"{n:>{width(n)}}" for n in metrics["signals"]),
    ]
    for kind in kinds:
        row = f"{kind:<16}{metrics['auroc_per_kind'][kind]:>10.3f}"
        row += "".join(
            f"{_or_nan(s['auroc_per_kind'].get(kind)):>{width(n)}.3f}" for n, s in metrics["signals"].items()
        )
        lines.append(row)
    lines.append(
        f"{'all':<16}{metrics['auroc']:>10.3f}"
        + "".join(f"{s['auroc']:>{width(n)}.3f}" for n, s in metrics["signals"].items())
    )
    return "\n".join(lines)
