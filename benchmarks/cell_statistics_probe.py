"""Would a signal of the picture's own per-cell statistics help the fleet benchmark? Offline, on a finished run.

    python benchmarks/cell_statistics_probe.py runs/fleet

Reads a `benchmarks/fleet_eval.py` run folder (its `model.pt` and the frames it wrote under
`frames/<group>/<source>/`) and measures the product's `image` signal (`anomaly.scoring`: each
heat-map cell's mean colour, luminance contrast and edge energy against the same cells of the
frame's 30 nearest training frames, `anomaly.memory.neighbour_deviations`) with the two things the
product's calibration does differently: the per-cell floor (`anomaly.calibration.image_floor`) is
fitted on the held-out frames instead of the training frames, and the z-scale on held-out frames
of drives the memory knows instead of as drives never seen.

It prints per-kind AUROC (later-footage normal frames against each kind, as fleet_eval does) of
each statistic alone and of their maximum, then of the model's own score beside the maximum of that
score and the signal's z-score (scaled as `anomaly.calibration.fit_scaling` scales signals, on the
held-out frames). The split mirrors training's: the last 25% of each training source is held out.
What it measures is not what a new drive sees (the held-out frames fit both the floor and the scale:
in the product that made the threshold fail, README), only where the signal could go.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from anomaly.calibration import fit_scaling, image_floor
from anomaly.checkpoint import load_detector
from anomaly.memory import nearest, neighbour_deviations
from anomaly.scoring import IMAGE_STATISTICS, raw_signals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_eval import auroc  # noqa: E402

KINDS = ("small_object", "lens_mud", "glare", "torn_frame", "night")
NEIGHBOURS, HOLDOUT = 30, 0.25


def read_group(run: Path, group: str, prepare) -> dict[str, np.ndarray]:
    """One group's prepared frames (model size, RGB uint8), per source."""
    folder = run / "frames" / group
    return {
        d.name: np.stack([prepare(cv2.imread(str(f))) for f in sorted(d.glob("*.png"))])
        for d in sorted(folder.iterdir())
        if d.is_dir()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished benchmarks/fleet_eval.py --out folder")
    args = parser.parse_args()
    detector = load_detector(args.run / "model.pt", torch.device("cpu"))
    prepare = detector.preprocessor.prepare
    cal = detector.config.calibration
    memory, held = [], []
    for frames in read_group(args.run, "train", prepare).values():
        n_hold = int(round(len(frames) * HOLDOUT))
        memory.append(frames[:-n_hold])
        held.append(frames[-n_hold:])
    sets = {"memory": np.concatenate(memory), "held": np.concatenate(held)}
    sets.update({g: np.concatenate(list(read_group(args.run, g, prepare).values())) for g in ("later", *KINDS)})

    features, cells = {}, {}
    with torch.no_grad():
        for name, frames in sets.items():
            raw = raw_signals(detector.model, detector.preprocessor.to_tensor(frames, "cpu"), cal, discriminate=False)
            features[name], cells[name] = raw.features, raw.image_cells
    center, scale = features["memory"].mean(0), features["memory"].std(0).clamp_min(1e-6)
    memory_standard = (features["memory"] - center) / scale
    floor = image_floor(cells["held"])  # the product's rule, fitted on the held-out frames instead

    def z_cells(name: str, key: str) -> torch.Tensor:
        _, nb = nearest((features[name] - center) / scale, memory_standard, NEIGHBOURS)
        i = IMAGE_STATISTICS.index(key)
        return neighbour_deviations(cells[name][:, i], cells["memory"][nb][:, :, i], floor[i])

    def signal(name: str, keys: tuple[str, ...]) -> np.ndarray:
        return torch.stack([z_cells(name, k) for k in keys]).amax(0).flatten(1).amax(1).numpy()

    def row(label: str, values: dict[str, np.ndarray]) -> str:
        normal = values["later"]
        figures = [auroc(normal, values[k]) for k in KINDS]
        every = auroc(normal, np.concatenate([values[k] for k in KINDS]))
        return f"| {label} | " + " | ".join(f"{v:.3f}" for v in (*figures, every)) + " |"

    header = "| signal | " + " | ".join(KINDS) + " | all |"
    print(header, "|" + "---|" * (len(KINDS) + 2), sep="\n")
    groups = ("held", "later", *KINDS)
    for keys in (*((k,) for k in IMAGE_STATISTICS), IMAGE_STATISTICS):
        label = keys[0] if len(keys) == 1 else "max of all five"
        print(row(label, {g: signal(g, keys) for g in groups}))
    score = {
        g: np.concatenate([detector.score_prepared(sets[g][i : i + 64]).score for i in range(0, len(sets[g]), 64)])
        for g in groups
    }
    candidate = {g: signal(g, IMAGE_STATISTICS) for g in groups}
    loc, spread = fit_scaling({"cells": candidate["held"]})
    combined = {g: np.maximum(score[g], (candidate[g] - loc["cells"]) / spread["cells"]) for g in groups}
    print(row("the model's score", score))
    print(row("max(score, candidate z)", combined))


if __name__ == "__main__":
    main()
