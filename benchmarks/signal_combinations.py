"""Which signals, combined how, would have scored a fleet benchmark run best: offline, on its CSV.

    python benchmarks/signal_combinations.py runs/fleet [--top 12] [--max-size 4] [--rule max|logmeanexp]
        [--sets spatial,latent,knn ...]

Reads a finished `benchmarks/fleet_eval.py` run folder (its `model.pt` and `scores.csv`, whose rows
hold every signal of the same networks) and, without scoring anything again, turns each signal into
the model's own calibrated z-score (the checkpoint's `loc`/`scale`, fitted on held-out frames scored
as drives never seen). It then prints the frame-level AUROC (later-footage normal frames against each
kind, as fleet_eval does) of

- the model's signals combined by other rules (the maximum, the sum of positive parts, their Euclidean
  norm, the mean, the sum of the two largest, log-sum-exp, which ranks as the log-mean-exp does),
- each set given with `--sets`, combined by the product's own `anomaly.frame_scores.combine` with the
  model's rule (or `--rule`), and
- every subset of the signals combined the same way, best first.

Why: it tells whether a gap of the benchmark is in how the signals are combined (a rule or a subset
would close it) or in the signals themselves (none does), before a run of training is spent on it.
AUROC does not depend on the threshold, so no recalibration is needed; the false-alarm rates of a
different combination are not shown, because its threshold would have to be fitted again.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import get_args

import numpy as np

from anomaly.calibration import Calibration
from anomaly.checkpoint import KIND_MODEL, read_checkpoint
from anomaly.config import Combination
from anomaly.frame_scores import SIGNAL_FIELDS, combine, z_scores
from footage.scores_csv import read_scores_csv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_eval import auroc  # noqa: E402
from fleet_inject import MOUNT_FAULTS  # noqa: E402

KINDS = ("small_object", "lens_mud", "glare", "torn_frame", "night")
NORMAL = "later"


def load(run: Path) -> tuple[dict[str, np.ndarray], Calibration, np.ndarray]:
    """Each signal's raw values, the model's calibration and each row's kind (the frames folder it came from)."""
    cal = Calibration.from_state(read_checkpoint(run / "model.pt", KIND_MODEL)["calibration"])
    cols = read_scores_csv(run / "scores.csv")  # a signal left empty in any row is absent
    kinds = np.array([Path(s).parent.name for s in cols["source"]])
    signals = {name: cols[SIGNAL_FIELDS[name]] for name in sorted(cal.loc) if SIGNAL_FIELDS[name] in cols}
    return signals, cal, kinds


def aurocs(score: np.ndarray, kinds: np.ndarray) -> tuple[float, list[float]]:
    """AUROC over all kinds together (`KINDS`: the fleet table's "all"), and per kind of `KINDS` and of the
    mount faults the run has (after them, outside "all"), of later-footage frames against anomalous ones."""
    normal = score[kinds == NORMAL]
    return auroc(normal, score[np.isin(kinds, KINDS)]), [auroc(normal, score[kinds == k]) for k in shown(kinds)]


def shown(kinds: np.ndarray) -> list[str]:
    return [*KINDS, *(k for k in MOUNT_FAULTS if k in kinds)]


def rules(z: np.ndarray) -> dict[str, np.ndarray]:
    """Ways to make one score of N x signals z-scores; `max` is the product's."""
    positive = np.maximum(z, 0.0)
    return {
        "max": z.max(1),
        "sum of positive": positive.sum(1),
        "norm of positive": np.sqrt((positive**2).sum(1)),
        "mean": z.mean(1),
        "two largest": np.sort(z, 1)[:, -2:].sum(1) if z.shape[1] > 1 else z[:, 0],
        "log-sum-exp": np.log(np.exp(np.clip(z, -30.0, 60.0)).sum(1)),
    }


def row(label: str, total: float, per_kind: list[float]) -> str:
    worst = min(per_kind[: len(KINDS)])  # of the kinds in "all"
    return f"| {label} | {total:.3f} | {worst:.3f} | " + " | ".join(f"{a:.3f}" for a in per_kind) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a fleet_eval.py --out folder")
    parser.add_argument("--top", type=int, default=12, help="subsets to print")
    parser.add_argument("--max-size", type=int, default=4, help="largest subset of signals tried")
    parser.add_argument("--rule", choices=get_args(Combination), help="how sets combine (default: the model's)")
    parser.add_argument("--sets", nargs="*", default=[], help="comma-separated signal sets to print first")
    args = parser.parse_args()
    signals, cal, kinds = load(args.run)
    chosen = list(cal.signals)
    sets = [tuple(s.split(",")) for s in args.sets]
    missing = sorted({s for group in (chosen, *sets) for s in group if s not in signals})
    if missing or NORMAL not in kinds:
        raise SystemExit(f"{args.run}: not a fleet_eval run with every signal asked for ({missing or NORMAL})")
    rule: Combination = args.rule or cal.combination
    z = np.stack(z_scores(signals, cal.loc, cal.scale, chosen), 1)
    header = "| {} | all | worst kind | " + " | ".join(shown(kinds)) + " |\n|" + "---|" * (len(shown(kinds)) + 3)
    print(f"Rules over the model's signals ({', '.join(chosen)}; the model's rule: {cal.combination}):\n")
    print(header.format("rule"))
    for name, score in rules(z).items():
        print(row(name, *aurocs(score, kinds)))

    def combined(subset: tuple[str, ...]) -> tuple[float, list[float]]:
        return aurocs(combine(signals, cal.loc, cal.scale, subset, rule), kinds)

    print(f"\nSets under {rule}:\n")
    print(header.format("signals"))
    for subset in (tuple(chosen), *sets):
        print(row(",".join(subset), *combined(subset)))
    results = []
    for size in range(1, args.max_size + 1):
        for subset in itertools.combinations(sorted(signals), size):
            results.append((*combined(subset), subset))
    results.sort(key=lambda r: -r[0])
    print(f"\n{rule} over subsets of {', '.join(sorted(signals))} (best {args.top} of {len(results)}):\n")
    print(header.format("signals"))
    for total, per_kind, subset in results[: args.top]:
        print(row(",".join(subset), total, per_kind))


if __name__ == "__main__":
    main()
