"""Fleet benchmark: one model for several cameras, measured on footage and cameras it never saw.

    python benchmarks/fleet_eval.py [--steps 1500] [--out runs/fleet] [--keep-frames]

Reads `../shared/data/fleet/` and `../shared/data/solidWhiteRight.mp4` beside the repository (exits 0
with a message when they are absent) and drives the product as a user does: `python -m anomaly
train`, `score` and, when the command exists, `calibrate`, as subprocesses on PNG image folders.

Splits (frames resized to 256x144 and written losslessly; about 10 frames/s kept):
- training: the first 60% of solidWhiteRight, muchlisin and erinflee, and three of the four clips
  of drive C (test_small2, test_video, test_small1: test_video and test_small2 overlap, so they
  stay together). `anomaly train` itself holds out the last 25% of each for its threshold.
- later footage (normal): the last 40% of those drives, and drive C's project_video_cut.
- unseen camera: every ChanReMin clip (a scooter city street, an alley where the car waits and
  pulls away, a stop at a junction), at 5 frames/s. `anomaly calibrate` gets the first half of
  video_40 and video_49 (about a minute of footage); false alarms are counted on the second halves
  and on video_17, which calibration never saw. Because that minute holds no driving (the car
  waits in both), a second `anomaly calibrate` gets the first half of *every* clip, video_17's
  first two seconds of driving included, and its false alarms are counted on the second halves of
  all three: what a user who calibrates on a minute spread over the camera's drives sees. Every
  injected kind below also goes into the second halves of video_40 and video_49, and each profile's
  AUROC on them (against the same frames untouched) is printed beside its false alarms: a profile
  that flags less must still find what it is there to find.
- anomalies: each kind of `fleet_inject.py` injected into every later-footage frame (so each AUROC
  compares the same frames with and without it), and the real night clip. A camera knocked out of
  place (`MOUNT_FAULTS`: rolled in its mount, tipped down at the road) is measured the same way and
  printed below the "all" row, which keeps the other kinds so that it compares with earlier runs.

Printed: frame-level AUROC per kind (later-footage normal frames vs that kind) for the combined
score and every signal column of the CSV, the PCA baseline (64x36 pixels, fit on the frames the
networks train on, thresholded at the 99th percentile of the same held-out tails the model
calibrates on) beside every figure, and the share of frames flagged at each one's own threshold.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_inject import INJECTORS, MOUNT_FAULTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"  # --data replaces it
FLEET = DATA / "fleet"
SIZE = (256, 144)  # written frames: twice the model's default input, 16:9 like the model's
UNSEEN_CAMERA = "chanremin"
NON_SIGNALS = {"source", "frame_index", "timestamp_s", "is_anomaly"}


@dataclass(frozen=True)
class Part:
    role: str  # train, later, unseen, unseen_calib, unseen_calib_17, unseen_late_17, night
    camera: str
    path: Path
    start: float = 0.0  # fraction of the clip
    end: float = 1.0
    fps: float = 10.0  # frames kept per second of video

    @property
    def name(self) -> str:
        return f"{self.camera}__{self.path.stem.split('__')[-1]}"


def fleet(name: str) -> Path:
    return FLEET / name


def parts() -> list[Part]:
    swr = DATA / "solidWhiteRight.mp4"
    mus = fleet("muchlisin1412__AutonomousVehicle__driving.mp4")
    erin = fleet("erinflee__Autonomous-Car-Project__road_video.mp4")
    c = "udacity__CarND-Vehicle-Detection__"
    chan = "ChanReMin__Lane-departure-warning__"
    out = [Part("train", "drive_c", fleet(c + n + ".mp4")) for n in ("test_small2", "test_video", "test_small1")]
    out.append(Part("later", "drive_c", fleet(c + "project_video_cut.mp4")))
    for cam, path in (("solidwhiteright", swr), ("muchlisin", mus), ("erinflee", erin)):
        out += [Part("train", cam, path, 0.0, 0.6), Part("later", cam, path, 0.6, 1.0)]
    for clip in ("video_40", "video_49"):
        path = fleet(chan + clip + ".mp4")
        out += [
            Part("unseen_calib", UNSEEN_CAMERA, path, 0.0, 0.5, fps=5.0),
            Part("unseen", UNSEEN_CAMERA, path, 0.5, 1.0, fps=5.0),
        ]
    v17 = fleet(chan + "video_17.mp4")
    out.append(Part("unseen", UNSEEN_CAMERA, v17, fps=5.0))
    out += [  # for the calibration on every clip: video_17's halves too
        Part("unseen_calib_17", UNSEEN_CAMERA, v17, 0.0, 0.5, fps=5.0),
        Part("unseen_late_17", UNSEEN_CAMERA, v17, 0.5, 1.0, fps=5.0),
    ]
    out.append(Part("night", "night", fleet("udacity__CarND-LaneLines-P1__custom_me_night_1.mp4"), fps=30.0))
    return out


def read_part(part: Part) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(part.path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    cap.release()
    n = len(frames)
    stride = max(1, round(fps / part.fps))
    keep = frames[int(n * part.start) : int(n * part.end)][::stride]
    return [cv2.resize(f, SIZE, interpolation=cv2.INTER_AREA) for f in keep]


def write_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:06d}.png"), f, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return folder


def anomaly_cli(*args: str | Path, log: Path) -> float:
    """Run `python -m anomaly ARGS`; returns seconds taken. Output goes to `log` and the last lines to stdout."""
    cmd = [sys.executable, "-m", "anomaly", *map(str, args)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n[rc {done.returncode}, {seconds:.1f} s]\n")
    tail = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-12:]
    print(f"$ anomaly {' '.join(map(str, args[:1]))} ... ({seconds:.0f} s, rc {done.returncode})")
    for line in tail:
        print(f"    {line}")
    if done.returncode not in (0, 1):
        raise SystemExit(f"`{' '.join(cmd)}` failed with status {done.returncode}; see {log}")
    return seconds


def has_command(name: str) -> bool:
    done = subprocess.run([sys.executable, "-m", "anomaly", name, "--help"], cwd=ROOT, capture_output=True)
    return done.returncode == 0


def read_scores(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """CSV -> {source folder name: {column: values in frame order}}."""
    rows: dict[str, list[dict[str, str]]] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            rows.setdefault(row["source"], []).append(row)
    out = {}
    for source, rs in rows.items():
        rs.sort(key=lambda r: int(r["frame_index"]))
        key = str(Path(source).relative_to(Path(source).parents[1]))  # <group>/<part name>
        # a signal column the scorer left empty (computed only on request) is not a figure
        out[key] = {c: np.array([float(r[c]) for r in rs]) for c in rs[0] if c != "source" and rs[0][c] != ""}
    return out


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return float(roc_auc_score(labels, np.r_[normal, anomalous]))


def gather(scores: dict[str, dict[str, np.ndarray]], group: str, column: str) -> np.ndarray:
    keys = sorted(k for k in scores if k.split("/")[0] == group)
    return np.concatenate([scores[k][column] for k in keys]) if keys else np.array([])


def main() -> None:
    global DATA, FLEET
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the CLI's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fleet")
    parser.add_argument("--train-args", default="", help="extra arguments for `anomaly train`, one string")
    parser.add_argument("--model", type=Path, default=None, help="score this model instead of training one")
    parser.add_argument("--keep-frames", action="store_true", help="reuse frames written by an earlier run")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default ../shared/data)")
    args = parser.parse_args()
    DATA, FLEET = args.data, args.data / "fleet"
    missing = [p for p in (FLEET, DATA / "solidWhiteRight.mp4") if not p.exists()]
    if missing:
        print(f"fleet benchmark skipped: {', '.join(map(str, missing))} not found (real footage lives beside the repo)")
        return
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    frames_dir = out / "frames"
    log = out / "fleet_eval.log"
    log.write_text("")
    t_start = time.perf_counter()

    # ---- frames -------------------------------------------------------------------------------
    all_parts = parts()
    folders: dict[str, list[Path]] = {}
    later_frames: dict[str, list[np.ndarray]] = {}
    unseen_frames: dict[str, list[np.ndarray]] = {}  # the unseen camera's second halves, for injecting
    train_frames: dict[str, list[np.ndarray]] = {}
    reuse = args.keep_frames and (frames_dir / "done").exists()
    if not reuse:
        shutil.rmtree(frames_dir, ignore_errors=True)
    for part in all_parts:
        folder = frames_dir / part.role / part.name
        folders.setdefault(part.role, []).append(folder)
        camera_late = part.role == "unseen" and "video_17" not in part.name
        if reuse and part.role not in ("later", "train") and not camera_late:
            continue
        imgs = read_part(part) if not reuse else [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))]
        if not reuse:
            write_folder(folder, imgs)
        if part.role == "later":
            later_frames[part.name] = imgs
        if part.role == "train":
            train_frames[part.name] = imgs
        if camera_late:
            unseen_frames[part.name] = imgs
    injectors = {**INJECTORS, **MOUNT_FAULTS}
    inject = {"frames_dir": frames_dir, "folders": folders, "injectors": injectors, "reuse": reuse}
    write_injected(**inject, sources=later_frames, prefix="", seed=lambda k, p: 1000 * k + p)
    # the same kinds in the unseen camera's normal frames
    write_injected(**inject, sources=unseen_frames, prefix="unseen_", seed=lambda k, p: 5000 + 100 * k + p)
    (frames_dir / "done").write_text("ok")
    counts = {role: sum(len(list(f.glob("*.png"))) for f in fs) for role, fs in folders.items()}
    print(f"frames: {json.dumps(counts)}")

    # ---- the product: train, score, calibrate ------------------------------------------------------
    model = args.model or out / "model.pt"
    timing: dict[str, float] = {}
    sampling = ["--folder-fps", "10"]
    common = [*sampling, "--no-progress"]  # `calibrate` shows no progress bars, so takes no such flag
    if args.model is None:
        steps = ["--steps", str(args.steps)] if args.steps else []
        extra = args.train_args.split() if args.train_args else []
        timing["train_s"] = anomaly_cli("train", *folders["train"], "--out", model, *steps, *extra, *common, log=log)
    test_groups = ["later", "unseen", "night", *injectors]
    test_folders = [f for g in test_groups for f in folders[g]]
    timing["score_s"] = anomaly_cli(
        "score", *test_folders, "--model", model, "--out", out / "scores.csv", "--overwrite", "--all-signals",
        *common, log=log,
    )  # fmt: skip
    scores = read_scores(out / "scores.csv")
    calibrated = has_command("calibrate")
    if calibrated:
        model2 = out / "model_calibrated.pt"
        timing["calibrate_s"] = anomaly_cli(
            "calibrate", model, *folders["unseen_calib"], "--camera", UNSEEN_CAMERA, "--out", model2, *sampling, log=log
        )
        camera_injected = [f for kind in injectors for f in folders[f"unseen_{kind}"]]
        timing["score_calibrated_s"] = anomaly_cli(
            "score", *folders["unseen"], *camera_injected, "--model", model2, "--camera", UNSEEN_CAMERA,
            "--out", out / "scores_calibrated.csv", "--overwrite", "--all-signals", *common, log=log,
        )  # fmt: skip
        scores_cal = read_scores(out / "scores_calibrated.csv")
        model3 = out / "model_calibrated_every_clip.pt"
        every_clip = [*folders["unseen_calib"], *folders["unseen_calib_17"]]
        timing["calibrate_every_clip_s"] = anomaly_cli(
            "calibrate", model, *every_clip, "--camera", UNSEEN_CAMERA, "--out", model3, *sampling, log=log
        )
        late = [f for f in folders["unseen"] if "video_17" not in f.name] + folders["unseen_late_17"]
        anomaly_cli(
            "score", *late, *camera_injected, "--model", model3, "--camera", UNSEEN_CAMERA,
            "--out", out / "scores_calibrated_every_clip.csv", "--overwrite", *common, log=log,
        )  # fmt: skip
        scores_every = read_scores(out / "scores_calibrated_every_clip.csv")

    # ---- PCA baseline -------------------------------------------------------------------------
    from evaluation.baselines import PCABaseline

    fit, tails = [], []
    for imgs in train_frames.values():  # the CLI trains on the first 75% of each source and calibrates on the rest
        n_hold = int(round(len(imgs) * 0.25))
        fit += imgs[:-n_hold]
        tails += imgs[-n_hold:]
    pca = PCABaseline().fit(np.stack([f[..., ::-1] for f in fit]))

    def pca_scores_of(group_folders: list[Path]) -> np.ndarray:
        vals = []
        for folder in sorted(group_folders, key=lambda f: f.name):
            imgs = [cv2.imread(str(p))[..., ::-1] for p in sorted(folder.glob("*.png"))]
            vals.append(pca.score(np.stack(imgs)))
        return np.concatenate(vals)

    def pca_scores(group: str) -> np.ndarray:
        return pca_scores_of(folders[group])

    pca_threshold = float(np.quantile(pca.score(np.stack([f[..., ::-1] for f in tails])), 0.99))

    # ---- figures ------------------------------------------------------------------------------
    columns = [c for c in next(iter(scores.values())) if c not in NON_SIGNALS]
    kinds = [*INJECTORS, "night"]
    normal = {c: gather(scores, "later", c) for c in columns}
    pca_normal = pca_scores("later")
    pca_by = {g: pca_scores(g) for g in [*kinds, *MOUNT_FAULTS]}
    table: dict[str, dict[str, float]] = {}

    def kind_row(kind: str) -> dict[str, float]:
        row = {c: auroc(normal[c], gather(scores, kind, c)) for c in columns}
        row["pca"] = auroc(pca_normal, pca_by[kind])
        row["flagged"] = float(gather(scores, kind, "is_anomaly").mean())
        row["pca_flagged"] = float((pca_by[kind] > pca_threshold).mean())
        return row

    for kind in kinds:
        table[kind] = kind_row(kind)
    every = {c: np.concatenate([gather(scores, k, c) for k in kinds]) for c in [*columns, "is_anomaly"]}
    table["all"] = {c: auroc(normal[c], every[c]) for c in columns}
    table["all"]["pca"] = auroc(pca_normal, np.concatenate([pca_by[k] for k in kinds]))
    table["all"]["flagged"] = float(every["is_anomaly"].mean())
    table["all"]["pca_flagged"] = float((np.concatenate([pca_by[k] for k in kinds]) > pca_threshold).mean())
    for kind in MOUNT_FAULTS:  # after "all", outside it (the module's docstring says why)
        table[kind] = kind_row(kind)

    far: dict[str, dict[str, float]] = {}
    pca_unseen = pca_scores("unseen")
    far["later footage"] = {
        "model": float(normal_flags(scores, "later").mean()),
        "pca": float((pca_normal > pca_threshold).mean()),
    }
    for key in sorted(k for k in scores if k.startswith("later/")):
        far[f"  {key.split('/')[1]}"] = {"model": float(scores[key]["is_anomaly"].mean())}
    far["unseen camera"] = {
        "model": float(normal_flags(scores, "unseen").mean()),
        "pca": float((pca_unseen > pca_threshold).mean()),
    }
    for key in sorted(k for k in scores if k.startswith("unseen/")):
        far[f"  {key.split('/')[1]}"] = {"model": float(scores[key]["is_anomaly"].mean())}
    if calibrated:
        pca_cal_threshold = float(np.quantile(pca_scores("unseen_calib"), 0.99))
        far["unseen camera after calibrate"] = {
            "model": float(normal_flags(scores_cal, "unseen").mean()),
            "pca": float((pca_unseen > pca_cal_threshold).mean()),
        }
        for key in sorted(k for k in scores_cal if k.startswith("unseen/")):
            far[f"  {key.split('/')[1]} (calibrated)"] = {"model": float(scores_cal[key]["is_anomaly"].mean())}
        late_keys = sorted(k for k in scores_every if k.split("/")[0] in ("unseen", "unseen_late_17"))
        flags = np.concatenate([scores_every[k]["is_anomaly"] for k in late_keys])
        pca_late = pca_scores_of(late)
        pca_every_threshold = float(np.quantile(pca_scores_of(every_clip), 0.99))
        far["unseen camera after calibrate on the first half of every clip"] = {
            "model": float(flags.mean()),
            "pca": float((pca_late > pca_every_threshold).mean()),
        }
        for key in late_keys:
            far[f"  {key.split('/')[1]} second half (calibrated on every clip)"] = {
                "model": float(scores_every[key]["is_anomaly"].mean())
            }
        camera_table = camera_detection(scores_cal, scores_every, folders, injectors, pca_scores_of)

    timing["total_s"] = time.perf_counter() - t_start
    lines = [
        f"Frames: {json.dumps(counts)}",
        "",
        "| kind | **score** | PCA | flagged | PCA flagged | " + " | ".join(c for c in columns if c != "score") + " |",
        "|---|---|---|---|---|" + "---|" * (len(columns) - 1),
    ]
    for kind, row in table.items():
        lines.append(
            f"| {kind} | **{row['score']:.3f}** | {row['pca']:.3f} | {row['flagged']:.1%} | {row['pca_flagged']:.1%} | "
            + " | ".join(f"{row[c]:.3f}" for c in columns if c != "score")
            + " |"
        )
    lines += ["", "| false alarms on normal frames | model | PCA |", "|---|---|---|"]
    for name, row in far.items():
        pca_txt = f"{row['pca']:.1%}" if "pca" in row else ""
        lines.append(f"| {name} | {row['model']:.1%} | {pca_txt} |")
    if not calibrated:
        lines.append("| unseen camera after calibrate | (no `anomaly calibrate` command in this build) | |")
    else:
        lines += [
            "",
            "| unseen camera after calibrate: kind | waiting minute | flagged | every clip | flagged | PCA |",
            "|---|---|---|---|---|---|",
        ]
        for kind, row in camera_table.items():
            lines.append(
                f"| {kind} | **{row['waiting']:.3f}** | {row['waiting_flagged']:.1%} | **{row['every']:.3f}** | "
                f"{row['every_flagged']:.1%} | {row['pca']:.3f} |"
            )
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items())]
    text = "\n".join(lines)
    print("\n" + text)
    (out / "fleet_table.md").write_text(text + "\n")
    (out / "fleet_metrics.json").write_text(
        json.dumps(
            {
                "auroc": table,
                "false_alarms": far,
                "unseen_camera_auroc": camera_table if calibrated else {},
                "timing": timing,
                "frames": counts,
            },
            indent=2,
        )
    )


def write_injected(
    frames_dir: Path,
    folders: dict[str, list[Path]],
    injectors: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]],
    reuse: bool,
    sources: dict[str, list[np.ndarray]],
    prefix: str,
    seed: Callable[[int, int], int],
) -> None:
    """Each kind injected into every frame of `sources`, written to `<prefix><kind>/<source>` and listed in
    `folders` under `<prefix><kind>`; `seed(kind index, source index)` seeds each folder's injections. With
    `reuse`, only folders missing from earlier frames (kinds added since) are written."""
    for k, kind in enumerate(injectors):
        folders[prefix + kind] = []
        for p, (name, imgs) in enumerate(sorted(sources.items())):
            folder = frames_dir / f"{prefix}{kind}" / name
            folders[prefix + kind].append(folder)
            if not reuse or not folder.exists():
                rng = np.random.default_rng(seed(k, p))
                write_folder(folder, [injectors[kind](f, rng) for f in imgs])


def camera_detection(
    scores_cal: dict[str, dict[str, np.ndarray]],
    scores_every: dict[str, dict[str, np.ndarray]],
    folders: dict[str, list[Path]],
    kinds: Iterable[str],
    pca_scores_of: Callable[[list[Path]], np.ndarray],
) -> dict[str, dict[str, float]]:
    """AUROC of each injected kind on the unseen camera's second halves of video_40 and video_49 against
    the same frames untouched, with each of its two profiles (`anomaly calibrate` on the waiting minute,
    and on the first half of every clip) and the PCA baseline: a profile that flags less must still find
    what it is there to find. video_17 stays out of the normal frames: it is a scene neither profile saw
    (its false alarms are in the table above)."""
    normal_folders = [f for f in folders["unseen"] if "video_17" not in f.name]
    pca_normal = pca_scores_of(normal_folders)
    out: dict[str, dict[str, float]] = {}
    for kind in kinds:
        row = {}
        for label, scores in (("waiting", scores_cal), ("every", scores_every)):
            normal = np.concatenate([scores[f"unseen/{f.name}"]["score"] for f in normal_folders])
            injected = gather(scores, f"unseen_{kind}", "score")
            row[label] = auroc(normal, injected)
            row[f"{label}_flagged"] = float(gather(scores, f"unseen_{kind}", "is_anomaly").mean())
        row["pca"] = auroc(pca_normal, pca_scores_of(folders[f"unseen_{kind}"]))
        out[kind] = row
    return out


def normal_flags(scores: dict[str, dict[str, np.ndarray]], group: str) -> np.ndarray:
    return gather(scores, group, "is_anomaly")


if __name__ == "__main__":
    main()
