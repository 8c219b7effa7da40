"""Camera profiles: fitted without retraining, chosen per camera, kept in the checkpoint; `anomaly calibrate`."""

import shutil

import cv2
import numpy as np
import pytest
import torch
from factories import road_frames, write_video
from typer.testing import CliRunner

from anomaly.calibrate import fit_camera_profile, time_blocks
from anomaly.checkpoint import KIND_MODEL, load_detector, read_checkpoint, save_detector
from anomaly.profiles import FLEET, far_above_target, short_names, unlike_footage_warning
from anomaly.scoring import score_prepared
from cli.main import app
from footage.scores_csv import read_scores_csv

CPU = torch.device("cpu")
runner = CliRunner()


def camera_frames(make_frames, prepare_all, config, seed, brighten):
    """A 'camera' whose normal frames are the gradient frames shifted in brightness (its own look)."""
    frames = make_frames(40, seed=seed).astype(int) + brighten
    return prepare_all(config, np.clip(frames, 0, 255).astype(np.uint8))


def test_time_blocks_cut_each_source_in_contiguous_runs():
    ids = time_blocks([8, 3], 4)
    assert list(ids) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]  # three frames make one block (two frames a block at least)


def test_a_calibrated_camera_gets_its_own_threshold(tiny_trained, make_frames, prepare_all):
    det = tiny_trained.detector
    frames = camera_frames(make_frames, prepare_all, tiny_trained.config, seed=7, brighten=40)
    profile = fit_camera_profile(det, [frames[:20], frames[20:]], names=["a", "b"])
    withcam = det.with_profile("cam1", profile)
    cam = withcam.for_camera("cam1")
    assert cam.profile == "cam1" and cam.threshold == pytest.approx(profile.threshold)
    assert cam.threshold != pytest.approx(det.threshold)
    assert withcam.for_camera(None).threshold == pytest.approx(det.threshold)
    # two sources: each held out whole and reported by name, each a rate
    assert sorted(profile.holdout_false_alarms) == ["a", "b"]
    assert all(0.0 <= v <= 1.0 for v in profile.holdout_false_alarms.values())
    one = fit_camera_profile(det, [frames], names=["a"])  # one source: its time blocks
    assert sorted(one.holdout_false_alarms) == [f"a block {i}/4" for i in range(1, 5)]
    # the camera's own memory frames join the fleet's
    fleet_memory = len(det.calibrated.stats.memory_features)
    assert len(profile.stats.memory_features) > fleet_memory
    # ... and their finder maps with them, row for row (`defect_local` indexes both by the same neighbours)
    assert profile.stats.has_defect_memory and len(profile.stats.memory_defect) == len(profile.stats.memory_features)
    assert torch.equal(profile.stats.memory_defect[:fleet_memory], det.calibrated.stats.memory_defect.cpu())
    scored = score_prepared(cam, frames[:5])
    assert scored.profile == "cam1" and scored.threshold == pytest.approx(profile.threshold)


def test_unknown_camera_falls_back_to_the_fleet_profile_and_says_so(tiny_trained, make_frames, prepare_all):
    det = tiny_trained.detector
    frames = camera_frames(make_frames, prepare_all, tiny_trained.config, seed=7, brighten=40)
    withcam = det.with_profile("cam1", fit_camera_profile(det, [frames]))
    other = withcam.for_camera("cam9")
    assert other.profile == FLEET and other.threshold == pytest.approx(det.threshold)
    note = withcam.profile_note("cam9")
    assert "cam9" in note and "fleet profile" in note and "cam1" in note
    assert "own profile" in withcam.profile_note("cam1")
    assert score_prepared(other, frames[:3]).profile == FLEET


def test_checkpoint_round_trip_with_several_profiles(tmp_path, tiny_trained, make_frames, prepare_all):
    det = tiny_trained.detector
    cfg = tiny_trained.config
    a = camera_frames(make_frames, prepare_all, cfg, seed=7, brighten=40)
    b = camera_frames(make_frames, prepare_all, cfg, seed=8, brighten=-30)
    det2 = det.with_profile("a", fit_camera_profile(det, [a])).with_profile("b", fit_camera_profile(det, [b]))
    path = tmp_path / "multi.pt"
    save_detector(det2.for_camera("a"), path)  # saving while a camera's profile is in use keeps the fleet one
    loaded = load_detector(path, CPU)
    assert sorted(loaded.profiles) == ["a", "b"] and loaded.profile == FLEET
    assert loaded.threshold == pytest.approx(det.threshold)
    for name, frames in (("a", a), ("b", b)):
        want = score_prepared(det2.for_camera(name), frames[:6])
        got = score_prepared(loaded.for_camera(name), frames[:6])
        np.testing.assert_allclose(got.score, want.score, rtol=1e-5, atol=1e-5)
        assert got.threshold == pytest.approx(want.threshold)


def without_finder(state: dict) -> dict:
    """A checkpoint state as formats 3 and 4 wrote it: no defect finder in the weights or the config."""
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if not k.startswith("finder.")}
    state["config"]["model"].pop("finder_widths", None)
    for cal in (state["calibration"], *state.get("cameras", {}).values()):
        cal["combine"] = [s for s in cal["combine"] if s != "defect"] or ["spatial"]
        for table in ("loc", "scale"):
            cal[table].pop("defect", None)
    return state


def test_format_4_checkpoint_without_a_defect_finder_still_loads_and_scores(tmp_path, tiny_trained):
    path = tmp_path / "format4.pt"
    state = without_finder(read_checkpoint(tiny_trained.path, KIND_MODEL))
    state["format_version"] = 4
    torch.save(state, path)
    old = load_detector(path, CPU)
    assert old.model.finder is None and old.config.model.finder_widths is None
    assert "defect" not in old.calibrated.signals
    x = np.stack([np.zeros((24, 32, 3), np.uint8) + 90, np.zeros((24, 32, 3), np.uint8) + 140])
    s = score_prepared(old.with_all_signals(), x)
    assert np.isfinite(s.score).all() and (s.defect_score == 0).all()
    # its scores are the new model's on every signal it has: the finder adds a column, changes none
    new = score_prepared(tiny_trained.detector.with_all_signals(), x)
    for column in ("spatial_score", "latent_score", "patch_score", "image_score", "disc_patch_score"):
        np.testing.assert_allclose(getattr(s, column), getattr(new, column), rtol=1e-5, atol=1e-6)


def test_format_5_checkpoint_with_one_finder_loads_as_one_and_scores_as_before(tmp_path, make_config, training_data):
    """Format 5 had one defect finder (`finder.*` weights, no `finder_count`): it loads as a model with
    one finder and scores as it did, and so does its training state, which resumes."""
    from anomaly.training.train import train_detector, training_state_path

    base = make_config(steps=2)
    config = base.model_copy(update={"model": base.model.model_copy(update={"finder_count": 1})})
    path = tmp_path / "one.pt"
    det = train_detector(config, training_data, path, progress=False, log=lambda _: None)
    state = read_checkpoint(path, KIND_MODEL)
    state["state_dict"] = {k.replace("finder.members.0.", "finder."): v for k, v in state["state_dict"].items()}
    state["config"]["model"].pop("finder_count")
    state["format_version"] = 5
    torch.save(state, tmp_path / "format5.pt")
    old = load_detector(tmp_path / "format5.pt", CPU)
    assert old.config.model.finder_count == 1 and len(old.model.finders) == 1
    x = training_data.holdout[:4]
    want, got = score_prepared(det.with_all_signals(), x), score_prepared(old.with_all_signals(), x)
    np.testing.assert_array_equal(got.score, want.score)
    np.testing.assert_array_equal(got.defect_local_score, want.defect_local_score)
    state_path = training_state_path(path)
    training = torch.load(state_path, weights_only=True)
    training["state_dict"] = {k.replace("finder.members.0.", "finder."): v for k, v in training["state_dict"].items()}
    training["config"]["model"].pop("finder_count")
    training["format_version"] = 5
    torch.save(training, state_path)
    said: list[str] = []
    resumed = train_detector(config, training_data, path, resume=True, progress=False, log=said.append)
    assert said[0].startswith("resuming from step 2")
    for k, v in det.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_format_3_checkpoint_still_loads_and_scores_as_before(tmp_path, tiny_trained):
    """A checkpoint from before the memory (format 3): pooled signals only, new ones read 0."""
    path = tmp_path / "old.pt"
    shutil.copy(tiny_trained.path, path)
    state = without_finder(read_checkpoint(path, KIND_MODEL))
    state["format_version"] = 3
    state.pop("cameras", None)
    stats = state["calibration"]["stats"]
    for key in list(stats):
        if key not in ("cell_center", "cell_spread", "feature_mean", "feature_whitening"):
            del stats[key]
    state["calibration"]["combine"] = ["spatial", "latent"]
    torch.save(state, path)
    old = load_detector(path, CPU)
    assert old.profiles == {} and not old.calibrated.stats.has_memory
    x = np.stack([np.zeros((24, 32, 3), np.uint8) + 90, np.zeros((24, 32, 3), np.uint8) + 140])
    s = score_prepared(old.with_all_signals(), x)
    assert np.isfinite(s.score).all() and (s.knn_score == 0).all() and (s.local_score == 0).all()


def test_training_reports_held_out_false_alarms_per_source(tiny_trained):
    rates = tiny_trained.detector.calibrated.holdout_false_alarms
    assert list(rates) == ["source 1"] and 0.0 <= rates["source 1"] <= 1.0


def test_calibrate_command_end_to_end(tmp_path, tiny_trained):
    cam_video = write_video(tmp_path / "cam.mp4", road_frames(40, seed=5))
    out = tmp_path / "with_cam.pt"
    result = runner.invoke(
        app,
        ["calibrate", str(tiny_trained.path), str(cam_video), "--camera", "van7", "--out", str(out), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert "added camera profile 'van7'" in result.output and "per time block of the source" in result.output
    assert sorted(load_detector(out, CPU).profiles) == ["van7"]
    for camera, expect in (("van7", "own profile"), ("van8", "using the fleet profile")):
        csv_path = tmp_path / f"{camera}.csv"
        scored = runner.invoke(
            app,
            ["score", str(cam_video), "--model", str(out), "--out", str(csv_path), "--camera", camera]
            + ["--device", "cpu"],
        )
        assert scored.exit_code == 0, scored.output
        assert expect in scored.output
        cols = read_scores_csv(csv_path)
        assert len(cols["score"]) == 40 and np.isfinite(cols["knn_score"]).all()


def test_calibrate_with_its_own_signals_keeps_the_fleet_profile(tmp_path, tiny_trained):
    cam_video = write_video(tmp_path / "cam.mp4", road_frames(40, seed=5))
    out = tmp_path / "with_cam.pt"
    result = runner.invoke(
        app,
        ["calibrate", str(tiny_trained.path), str(cam_video), "--camera", "van7", "--out", str(out)]
        + ["--signals", "local,knn,disc_patch", "--target-far", "0.05", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    det = load_detector(out, CPU)
    assert det.profiles["van7"].signals == ("local", "knn", "disc_patch")
    assert det.profiles["van7"].target_false_alarm_rate == pytest.approx(0.05)
    assert det.calibrated.signals == tiny_trained.detector.calibrated.signals
    assert det.config == tiny_trained.detector.config


def test_calibrate_refuses_too_little_footage(tmp_path, tiny_trained):
    video = write_video(tmp_path / "short.mp4", road_frames(4, seed=5))
    result = runner.invoke(
        app,
        ["calibrate", str(tiny_trained.path), str(video), "--camera", "c", "--out", str(tmp_path / "m.pt")]
        + ["--device", "cpu"],
    )
    assert result.exit_code == 2 and "at least 8" in result.output


def test_far_above_target_sources_are_those_at_ten_times_the_target_and_at_least_a_tenth():
    rates = {"wait_a": 0.0, "wait_b": 0.02, "drive": 1.0, "edge": 0.10}
    assert far_above_target(rates, 0.01) == ["drive", "edge"]
    assert far_above_target(rates, 0.05) == ["drive"]  # ten times a 5% target is 50%
    assert far_above_target({}, 0.01) == []


def test_unlike_footage_warning_names_the_sources_and_what_to_do_for_each_kind_of_profile():
    rates = {"/d/a.mp4": 0.003, "/d/b.mp4": 0.4, "/d/c.mp4": 1.0}
    assert unlike_footage_warning({"/d/a.mp4": 0.003}, 0.01, FLEET) is None
    fleet = unlike_footage_warning(rates, 0.01, FLEET)
    assert fleet is not None and fleet.count("\n") == 0
    assert "c.mp4 100%, b.mp4 40%" in fleet and "a.mp4" not in fleet  # worst first, paths shortened
    assert "set for 1.0%" in fleet and "--camera NAME" in fleet
    camera = unlike_footage_warning(rates, 0.01, "van7")
    assert camera is not None and "camera 'van7'" in camera and "--camera van7" in camera
    many = {f"s{i}.mp4": 1.0 for i in range(8)}
    assert "and 3 more" in (unlike_footage_warning(many, 0.01, FLEET) or "")


def test_sources_of_the_same_file_name_are_told_apart_by_their_folders():
    names = short_names(["/runs/unseen/cam__v49.mp4", "/runs/unseen_glare/cam__v49.mp4", "/runs/unseen/cam__v17.mp4"])
    assert names == {
        "/runs/unseen/cam__v49.mp4": "unseen/cam__v49.mp4",
        "/runs/unseen_glare/cam__v49.mp4": "unseen_glare/cam__v49.mp4",
        "/runs/unseen/cam__v17.mp4": "cam__v17.mp4",
    }
    assert short_names(["a/x/d.mp4", "b/x/d.mp4"]) == {"a/x/d.mp4": "a/x/d.mp4", "b/x/d.mp4": "b/x/d.mp4"}
    assert short_names(["d.mp4", "./d.mp4"]) == {"d.mp4": "d.mp4", "./d.mp4": "d.mp4"}  # the same file: no loop
    line = unlike_footage_warning({"/a/v.mp4": 1.0, "/b/v.mp4": 0.5}, 0.01, FLEET) or ""
    assert "a/v.mp4 100%, b/v.mp4 50%" in line


def test_score_warns_of_footage_unlike_its_profile_and_only_then(tmp_path, tiny_trained):
    """A clip of noise is flagged throughout and named with what to do; a normal clip, or a run with its
    threshold overridden (set for no rate), gets no such line."""
    rng = np.random.default_rng(0)
    noise = write_video(tmp_path / "noise.mp4", rng.integers(0, 256, (30, 64, 96, 3), dtype=np.uint8))
    normal = tmp_path / "held_out"  # the frames the model calibrated on, written losslessly
    normal.mkdir()
    for i, frame in enumerate(road_frames(80)[48:]):
        cv2.imwrite(str(normal / f"{i:03d}.png"), frame)
    base = ["--model", str(tiny_trained.path), "--out", str(tmp_path / "s.csv"), "--overwrite", "--device", "cpu"]
    flagged = runner.invoke(app, ["score", str(noise), str(normal), *base])
    assert flagged.exit_code == 0, flagged.output
    assert read_scores_csv(tmp_path / "s.csv")["is_anomaly"][:30].all()
    lines = [line for line in flagged.output.splitlines() if line.startswith("warning: frames above the threshold")]
    assert len(lines) == 1 and "noise.mp4 100%" in lines[0] and "held_out" not in lines[0]
    assert "anomaly calibrate" in lines[0]
    quiet = runner.invoke(app, ["score", str(normal), *base])
    assert quiet.exit_code == 0 and "warning: frames above" not in quiet.output
    overridden = runner.invoke(app, ["score", str(noise), str(normal), *base, "--threshold", "-1e9"])
    assert overridden.exit_code == 0 and "warning: frames above" not in overridden.output


def test_calibrate_warns_when_one_source_is_not_described_by_the_others(tmp_path, tiny_trained):
    road = write_video(tmp_path / "road.mp4", road_frames(30, seed=5))
    noise = np.random.default_rng(3).integers(0, 256, size=(30, 72, 128, 3), dtype=np.uint8)
    static = write_video(tmp_path / "static.mp4", noise)
    out = tmp_path / "with_cam.pt"
    result = runner.invoke(
        app,
        ["calibrate", str(tiny_trained.path), str(road), str(static), "--camera", "van9", "--out", str(out)]
        + ["--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert "scored far above the rest of the footage" in result.output, result.output
    assert "calibrate on more of this camera's normal driving" in result.output


def test_a_camera_profile_from_still_footage_is_no_narrower_than_the_fleet(tiny_trained, prepare_all):
    """Two sources of a car that waits (each one frame, with sensor noise) vary far less than driving:
    the profile keeps its own medians but neither the fleet's ranges nor (off the camera's own axes) its
    scales narrow."""
    det = tiny_trained.detector
    base = road_frames(2, seed=11)
    rng = np.random.default_rng(0)
    noisy = [np.clip(np.repeat(f[None], 12, 0) + rng.normal(0, 1, (12, *f.shape)), 0, 255) for f in base]
    profile = fit_camera_profile(det, [prepare_all(tiny_trained.config, n.astype(np.uint8)) for n in noisy])
    fleet = det.calibrated
    for name in ("cell_spread", "disc_spread", "patch_spread", "row_spread", "image_floor"):
        mine, theirs = getattr(profile.stats, name), getattr(fleet.stats, name)
        assert mine is not None and bool((mine >= theirs.cpu()).all()), name
    assert not torch.equal(profile.stats.cell_center, fleet.stats.cell_center.cpu())  # its own medians
    for name, scale in profile.scale.items():
        if name not in ("latent", "pca"):
            assert scale >= fleet.scale[name], name
    # the footage is still enough that the floors took hold (its own would have been narrower)
    floored = [
        name for name, scale in profile.scale.items() if scale == fleet.scale[name] and name not in ("latent", "pca")
    ]
    assert floored
    assert any(
        bool((getattr(profile.stats, name) == getattr(fleet.stats, name).cpu()).any())
        for name in ("cell_spread", "disc_spread", "patch_spread", "row_spread", "image_floor")
    )


def test_calibrate_says_which_scales_it_held_at_the_fleets(tmp_path, tiny_trained):
    rng = np.random.default_rng(1)
    still = np.repeat(road_frames(1, seed=11), 40, 0).astype(int) + rng.integers(-1, 2, (40, 64, 96, 3))
    video = write_video(tmp_path / "parked.mp4", np.clip(still, 0, 255).astype(np.uint8))
    out = tmp_path / "parked.pt"
    result = runner.invoke(app, ["calibrate", str(tiny_trained.path), str(video), "--camera", "p", "--out", str(out)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("held at the fleet's scale: "))
    named = line.removeprefix("held at the fleet's scale: ").split(" (")[0].split(", ")
    profile = load_detector(out, CPU).for_camera("p").calibrated
    fleet = tiny_trained.detector.calibrated
    assert named and all(profile.scale[name] == fleet.scale[name] for name in named)
    assert not {"latent", "pca"} & set(named)
