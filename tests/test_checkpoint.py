import collections
import dataclasses
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly import checkpoint
from anomaly.checkpoint import (
    FORMAT_VERSION,
    KIND_MODEL,
    CheckpointError,
    atomic_torch_save,
    load_detector,
    read_checkpoint,
    save_detector,
)
from anomaly.frame_scores import SIGNAL_FIELDS
from anomaly.scene_baseline import fit_scene_baseline
from anomaly.training.train import training_state_path

CPU = torch.device("cpu")


class Boom:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


class SneakyDict(collections.OrderedDict):
    """An OrderedDict subclass: looks like a state dict, but is a custom global."""


def raw_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def ckpt(tmp_path, tiny_trained) -> Path:
    """A private copy of the session's checkpoint, free to tamper with."""
    return Path(shutil.copy(tiny_trained.path, tmp_path / "model.pt"))


@pytest.fixture
def frames(tiny_trained, make_frames, prepare_all) -> np.ndarray:
    return prepare_all(tiny_trained.config, make_frames(6, seed=99))


def assert_same_scores(a, b) -> None:
    for field in ("score", "recon_error", "disc_score", "spatial_score", "latent_score", "is_anomaly", "heatmap"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.threshold == b.threshold


# --- round trip ----------------------------------------------------------------------------------


def test_checkpoint_written_by_training_scores_identically(tiny_trained, frames):
    from anomaly.scoring import score_prepared

    loaded = load_detector(tiny_trained.path, CPU)
    assert loaded.config == tiny_trained.config
    assert_same_scores(score_prepared(tiny_trained.detector, frames), score_prepared(loaded, frames))


def test_save_then_load_round_trip(tmp_path, tiny_trained, frames):
    from anomaly.scoring import score_prepared

    path = tmp_path / "sub" / "again.pt"
    save_detector(tiny_trained.detector, path)
    loaded = load_detector(path, CPU)
    assert_same_scores(score_prepared(tiny_trained.detector, frames), score_prepared(loaded, frames))
    a, b = tiny_trained.detector.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.calibration.summary() == tiny_trained.detector.calibration.summary()
    assert not loaded.model.training


def test_checkpoint_contents(tiny_trained):
    state = raw_state(tiny_trained.path)
    assert state["kind"] == KIND_MODEL
    assert state["format_version"] == FORMAT_VERSION
    assert state["config"]["preprocess"]["width"] == 32
    assert all(v.device.type == "cpu" for v in state["state_dict"].values())


def test_saving_an_uncalibrated_detector_is_refused(tmp_path, tiny_trained):
    from anomaly.detector import Detector

    with pytest.raises(ValueError, match="not been calibrated"):
        save_detector(Detector.new(tiny_trained.config, CPU), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


# --- refusals ------------------------------------------------------------------------------------


def test_other_format_version_is_refused_with_the_version(ckpt):
    state = raw_state(ckpt)
    state["format_version"] = FORMAT_VERSION + 98
    torch.save(state, ckpt)
    with pytest.raises(
        CheckpointError, match=rf"format version {FORMAT_VERSION + 98}\b.*reads versions? [0-9, ]*{FORMAT_VERSION}\b"
    ):
        load_detector(ckpt, CPU)


def test_missing_format_version_is_refused(ckpt):
    state = raw_state(ckpt)
    del state["format_version"]
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="version None"):
        load_detector(ckpt, CPU)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_detector(tmp_path / "nope.pt", CPU)


def test_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder, not a model file.*anomaly export"):
        load_detector(tmp_path, CPU)


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("this is not a model\n")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_detector(path, CPU)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_detector(path, CPU)


@pytest.mark.parametrize("how", ["pickle", "torch.save", "inside-a-checkpoint"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    if how == "pickle":
        path.write_bytes(pickle.dumps(Boom(marker), protocol=2))
    elif how == "torch.save":
        torch.save(Boom(marker), path)
    else:
        torch.save({"kind": KIND_MODEL, "format_version": FORMAT_VERSION, "config": Boom(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not a readable"):
        load_detector(path, CPU)
    assert not marker.exists(), "unpickling ran code"


def test_the_payload_is_live_when_unpickled_unsafely(tmp_path):
    # control for the test above: plain pickle does run it
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Boom(marker), protocol=2))
    assert marker.is_dir()


def test_custom_dict_subclass_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(SneakyDict(kind=KIND_MODEL, format_version=FORMAT_VERSION), path)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_detector(path, CPU)


def test_non_dict_and_wrong_kind_are_refused(tmp_path, tiny_trained):
    path = tmp_path / "model.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not an anomaly-detector file"):
        load_detector(path, CPU)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not an anomaly-detector file"):
        load_detector(path, CPU)
    # the training state written beside the model is a different kind
    with pytest.raises(CheckpointError, match="not an anomaly-detector file"):
        load_detector(training_state_path(tiny_trained.path), CPU)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c["preprocess"].update(width=30),  # not a multiple of 8
        lambda c: c["preprocess"].update(roi=[0.5, 0.0, 0.2, 1.0]),
        lambda c: c["calibration"].update(signals=["spatial", "telepathy"]),
        lambda c: c.update(colour="red"),  # unknown field (extra="forbid")
        lambda c: c["model"].update(latent_channels=0),
    ],
    ids=["size", "roi", "signal", "extra", "latent"],
)
def test_config_that_does_not_validate_is_refused(ckpt, tamper):
    state = raw_state(ckpt)
    tamper(state["config"])
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="config this version cannot read"):
        load_detector(ckpt, CPU)


def test_weights_that_do_not_fit_the_config_are_refused(ckpt):
    state = raw_state(ckpt)
    state["config"]["model"]["widths"] = [16, 8, 8]
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="do not match its config"):
        load_detector(ckpt, CPU)


def test_missing_calibration_is_refused(ckpt):
    state = raw_state(ckpt)
    del state["calibration"]
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="do not match"):
        load_detector(ckpt, CPU)


def test_missing_config_is_refused(ckpt):
    state = raw_state(ckpt)
    del state["config"]
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError):
        load_detector(ckpt, CPU)


def test_read_checkpoint_returns_the_dict(tiny_trained):
    state = read_checkpoint(tiny_trained.path, KIND_MODEL)
    assert set(state) >= {"kind", "format_version", "config", "state_dict", "calibration"}


# --- atomic writes -------------------------------------------------------------------------------


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "deep" / "er" / "obj.pt"
    atomic_torch_save({"a": torch.arange(3)}, path)
    assert os.listdir(path.parent) == ["obj.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(3))


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "obj.pt"
    atomic_torch_save({"v": 1}, path)

    def broken_save(obj, f):
        Path(f).write_bytes(b"half a mod")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert os.listdir(tmp_path) == ["obj.pt"]


def test_a_loaded_detector_scores_with_fused_networks_and_saves_the_model_itself(tmp_path, tiny_trained):
    loaded = load_detector(tiny_trained.path, CPU)
    assert loaded.scoring_model is not None and loaded.net is loaded.scoring_model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.net.modules())
    assert loaded.for_camera("anything").net is loaded.net  # copies share the fused networks
    save_detector(loaded, tmp_path / "again.pt")
    assert raw_state(tmp_path / "again.pt")["state_dict"].keys() == raw_state(tiny_trained.path)["state_dict"].keys()


def test_a_model_calibrated_before_image_matched_cells_beside_scores_as_calibrated(ckpt, frames):
    state = raw_state(ckpt)
    assert state["config"]["calibration"]["image_shift"] == 1
    shifted_scores = load_detector(ckpt, CPU).with_all_signals().score_prepared(frames)
    del state["config"]["calibration"]["image_shift"]
    torch.save(state, ckpt)
    old = load_detector(ckpt, CPU)
    assert old.config.calibration.image_shift == 0
    unshifted = old.with_all_signals().score_prepared(frames)
    assert np.all(unshifted.image_score >= shifted_scores.image_score - 1e-5)  # a shift only ever forgives
    assert not np.allclose(unshifted.image_score, shifted_scores.image_score)


def test_a_model_calibrated_before_the_combination_was_stored_keeps_the_maximum(ckpt, frames):
    state = raw_state(ckpt)
    assert state["config"]["calibration"]["combination"] == state["calibration"]["combination"] == "logmeanexp"
    del state["config"]["calibration"]["combination"]
    del state["calibration"]["combination"]
    torch.save(state, ckpt)
    old = load_detector(ckpt, CPU)
    # its fleet profile scores with the rule it was calibrated with, and cameras calibrated on it later too
    assert old.calibration.combination == old.config.calibration.combination == "max"
    scores = old.score_prepared(frames)
    cal = old.calibration
    z = np.stack([(getattr(scores, SIGNAL_FIELDS[n]) - cal.loc[n]) / cal.scale[n] for n in cal.signals])
    np.testing.assert_allclose(scores.score, z.max(0), rtol=1e-6)


def with_scene(detector, seed: int = 0):
    """`detector` whose fleet profile has a scene baseline of 12 made-up held-out frames, as two drives."""
    stats = detector.calibrated.stats
    d = stats.feature_center.shape[0]
    rng = np.random.default_rng(seed)
    scene = fit_scene_baseline(
        stats.feature_center.numpy(), stats.feature_scale.numpy(), rng.normal(size=(12, d)), rng.normal(size=12),
        np.repeat([0, 1], 6),
    )  # fmt: skip
    return detector.with_calibration(dataclasses.replace(detector.calibrated, scene=scene))


def test_a_format_6_model_scores_without_a_scene_baseline_and_damaged_baselines_are_refused(ckpt, tiny_trained, frames):
    save_detector(with_scene(tiny_trained.detector), ckpt)
    state = raw_state(ckpt)
    assert state["format_version"] == FORMAT_VERSION == 7 and set(state["calibration"]["scene"]) >= {"scores", "k"}
    assert load_detector(ckpt, CPU).score_prepared(frames).scene_level is not None
    del state["calibration"]["scene"]
    state["format_version"] = 6
    torch.save(state, ckpt)
    older = load_detector(ckpt, CPU)
    assert older.calibrated.scene is None and older.score_prepared(frames).scene_level is None
    save_detector(with_scene(tiny_trained.detector), ckpt)
    damaged = raw_state(ckpt)
    damaged["calibration"]["scene"]["scores"] = damaged["calibration"]["scene"]["scores"][:-1]
    torch.save(damaged, ckpt)
    with pytest.raises(CheckpointError, match="inconsistent scene baseline"):
        load_detector(ckpt, CPU)
