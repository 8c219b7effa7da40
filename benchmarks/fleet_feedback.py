"""Feedback on real footage: fold reviewed false alarms into the fleet profile, measure on footage nobody reviewed.

    python benchmarks/fleet_eval.py --keep-frames --out runs/fleet     # once: model and frames
    python benchmarks/fleet_feedback.py [--run runs/fleet]

The later footage of each fleet drive (normal driving the networks never saw) is cut in two halves
in time. The first half is "reviewed": every event the model raises there is a false alarm (the
footage is normal), marked normal as an analyst would and folded into the fleet profile with
`anomaly.feedback.fold_feedback`, as `anomaly calibrate --feedback` does. The second half is held
out: its false alarms, and each injected kind of `fleet_inject.py` on the same held-out frames (plus
the real night clip), are measured before and after. The PCA baseline is printed beside: fit on the
training frames, and refit with the reviewed frames added (its way of taking feedback).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from anomaly.checkpoint import load_detector
from anomaly.detector import Detector
from anomaly.events import find_events
from anomaly.feedback import fold_feedback
from evaluation.baselines import PCABaseline
from footage.ingest import iter_source_frames

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("small_object", "lens_mud", "glare", "torn_frame")


def read_folder(folder: Path) -> np.ndarray:
    """Every frame of an image folder (BGR), in order."""
    return np.stack([f.image for f in iter_source_frames(folder)])


def scores_of(detector: Detector, prepared: np.ndarray, batch: int = 64) -> np.ndarray:
    starts = range(0, len(prepared), batch)
    return np.concatenate([detector.score_prepared(prepared[i : i + batch]).score for i in starts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "fleet")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the kept frames (for events)")
    args = parser.parse_args()
    frames_dir = args.run / "frames"
    if not (frames_dir / "later").is_dir():
        print(f"no frames in {frames_dir}: run benchmarks/fleet_eval.py --keep-frames --out {args.run} first")
        return
    detector = load_detector(args.run / "model.pt", "cpu")  # type: ignore[arg-type]
    prepare = detector.preprocessor.prepare
    sources = sorted(p.name for p in (frames_dir / "later").iterdir() if p.is_dir())
    reviewed, held, held_kinds = {}, {}, {k: [] for k in KINDS}
    for name in sources:
        frames = read_folder(frames_dir / "later" / name)
        half = len(frames) // 2
        reviewed[name] = np.stack([prepare(f) for f in frames[:half]])
        held[name] = np.stack([prepare(f) for f in frames[half:]])
        for kind in KINDS:
            injected = read_folder(frames_dir / kind / name)
            held_kinds[kind].append(np.stack([prepare(f) for f in injected[half:]]))
    night = np.stack([prepare(f) for d in sorted((frames_dir / "night").iterdir()) for f in read_folder(d)])

    # the review: every event on the reviewed halves is a false alarm, marked normal
    stretches, n_events = [], {}
    for name, prepared in reviewed.items():
        s = scores_of(detector, prepared)
        rows = [(i, i / args.fps, float(v)) for i, v in enumerate(s)]
        events = find_events(name, rows, detector.threshold)
        n_events[name] = len(events)
        stretches += [prepared[e.start_frame : e.end_frame + 1] for e in events]
    print(f"reviewed halves: {sum(len(v) for v in reviewed.values())} frames, {len(stretches)} false-alarm events "
          f"({sum(len(s) for s in stretches)} frames) marked normal: {n_events}")  # fmt: skip
    if not stretches:
        print("nothing to fold: the model raised no false alarm on the reviewed halves")
        return
    result = fold_feedback(detector, stretches)
    folded = detector.with_calibration(result.calibration)
    print(f"changed: {result.widened}; unchanged: {result.unchanged}; reviewed false alarms still raised: "
          f"{result.false_alarms_after} of {len(stretches)}")  # fmt: skip

    train = [prepare(f) for d in sorted((frames_dir / "train").iterdir()) for f in read_folder(d)]
    pca_before = PCABaseline().fit(np.stack(train))
    pca_after = PCABaseline().fit(np.stack(train + [f for s in stretches for f in s]))

    held_all = np.concatenate(list(held.values()))
    table: dict[str, dict[str, float]] = {}
    for label, scorer in (("before", detector), ("after", folded)):
        normal = scores_of(scorer, held_all)
        row = {f"far {n}": float((scores_of(scorer, p) > scorer.threshold).mean()) for n, p in held.items()}
        row["far held-out"] = float((normal > scorer.threshold).mean())
        for kind in KINDS:
            bad = scores_of(scorer, np.concatenate(held_kinds[kind]))
            row[f"auroc {kind}"] = roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(bad))], np.r_[normal, bad])
            row[f"flagged {kind}"] = float((bad > scorer.threshold).mean())
        bad = scores_of(scorer, night)
        row["auroc night"] = roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(bad))], np.r_[normal, bad])
        row["flagged night"] = float((bad > scorer.threshold).mean())
        table[label] = row
    for label, pca in (("PCA before", pca_before), ("PCA after", pca_after)):
        normal = pca.score(held_all)
        row = {}
        for kind, parts in [*((k, held_kinds[k]) for k in KINDS), ("night", [night])]:
            bad = pca.score(np.concatenate(parts))
            row[f"auroc {kind}"] = roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(bad))], np.r_[normal, bad])
        table[label] = row
    keys = list(table["before"])
    print(f"{'':<44}" + "".join(f"{c:>12}" for c in table))
    for key in keys:
        cells = "".join(f"{table[c][key]:>12.3f}" if key in table[c] else f"{'':>12}" for c in table)
        print(f"{key:<44}{cells}")
    (args.run / "feedback.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
