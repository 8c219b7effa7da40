"""The scene baseline at other neighbour counts than the product's: each frame's score less the normal level of
the held-out frames that look like it (`anomaly.scene_baseline`).

    python benchmarks/scene_baseline.py runs/fleet [--k 10,20,30,auto]

Offline, on a finished `benchmarks/fleet_eval.py` run (its `model.pt`, `frames/` and `scores.csv`); nothing
in the product changes. Why: on the fleet benchmark most of what the score lost was between drives, not
within one (README, *The scene baseline*). Printed, per k:

- the signals' combination without the baseline (the product before it), and the oracle it stands in
  for: each drive's own later median removed (no product has it);
- the baseline with k neighbours, as the product builds it (`fit_scene_baseline`, k replaced): a frame's
  level is the median known-drive score of its k nearest held-out frames; the threshold comes from
  held-out frames scored as drives never seen (`anomaly.calibrate.signals_of_unseen_sources`), each less
  its level among the *other* drives' held-out frames, at the model's target rate;
- AUROC per kind (later footage against each kind, as fleet_eval), the share of later footage flagged
  (per drive) and of the unseen camera flagged with the fleet profile.

`auto` is the product's k: held-out frames / held-out drives. The run's own calibration is re-derived
first and checked against the checkpoint's, and the scores against its CSV, so the figures are the product's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from anomaly.calibrate import collect_raw, evenly_index, signals_of_unseen_sources
from anomaly.calibration import fit_scaling
from anomaly.checkpoint import load_detector
from anomaly.detector import Detector
from anomaly.frame_scores import combine
from anomaly.scene_baseline import fit_scene_baseline
from anomaly.scoring import signal_values
from anomaly.thresholds import threshold_for_rate
from anomaly.training.train import TrainingData
from footage.sampling import SamplingConfig
from footage.scores_csv import read_scores_csv
from footage.training_frames import load_named_prepared_frames

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_eval import parts  # noqa: E402
from signal_combinations import aurocs, shown  # noqa: E402


def prepared(detector: Detector, folders: list[Path]) -> list[np.ndarray]:
    """Each folder's prepared frames, read as `anomaly train` and `score` read them (`--folder-fps 10`)."""
    sampling = SamplingConfig(folder_fps=10)
    limit = detector.config.train.max_train_frames
    return [
        frames
        for _, frames in load_named_prepared_frames(list(map(str, folders)), sampling, detector.preprocessor, limit)
    ]


def scored(detector: Detector, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The signals' combination (no scene baseline) and the summary features of frames, with the statistics
    the model keeps."""
    cal = detector.calibrated
    raw = collect_raw(detector, frames)
    values, _ = signal_values(raw, cal.stats, detector.config.calibration)
    signals = {n: values[n].numpy().astype(np.float64) for n in cal.signals}
    return combine(signals, cal.loc, cal.scale, cal.signals, cal.combination), raw.features.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a fleet_eval.py --out folder")
    parser.add_argument("--k", default="10,20,30,auto", help="neighbour counts to try (comma-separated; auto)")
    args = parser.parse_args()
    run: Path = args.run
    detector = load_detector(run / "model.pt", torch.device("cpu"))
    cal, cfg = detector.calibrated, detector.config.calibration

    # the held-out frames as `anomaly train` split them (the benchmark's training folders, in its order)
    folders = [run / "frames" / "train" / part.name for part in parts() if part.role == "train"]
    data = TrainingData.split(prepared(detector, folders), detector.config.train.holdout_fraction)
    assert data.holdout_groups is not None and data.train_groups is not None
    seen_at = evenly_index(len(data.train), cfg.max_stat_frames)
    keep = evenly_index(len(data.holdout), cfg.max_stat_frames)
    seen, held_raw = collect_raw(detector, data.train[seen_at]), collect_raw(detector, data.holdout[keep])
    groups = data.holdout_groups[keep]
    unseen = signals_of_unseen_sources(
        cal.stats, seen, data.train_groups[seen_at], held_raw, groups, cfg, detector.config.train.seed
    )
    if unseen is None:
        raise SystemExit(f"{run}: fewer than two held-out drives, no unseen-drive scores to set a threshold by")
    loc, scale = fit_scaling(unseen)
    same = all(np.isclose(loc[n], cal.loc[n], rtol=1e-6) and np.isclose(scale[n], cal.scale[n]) for n in cal.signals)
    print(f"calibration re-derived from the run's frames: {'identical' if same else 'DIFFERENT (figures unreliable)'}")
    held_unseen = combine(unseen, cal.loc, cal.scale, cal.signals, cal.combination)
    held_known, held_features = scored(detector, data.holdout[keep])

    # the test frames of the run, in its CSV's order
    csv = read_scores_csv(run / "scores.csv")
    sources = [Path(s) for s in dict.fromkeys(csv["source"])]
    test = prepared(detector, sources)
    kinds = np.concatenate([[s.parent.name] * len(f) for s, f in zip(sources, test, strict=True)])
    drives = np.concatenate([[s.name] * len(f) for s, f in zip(sources, test, strict=True)])
    score, features = scored(detector, np.concatenate(test))
    product = score - csv.get("scene_level", 0.0)
    print(f"test scores against the CSV's: largest difference {np.abs(product - csv['score']).max():.1e}")

    later = kinds == "later"
    header = "| design | threshold | all | " + " | ".join(shown(kinds)) + " | later FA | per drive | unseen camera FA |"
    print("\n" + header + "\n|" + "---|" * (header.count("|") - 1))

    def row(label: str, values: np.ndarray, threshold: float) -> None:
        total, per_kind = aurocs(values, kinds)
        aucs = " | ".join(f"{a:.3f}" for a in per_kind)
        if not np.isfinite(threshold):  # no threshold: AUROC only
            print(f"| {label} | | {total:.3f} | {aucs} | | | |")
            return
        flagged = values > threshold
        per_drive = ", ".join(
            f"{d.split('__')[0]} {flagged[later & (drives == d)].mean():.1%}" for d in np.unique(drives[later])
        )
        print(
            f"| {label} | {threshold:.3f} | {total:.3f} | {aucs} | {flagged[later].mean():.1%} | {per_drive} "
            f"| {flagged[kinds == 'unseen'].mean():.1%} |"
        )

    if cal.scene is None:
        row("product (no scene baseline)", score, cal.threshold)
    else:
        row("without the scene baseline (not calibrated: AUROC only)", score, float("nan"))
    oracle = score.copy()
    for d in np.unique(drives[later]):
        oracle[drives == d] -= np.median(score[later & (drives == d)])
    row("oracle: each drive's own later median removed (not a design)", oracle, float("nan"))
    assert cal.stats.feature_center is not None and cal.stats.feature_scale is not None
    center, spread = cal.stats.feature_center.numpy(), cal.stats.feature_scale.numpy()
    fitted = fit_scene_baseline(center, spread, held_features, held_known, groups)
    assert fitted is not None  # two or more held-out drives (checked above)
    for k in [fitted.k if k == "auto" else int(k) for k in args.k.split(",")]:
        scene = dataclasses.replace(fitted, k=k)
        threshold = threshold_for_rate(held_unseen - scene.leave_group_out_levels(groups), cal.target_false_alarm_rate)
        label = f"scene baseline, k={scene.k}{' (auto: the product)' if scene.k == fitted.k else ''}"
        row(label, score - scene.levels(features), threshold)


if __name__ == "__main__":
    main()
