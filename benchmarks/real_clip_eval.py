"""Quality on real dashcam footage: train on the first 70% of a clip, test on the rest with injected anomalies.

    python benchmarks/real_clip_eval.py [--video ../shared/data/solidWhiteRight.mp4] [--steps 1500]

The test frames are the last 30% of the clip (scenery the model never saw). Each anomaly kind is
injected into every test frame, with the same injectors that make the synthetic sample set, so
each kind's AUROC compares the same frames with and without that anomaly. Printed next to the
model: each of its signals alone, and the PCA reconstruction-error baseline fit on the same
training frames. The false-alarm rate is measured on the clean test frames at the calibrated
threshold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from anomaly.config import SIGNAL_NAMES, DetectorConfig, TrainConfig
from anomaly.frame_scores import SIGNAL_FIELDS
from anomaly.metrics import auroc
from anomaly.preprocess import Preprocessor
from anomaly.scoring import score_prepared
from anomaly.training.train import TrainingData, train_detector
from evaluation.baselines import PCABaseline
from footage.ingest import iter_source_frames
from footage.sampling import SamplingConfig
from synthetic.anomalies import KINDS, InjectedAnomaly, apply_event

REAL_CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "solidWhiteRight.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=REAL_CLIP)
    parser.add_argument("--steps", type=int, default=TrainConfig().steps)
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--road-anchor", type=float, nargs=2, default=(0.5, 0.72), help="where the road ahead is (x y)")
    parser.add_argument("--out", type=Path, default=Path("runs/real_clip"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if not args.video.exists():
        raise SystemExit(f"{args.video} not found (the real clip lives in ../shared/data beside the project)")

    config = DetectorConfig(train=TrainConfig(steps=args.steps, device=args.device))
    pre = Preprocessor(config.preprocess)
    frames = [f.image for f in iter_source_frames(args.video, SamplingConfig())]
    n_train = int(len(frames) * args.train_fraction)
    train_bgr, test_bgr = frames[:n_train], frames[n_train:]
    train_prep = np.stack([pre.prepare(f) for f in train_bgr])
    data = TrainingData.split([train_prep], config.train.holdout_fraction)
    args.out.mkdir(parents=True, exist_ok=True)
    detector = train_detector(config, data, args.out / "model.pt")
    pca = PCABaseline().fit(data.train)

    sets = {"normal": test_bgr}
    for k, kind in enumerate(KINDS):
        event = InjectedAnomaly(
            kind=kind, start_frame=0, end_frame=len(test_bgr), seed=100 + k, anchor=tuple(args.road_anchor)
        )
        sets[kind] = [apply_event(f, event, i) for i, f in enumerate(test_bgr)]

    # the combined score, then every signal (the score's first; all computed, the others too), then PCA
    used = detector.calibrated.signals
    signals = [*used, *(n for n in SIGNAL_NAMES if n not in used)]
    columns = ("score", *(SIGNAL_FIELDS[n] for n in signals), "pca")
    every_signal = detector.with_all_signals()
    results: dict[str, dict[str, np.ndarray]] = {}
    for name, imgs in sets.items():
        prepared = np.stack([pre.prepare(f) for f in imgs])
        s = score_prepared(every_signal, prepared)
        results[name] = {c: getattr(s, c) for c in columns[:-1]} | {"pca": pca.score(prepared)}

    table: dict[str, dict[str, float | None]] = {}
    anomalous = [k for k in KINDS]
    for c in columns:
        normal = results["normal"][c]
        row = {}
        for kind in anomalous:
            labels = np.r_[np.zeros(len(normal)), np.ones(len(results[kind][c]))]
            row[kind] = auroc(labels, np.r_[normal, results[kind][c]])
        all_scores = np.concatenate([normal] + [results[k][c] for k in anomalous])
        all_labels = np.r_[np.zeros(len(normal)), np.ones(len(all_scores) - len(normal))]
        row["all"] = auroc(all_labels, all_scores)
        table[c] = row
    far = float((results["normal"]["score"] > detector.threshold).mean())

    print(f"\n{args.video.name}: {n_train} frames for training/calibration, {len(test_bgr)} test frames per kind")
    width = max(len(c) for c in columns) + 2
    print(f"{'AUROC':<14}" + "".join(f"{c:>{width}}" for c in columns))
    for kind in [*anomalous, "all"]:
        print(f"{kind:<14}" + "".join(f"{table[c][kind]:>{width}.3f}" for c in columns))
    print(
        f"\nfalse-alarm rate on clean test frames at the calibrated threshold: {far:.1%} "
        f"(target {detector.calibrated.target_false_alarm_rate:.1%})"
    )
    (args.out / "real_clip_metrics.json").write_text(json.dumps({"auroc": table, "false_alarm_rate": far}, indent=2))


if __name__ == "__main__":
    main()
