"""The `anomaly` command end to end on tiny settings: train, score, errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from factories import road_frames, with_square, write_video
from typer.testing import CliRunner

from anomaly.checkpoint import load_detector
from anomaly.config import SIGNALS_WITHOUT_FINDER
from anomaly.scoring import raw_signals
from cli.main import app
from footage.scores_csv import CSV_COLUMNS, read_scores_csv

runner = CliRunner()
TINY_TRAIN = [
    "--steps",
    "15",
    "--batch-size",
    "8",
    "--width",
    "32",
    "--height",
    "24",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_trained):
    """Training videos, a test clip with an obstacle in frames 12-17, and the session's tiny model."""
    d = tmp_path_factory.mktemp("cli")
    write_video(d / "normal_a.mp4", road_frames(60, seed=1))
    write_video(d / "normal_b.avi", road_frames(60, seed=2))
    test_frames = road_frames(30, seed=3)
    test_frames[12:18] = [with_square(f) for f in test_frames[12:18]]
    test = write_video(d / "test.mp4", test_frames)
    return {"dir": d, "model": tiny_trained.path, "test": test}


@pytest.mark.slow
def test_train_command_writes_a_model_that_scores(trained, tmp_path):
    model, out = tmp_path / "model.pt", tmp_path / "scores.csv"
    sources = [str(trained["dir"] / "normal_a.mp4"), str(trained["dir"] / "normal_b.avi")]
    result = runner.invoke(app, ["train", *sources, "--out", str(model), *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    assert model.exists() and "threshold" in result.output
    scored = runner.invoke(app, ["score", str(trained["test"]), "-m", str(model), "-o", str(out), "--no-progress"])
    assert scored.exit_code == 0, scored.output
    assert len(read_scores_csv(out)["score"]) == 30


def test_score_writes_csv_events_and_annotated_video(trained, tmp_path):
    out, events = tmp_path / "scores.csv", tmp_path / "events.json"
    result = runner.invoke(
        app,
        ["score", str(trained["test"]), "--model", str(trained["model"]), "--out", str(out)]
        + ["--events", str(events), "--annotate", str(tmp_path / "ann"), "--no-progress", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    cols = read_scores_csv(out)
    assert tuple(out.read_text().splitlines()[0].split(",")) == CSV_COLUMNS
    assert list(cols["frame_index"]) == list(range(30))
    assert np.isfinite(cols["score"]).all()
    assert cols["spatial_score"][12:18].mean() > np.r_[cols["spatial_score"][:12], cols["spatial_score"][18:]].mean()
    assert events.exists() and (tmp_path / "ann" / "test.annotated.mp4").exists()
    assert "scored 30 frames" in result.output


def test_threshold_override_and_sampling(trained, tmp_path):
    out = tmp_path / "s.csv"
    args = ["score", str(trained["test"]), "-m", str(trained["model"]), "-o", str(out), "--no-progress"]
    result = runner.invoke(app, [*args, "--threshold", "-1000", "--stride", "5", "--start", "1.0"])
    assert result.exit_code == 0, result.output
    cols = read_scores_csv(out)
    assert list(cols["frame_index"]) == [10, 15, 20, 25]
    assert cols["is_anomaly"].all()


def test_bad_inputs_give_clear_errors_and_exit_codes(trained, tmp_path):
    missing = runner.invoke(app, ["score", str(trained["test"]), "-m", str(tmp_path / "nope.pt"), "-o", "x.csv"])
    assert missing.exit_code == 2 and "model file not found" in missing.output
    junk = tmp_path / "junk.mp4"
    junk.write_text("this is not a video")
    out = tmp_path / "s.csv"
    mixed = runner.invoke(
        app, ["score", str(junk), str(trained["test"]), "-m", str(trained["model"]), "-o", str(out), "--no-progress"]
    )
    assert mixed.exit_code == 1
    assert "junk.mp4" in mixed.output
    assert len(read_scores_csv(out)["score"]) == 30  # the good file was still scored
    bad_roi = runner.invoke(app, ["train", str(trained["test"]), "--out", str(tmp_path / "m.pt"), "--roi", "1,2"])
    assert bad_roi.exit_code == 2 and "--roi" in bad_roi.output


@pytest.mark.slow
def test_resume_continues_from_the_saved_state(trained, tmp_path):
    model = tmp_path / "m.pt"
    src = str(trained["dir"] / "normal_a.mp4")
    first = runner.invoke(app, ["train", src, "--out", str(model), *TINY_TRAIN])
    assert first.exit_code == 0, first.output
    more = [a if a != "15" else "20" for a in TINY_TRAIN]
    second = runner.invoke(app, ["train", src, "--out", str(model), "--resume", *more])
    assert second.exit_code == 0, second.output
    assert "resuming from step 15" in second.output
    # other draws for the steps left: refused before any footage is read, in the options' own names
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    other = [a if a != "8" else "4" for a in more]
    refused = runner.invoke(app, ["train", str(broken), "--out", str(model), "--resume", *other, "--steps", "30"])
    assert refused.exit_code == 2
    assert "--batch-size 8 then, 4 now" in refused.output and "broken" not in refused.output.split(": ", 1)[1]

    # a finished run resumes with other cells: recalibrated on them, the networks as they were
    before = load_detector(model, device="cpu").model.state_dict()
    recal = runner.invoke(app, ["train", src, "--out", str(model), "--resume", *more, "--cell-step", "4"])
    assert recal.exit_code == 0, recal.output
    again = load_detector(model, device="cpu")
    cells = again.config.calibration
    assert cells.error_stride == 4
    assert all(torch.equal(before[k], v) for k, v in again.model.state_dict().items())
    frame = again.preprocessor.to_tensor(again.preprocessor.prepare(road_frames(1)[0])[None], "cpu")
    raw = raw_signals(again.net, frame, cells)
    assert raw.error_cells.shape[-1] == (32 - cells.error_pool) // 4 + 1
    too_far = runner.invoke(app, ["train", src, "--out", str(tmp_path / "x.pt"), *TINY_TRAIN, "--cell-step", "500"])
    assert too_far.exit_code == 2 and "--cell-step" in too_far.output


def test_every_setting_a_resume_may_refuse_is_named_by_an_option_of_train():
    """`anomaly train --resume` names changed settings by the options that set them: each must exist."""
    from typer.main import get_command

    from anomaly.config import DetectorConfig
    from cli.train import OPTION_OF_SETTING

    options = {o for p in get_command(app).commands["train"].params for o in [*p.opts, *p.secondary_opts]}
    for setting, option in OPTION_OF_SETTING.items():
        node = DetectorConfig()
        for part in setting.split("."):
            assert part in type(node).model_fields, setting
            node = getattr(node, part)
        assert set(option.split("/")) <= options, option


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "anomaly", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "score", "evaluate", "demo", "generate-samples"):
        assert command in out.stdout


def test_train_without_the_defect_finder_scores_disc_patch_in_its_place(trained, tmp_path):
    """`--no-finder`: no finder in the model, the score of the release before it, and `defect` refused."""
    src = str(trained["dir"] / "normal_a.mp4")
    model = tmp_path / "lean.pt"
    result = runner.invoke(app, ["train", src, "--out", str(model), "--no-finder", *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    lean = load_detector(model, torch.device("cpu"))
    assert lean.model.finder is None and lean.calibrated.signals == SIGNALS_WITHOUT_FINDER
    asked = runner.invoke(
        app, ["train", src, "--out", str(tmp_path / "x.pt"), "--no-finder", "--signals", "spatial,defect", *TINY_TRAIN]
    )
    assert asked.exit_code != 0 and "defect signal needs a defect finder" in asked.output
    assert not (tmp_path / "x.pt").exists()
