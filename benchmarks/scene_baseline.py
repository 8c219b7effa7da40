"""Would a scene baseline help: each frame's score less the normal level of the held-out frames that look like it.

    python benchmarks/scene_baseline.py runs/fleet [--k 10,20,30,auto]

Offline, on a finished `benchmarks/fleet_eval.py` run (its `model.pt`, `frames/` and `scores.csv`); nothing
in the product changes. Why: on the fleet benchmark most of what the score loses is between drives, not
within one. One drive's later footage (a wet forest road) sits higher on the local signals than the
others', so its normal frames outrank objects on the other roads; removing each drive's own normal level
(an oracle, printed here too) lifts all kinds by 0.02-0.04. A scene baseline is a design that could
stand in for the oracle: the level of a frame's normal neighbours, taken from frames the model held out.

For each k, printed beside the product's figures:

- a frame's **baseline** is the median score of its k nearest held-out frames (in the memory's standardised
  feature space), each scored with the statistics the model keeps, as a later stretch of a known drive is;
- the **threshold** comes, like the product's, from held-out frames scored as drives never seen
  (statistics fitted without their drive, `anomaly.calibrate.signals_of_unseen_sources`), each less the
  baseline of the k nearest held-out frames of the *other* drives, at the model's target rate;
- AUROC per kind (later footage against each kind, as fleet_eval), the share of later footage flagged (per
  drive) and of the unseen camera flagged with the fleet profile.

`auto` is k = held-out frames / held-out drives, about one drive's worth of neighbours. The run's own
calibration is re-derived first and checked against the checkpoint's, so the figures are the product's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from anomaly.calibrate import collect_raw, evenly_index, signals_of_unseen_sources
from anomaly.calibration import fit_scaling
from anomaly.checkpoint import load_detector
from anomaly.detector import Detector
from anomaly.frame_scores import combine
from anomaly.memory import euclidean_distances
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


def scored(detector: Detector, frames: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """The score and standardised features of frames, with the statistics the model keeps."""
    cal = detector.calibrated
    raw = collect_raw(detector, frames)
    values, _ = signal_values(raw, cal.stats, detector.config.calibration)
    signals = {n: values[n].numpy().astype(np.float64) for n in cal.signals}
    features = ((raw.features - cal.stats.feature_center) / cal.stats.feature_scale).float()
    return combine(signals, cal.loc, cal.scale, cal.signals, cal.combination), features


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
    print(f"test scores against the CSV's: largest difference {np.abs(score - csv['score']).max():.1e}")

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

    row("product", score, cal.threshold)
    oracle = score.copy()
    for d in np.unique(drives[later]):
        oracle[drives == d] -= np.median(score[later & (drives == d)])
    row("oracle: each drive's own later median removed (not a design)", oracle, float("nan"))
    between = euclidean_distances(held_features, held_features).numpy()
    to_held = euclidean_distances(features, held_features).numpy()
    auto = int(round(len(groups) / len(np.unique(groups))))
    for k in [auto if k == "auto" else int(k) for k in args.k.split(",")]:
        own = np.empty(len(groups))
        for i in range(len(groups)):
            others = np.flatnonzero(groups != groups[i])
            own[i] = np.median(held_known[others[np.argsort(between[i, others])[:k]]])
        threshold = threshold_for_rate(held_unseen - own, cal.target_false_alarm_rate)
        baseline = np.median(held_known[np.argsort(to_held, axis=1)[:, :k]], axis=1)
        row(f"scene baseline, k={k}{' (auto)' if k == auto else ''}", score - baseline, threshold)


if __name__ == "__main__":
    main()
