"""The analyst's loop, measured: review a run's events, fold the false alarms back in, rescan.

    anomaly demo                                   # writes runs/demo (model, scores, events)
    python benchmarks/review_loop.py [--run runs/demo] [--samples sample_videos]

The review is simulated from the sample set's labels: an event that overlaps a labeled anomaly is
marked "anomaly", any other "normal" (what an analyst who is never wrong would do). The verdicts go
into a review database exactly as the review page stores them, and `anomaly calibrate --feedback`
and `anomaly score` run as a user runs them. Two measurements:

- *all reviewed*: every clip's verdicts folded in, every clip rescanned (the README's walk-through);
- *held out*: only the verdicts of half of the clips (every other one) folded in, the *other* half
  rescanned: do frames like the reviewed false alarms stop raising the alarm on clips nobody reviewed?

Printed per measurement: false-alarm frames and events (events with no labeled anomaly), labeled
anomalies caught (a labeled stretch with at least one frame above the threshold), and frame AUROC.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from anomaly.metrics import auroc
from footage.events_json import read_events_json
from footage.labels import FrameLabels, labels_path_for
from footage.scores_csv import read_scores_csv
from review.store import ReviewStore, VerdictRecord

ROOT = Path(__file__).resolve().parents[1]


def anomaly(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "anomaly", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"anomaly {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def simulated_verdicts(events: list[dict], labels: FrameLabels) -> list[VerdictRecord]:
    out = []
    for e in events:
        name = Path(e["source"]).name
        frames = range(e["start_frame"], e["end_frame"] + 1)
        hit = any(labels.labels.get((name, i), (0, ""))[0] == 1 for i in frames)
        out.append(VerdictRecord.of_event(e, "anomaly" if hit else "normal", reviewer="simulated"))
    return out


def labeled_stretches(labels: FrameLabels, name: str) -> list[range]:
    """Runs of consecutive anomalous frames of one source."""
    frames = sorted(i for (n, i), (label, _) in labels.labels.items() if n == name and label == 1)
    runs: list[list[int]] = []
    for i in frames:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return [range(r[0], r[-1] + 1) for r in runs]


def measure(scores_csv: Path, events_json: Path, labels: FrameLabels, sources: set[str]) -> dict[str, float]:
    cols = read_scores_csv(scores_csv)
    keep = np.array([Path(s).name in sources for s in cols["source"]])
    names = [Path(s).name for s in np.asarray(cols["source"])[keep]]
    index = np.asarray(cols["frame_index"])[keep]
    y, _ = labels.join(names, index)
    flagged = np.asarray(cols["is_anomaly"])[keep].astype(bool)
    score = np.asarray(cols["score"])[keep]
    events = [e for e in read_events_json(events_json)["events"] if Path(e["source"]).name in sources]
    false_events = 0
    for e in events:
        name = Path(e["source"]).name
        if not any(labels.labels.get((name, i), (0, ""))[0] for i in range(e["start_frame"], e["end_frame"] + 1)):
            false_events += 1
    caught = total = 0
    by_frame = {(n, int(i)): f for n, i, f in zip(names, index, flagged, strict=True)}
    for name in sorted(sources):
        for stretch in labeled_stretches(labels, name):
            total += 1
            caught += any(by_frame.get((name, i), False) for i in stretch)
    return {
        "false_alarm_frames": int((flagged & (y == 0)).sum()),
        "normal_frames": int((y == 0).sum()),
        "false_alarm_events": false_events,
        "anomalies_caught": caught,
        "anomalies": total,
        "auroc": auroc(y, score),
    }


def line(name: str, m: dict[str, float]) -> str:
    return (
        f"{name:<34} false-alarm frames {m['false_alarm_frames']:>4} of {m['normal_frames']:<5} "
        f"({m['false_alarm_frames'] / max(m['normal_frames'], 1):.2%})  "
        f"false-alarm events {m['false_alarm_events']:>3}  "
        f"anomalies caught {m['anomalies_caught']}/{m['anomalies']}  AUROC {m['auroc']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--samples", type=Path, default=ROOT / "sample_videos")
    parser.add_argument("--margin", type=float, default=0.8, help="`anomaly calibrate --feedback-margin`")
    args = parser.parse_args()
    clips = sorted(args.samples.resolve().glob("test_*.mp4"))
    labels = FrameLabels.read([labels_path_for(c) for c in clips])
    events = read_events_json(args.run / "events.json")["events"]
    verdicts = simulated_verdicts(events, labels)
    reviewed = {c.name for c in clips[::2]}
    unreviewed = {c.name for c in clips[1::2]}
    everything = reviewed | unreviewed
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, chosen in (("all", everything), ("half", reviewed)):
            db = work / name / "review.sqlite"
            db.parent.mkdir()
            store = ReviewStore(db)
            for v in verdicts:
                if Path(v.source).name in chosen:
                    store.add(v)
            folded = work / name / "model.pt"
            options = ("--feedback", str(db), "--feedback-margin", str(args.margin), "--out", str(folded))
            print(anomaly("calibrate", str(args.run / "model.pt"), *options))
            scores, events_out = work / name / "scores.csv", work / name / "events.json"
            anomaly("score", *map(str, clips), "--model", str(folded), "--out", str(scores),
                    "--events", str(events_out), "--no-progress")  # fmt: skip
            results[name] = (scores, events_out)
        before = (args.run / "scores.csv", args.run / "events.json")
        n_normal = sum(v.verdict == "normal" for v in verdicts)
        print(f"{len(verdicts)} events reviewed (simulated from the labels): {n_normal} normal, ", end="")
        print(f"{len(verdicts) - n_normal} anomaly")
        table = {
            "all clips, before": measure(*before, labels, everything),
            "all clips, after folding all": measure(*results["all"], labels, everything),
            "unreviewed half, before": measure(*before, labels, unreviewed),
            "unreviewed half, after folding other": measure(*results["half"], labels, unreviewed),
        }
    for name, m in table.items():
        print(line(name, m))
    (args.run / "review_loop.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
