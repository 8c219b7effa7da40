"""Would a signal of the picture's own per-cell statistics help the fleet benchmark? Offline, on a finished run.

    python benchmarks/cell_statistics_probe.py runs/fleet

Reads a `benchmarks/fleet_eval.py` run folder (its `model.pt` and the frames it wrote under
`frames/<group>/<source>/`) and measures a candidate signal that no network computes: each heat-map
cell's mean colour (R, G, B), luminance contrast (standard deviation) and edge energy (mean absolute
Laplacian), against the same cells of the frame's 30 nearest training frames (found as the `local`
signal finds them, on the encoder's standardised summary features), in units of those neighbours'
spread (90th percentile minus median, either direction, floored by half the held-out frames' own
spread). A smear dulls a region's edges and colour, glare raises its brightness and flattens its
contrast, an object or a torn block changes edges where the nearest normal frames had none,
whatever the autoencoder makes of them.

It prints per-kind AUROC (later-footage normal frames against each kind, as fleet_eval does) of
each statistic alone and of their maximum, then of the model's own score beside the maximum of that
score and the candidate's z-score (scaled as `anomaly.calibration.fit_scaling` scales signals, on
the held-out frames). The split mirrors training's: the last 25% of each training source is held out.
A probe, not a product path: if it pays, the signal belongs in `anomaly.scoring` with its statistics
fitted by calibration and kept in the memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from anomaly.calibration import fit_scaling
from anomaly.checkpoint import load_detector
from anomaly.memory import nearest, neighbour_cell_scores
from anomaly.scoring import raw_signals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_eval import auroc  # noqa: E402

KINDS = ("small_object", "lens_mud", "glare", "torn_frame", "night")
STATISTICS = ("red", "green", "blue", "contrast", "edges")
NEIGHBOURS, QUANTILE, HOLDOUT = 30, 0.9, 0.25
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def read_group(run: Path, group: str, prepare) -> dict[str, np.ndarray]:
    """One group's prepared frames (model size, RGB uint8), per source."""
    folder = run / "frames" / group
    return {
        d.name: np.stack([prepare(cv2.imread(str(f))) for f in sorted(d.glob("*.png"))])
        for d in sorted(folder.iterdir())
        if d.is_dir()
    }


def cell_statistics(frames: np.ndarray, pool: int, stride: int) -> dict[str, torch.Tensor]:
    """Each statistic as N x h x w cells, on the heat map's own cell grid."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    lum = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]

    def cells(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, pool, stride)[:, 0]

    colour = F.avg_pool2d(x, pool, stride)
    return {
        "red": colour[:, 0],
        "green": colour[:, 1],
        "blue": colour[:, 2],
        "contrast": (cells(lum**2) - cells(lum) ** 2).clamp_min(0).sqrt(),
        "edges": cells(F.conv2d(lum, LAPLACIAN, padding=1).abs()),
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

    features, stats = {}, {}
    with torch.no_grad():
        for name, frames in sets.items():
            x = detector.preprocessor.to_tensor(frames, "cpu")
            features[name] = raw_signals(detector.model, x, cal, discriminate=False, image=False).features
            stats[name] = cell_statistics(frames, cal.error_pool, cal.error_stride)
    center, scale = features["memory"].mean(0), features["memory"].std(0).clamp_min(1e-6)
    memory_standard = (features["memory"] - center) / scale
    floors = {}
    for key in STATISTICS:  # half the held-out frames' own inter-decile spread, per cell
        held_cells = stats["held"][key].flatten(1).double()
        upper, lower = torch.quantile(held_cells, 0.9, dim=0), torch.quantile(held_cells, 0.1, dim=0)
        floors[key] = (0.25 * (upper - lower)).float().view_as(stats["held"][key][0])

    def z_cells(name: str, key: str) -> torch.Tensor:
        _, nb = nearest((features[name] - center) / scale, memory_standard, NEIGHBOURS)
        theirs = stats["memory"][key][nb]
        up = neighbour_cell_scores(stats[name][key], theirs, quantile=QUANTILE, spread_floor=floors[key])
        down = neighbour_cell_scores(-stats[name][key], -theirs, quantile=QUANTILE, spread_floor=floors[key])
        return torch.maximum(up, down)

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
    for keys in (*((k,) for k in STATISTICS), STATISTICS):
        label = keys[0] if len(keys) == 1 else "max of all five"
        print(row(label, {g: signal(g, keys) for g in groups}))
    score = {
        g: np.concatenate([detector.score_prepared(sets[g][i : i + 64]).score for i in range(0, len(sets[g]), 64)])
        for g in groups
    }
    candidate = {g: signal(g, STATISTICS) for g in groups}
    loc, spread = fit_scaling({"cells": candidate["held"]})
    combined = {g: np.maximum(score[g], (candidate[g] - loc["cells"]) / spread["cells"]) for g in groups}
    print(row("the model's score", score))
    print(row("max(score, candidate z)", combined))


if __name__ == "__main__":
    main()
