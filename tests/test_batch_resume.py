"""`anomaly score --resume`: an interrupted run continues to exactly the CSV an uninterrupted one writes."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
from factories import road_frames, with_square, write_video
from typer.testing import CliRunner

from anomaly.detector import Detector
from anomaly.model_files import file_sha256
from batch.local import OutputExists, open_run, score_sources
from cli.main import app
from footage.sampling import SamplingConfig
from footage.scores_csv import ScoringRun, read_run_record, read_scores_csv, run_record_path

runner = CliRunner()


@pytest.fixture(scope="module")
def drives(tmp_path_factory):
    d = tmp_path_factory.mktemp("drives")
    a = road_frames(40, seed=1)
    a[30:36] = [with_square(f) for f in a[30:36]]
    folder = d / "stills"
    folder.mkdir()
    for i, f in enumerate(road_frames(10, seed=4)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)
    return [str(write_video(d / "a.mp4", a)), str(write_video(d / "b.avi", road_frames(25, seed=2))), str(folder)]


def the_run(tiny_trained, sources, **kw) -> ScoringRun:
    return ScoringRun(
        model_sha256=file_sha256(tiny_trained.path),
        threshold=tiny_trained.detector.threshold,
        sampling=SamplingConfig(**kw),
        sources=tuple(sources),
    )


def without_peak(event) -> dict:
    return {k: v for k, v in event.to_dict().items() if k != "peak_score"}


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, batches: int) -> None:
    """Make scoring die after `batches` batches, as a killed process would (rows so far are on disk)."""
    real, calls = Detector.score_prepared, []

    def dying(detector, images):
        calls.append(1)
        if len(calls) > batches:
            raise Interrupted
        return real(detector, images)

    monkeypatch.setattr(Detector, "score_prepared", dying)


# batch size 1: the frames after the resume point are batched as in the uninterrupted run, so rows match to the byte
@pytest.mark.parametrize("batches", [10, 40, 52, 70])  # inside the first source, at the second, in it, in the third
def test_a_resumed_run_writes_the_csv_and_events_of_an_uninterrupted_one(
    tiny_trained, drives, tmp_path, monkeypatch, batches
):
    det, run = tiny_trained.detector, the_run(tiny_trained, drives)
    whole, cut = tmp_path / "whole.csv", tmp_path / "cut.csv"
    ref = score_sources(det, drives, whole, batch_size=1, progress=False, run=run, events_path=tmp_path / "w.json")
    with monkeypatch.context() as m:
        interrupt_after(m, batches)
        with pytest.raises(Interrupted):
            score_sources(det, drives, cut, batch_size=1, progress=False, run=run)
    with cut.open("a") as fh:
        fh.write(f"{drives[0]},9")  # and a row cut off mid-write
    written = open_run(cut, run, resume=True, overwrite=False)
    assert 0 < written.frames < ref.frames
    summary = score_sources(
        det, drives, cut, batch_size=1, progress=False, run=run, resume_from=written, events_path=tmp_path / "c.json"
    )
    assert cut.read_bytes() == whole.read_bytes()
    assert (summary.frames, summary.resumed_frames, summary.anomalies) == (ref.frames, written.frames, ref.anomalies)
    assert summary.flagged_per_source == ref.flagged_per_source  # the resumed rows' flags counted too
    assert sum(ref.flagged_per_source.values()) == ref.anomalies
    # replayed events come from the CSV's scores (six digits): the same stretches, peaks equal to 1e-5
    assert [without_peak(e) for e in summary.events] == [without_peak(e) for e in ref.events]
    assert [e.peak_score for e in summary.events] == pytest.approx([e.peak_score for e in ref.events], rel=1e-5)
    assert read_run_record(cut).finished == tuple(drives)


def test_an_existing_csv_is_kept_unless_resumed_or_overwritten(tiny_trained, drives, tmp_path):
    out = tmp_path / "s.csv"
    run = the_run(tiny_trained, drives[:1])
    score_sources(tiny_trained.detector, drives[:1], out, progress=False, run=run)
    with pytest.raises(OutputExists, match="--resume .* --overwrite"):
        open_run(out, run, resume=False, overwrite=False)
    assert open_run(out, run, resume=False, overwrite=True) is None
    assert open_run(tmp_path / "new.csv", run, resume=True, overwrite=False) is None  # nothing to resume


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"threshold": 123.0}, "threshold"),
        ({"sampling": SamplingConfig(stride=2)}, "sampling"),
        ({"model_sha256": "0" * 64}, "model file"),
        ({"sources": ("other.mp4",)}, "sources"),
        ({"all_signals": True}, "--all-signals"),
    ],
)
def test_resuming_another_run_is_refused_naming_what_differs(tiny_trained, drives, tmp_path, change, named):
    out = tmp_path / "s.csv"
    run = the_run(tiny_trained, drives[:1])
    score_sources(tiny_trained.detector, drives[:1], out, progress=False, run=run)
    with pytest.raises(ValueError, match=f"cannot resume .* another {named}"):
        open_run(out, run.model_copy(update=change), resume=True, overwrite=False)


def test_resuming_without_a_run_record_is_refused(tiny_trained, drives, tmp_path):
    out = tmp_path / "s.csv"
    run = the_run(tiny_trained, drives[:1])
    score_sources(tiny_trained.detector, drives[:1], out, progress=False, run=run)
    run_record_path(out).unlink()
    with pytest.raises(ValueError, match="s.csv.run.json .* missing"):
        open_run(out, run, resume=True, overwrite=False)


def test_cli_refuses_to_overwrite_and_names_each_kind_of_problem_exactly(tiny_trained, drives, tmp_path):
    folder = tmp_path / "ten"
    folder.mkdir()
    for i, f in enumerate(road_frames(10, seed=5)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)
    (folder / "004.png").write_bytes(b"not a png")  # one corrupt image among ten
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    out = tmp_path / "s.csv"
    args = ["score", drives[0], str(folder), str(junk), "-m", str(tiny_trained.path), "-o", str(out), "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "scored 49 frames from 2 of 3 source(s)" in result.output  # 40 + the 9 good images
    assert "1 source(s) had problems (their good frames are scored): " + str(folder) in result.output
    assert "1 source(s) failed: " + str(junk) in result.output
    assert set(read_scores_csv(out)["source"]) == {drives[0], str(folder)}
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "exists: pass --resume" in again.output
    assert runner.invoke(app, [*args, "--resume", "--overwrite"]).exit_code == 2


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_csv(tiny_trained, tmp_path):
    """The real thing: `anomaly score` killed with SIGKILL mid-run, then `--resume`."""
    long = [str(write_video(tmp_path / f"long{i}.mp4", road_frames(300, seed=10 + i))) for i in range(2)]
    # batch size 1: every frame is scored alone in all three runs, so the rows must match to the byte
    model = str(tiny_trained.path)
    base = [sys.executable, "-m", "anomaly", "score", *long, "-m", model, "--no-progress", "--batch-size", "1"]
    whole, cut = tmp_path / "whole.csv", tmp_path / "cut.csv"
    subprocess.run([*base, "-o", str(whole)], check=True, capture_output=True)
    total = len(whole.read_text().splitlines()) - 1
    proc = subprocess.Popen(
        [*base, "-o", str(cut), "--batch-size", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not cut.exists() or cut.read_text().count("\n") < total // 3):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows_at_kill = cut.read_text().count("\n") - 1
    assert 0 < rows_at_kill < total, "the run finished before it could be killed"
    done = subprocess.run([*base, "-o", str(cut), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert cut.read_bytes() == whole.read_bytes()
    assert json.loads(run_record_path(cut).read_text())["finished"] == long


def test_cli_fills_the_patch_column_only_with_all_signals(tiny_trained, drives, tmp_path):
    for flag, filled in (([], False), (["--all-signals"], True)):
        out = tmp_path / f"s{len(flag)}.csv"
        result = runner.invoke(
            app, ["score", drives[1], "--model", str(tiny_trained.path), "--out", str(out), "--no-progress", *flag]
        )
        assert result.exit_code == 0, result.output
        cols = read_scores_csv(out)
        assert ("patch_score" in cols) is filled and "knn_score" in cols and len(cols["score"]) == 25
        assert read_run_record(out).all_signals is filled
