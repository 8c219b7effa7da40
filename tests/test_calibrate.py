"""Scales and threshold of a drive never seen: held-out frames scored without their own source's statistics."""

import dataclasses

import numpy as np
import torch
from factories import road_frames

from anomaly.calibrate import calibrate, calibration_from_signals, signals_of_unseen_sources
from anomaly.calibration import fit_normal_stats
from anomaly.checkpoint import load_detector, save_detector
from anomaly.config import CalibrationConfig
from anomaly.scoring import RawSignals, signal_values
from anomaly.training.train import TrainingData

CONFIG = CalibrationConfig(signals=("spatial", "latent"), memory_size=50, latent_components=2)


def drives(n: int, centres: list[float], seed: int) -> tuple[RawSignals, np.ndarray]:
    """Raw signals of frames from drives whose features sit around different centres (one per drive)."""
    gen = torch.Generator().manual_seed(seed)
    parts, groups = [], []
    for g, c in enumerate(centres):
        parts.append(c + 0.3 * torch.randn(n, 6, generator=gen))
        groups.append(np.full(n, g))
    features = torch.cat(parts)
    m = len(features)
    raw = RawSignals(
        recon=torch.rand(m, generator=gen),
        error_cells=1.0 + 0.1 * torch.rand(m, 3, 4, generator=gen),
        features=features,
        disc=torch.rand(m, generator=gen),
    )
    return raw, np.concatenate(groups)


def test_a_held_out_drive_is_scored_without_its_own_statistics():
    seen, seen_groups = drives(40, [0.0, 3.0, 6.0], seed=0)
    held, held_groups = drives(10, [0.0, 3.0, 6.0], seed=1)
    stats = fit_normal_stats(seen.error_cells, seen.features, components=2, memory_size=50)
    unseen = signals_of_unseen_sources(stats, seen, seen_groups, held, held_groups, CONFIG, seed=0)
    known, _ = signal_values(held, stats, CONFIG)
    assert unseen is not None and set(unseen) >= {"spatial", "latent", "knn"}
    # a drive the memory never held is far from it; the same drive's later frames are close
    assert np.median(unseen["knn"]) > 3 * float(known["knn"].median())
    cal = calibration_from_signals(stats, unseen, CONFIG, held_groups, ("a", "b", "c"))
    same = calibration_from_signals(stats, {k: v.numpy().astype(np.float64) for k, v in known.items()}, CONFIG)
    assert cal.scale["knn"] > same.scale["knn"] and set(cal.holdout_false_alarms) == {"a", "b", "c"}


def test_one_drive_has_nothing_to_leave_out():
    seen, seen_groups = drives(40, [0.0], seed=0)
    held, held_groups = drives(10, [0.0], seed=1)
    stats = fit_normal_stats(seen.error_cells, seen.features, components=2, memory_size=50)
    assert signals_of_unseen_sources(stats, seen, seen_groups, held, held_groups, CONFIG, seed=0) is None


def test_the_image_floor_of_a_held_out_drive_comes_from_the_other_drives_held_out_frames():
    """Training frames that agree exactly on a cell (a flat sky) give a floor of nearly zero; a held-out
    drive measured with it would score enormous `image` values on tiny changes. Each fold's floor
    comes from the other sources' held-out frames instead, which vary as new footage does."""
    seen, seen_groups = drives(40, [0.0, 3.0, 6.0], seed=0)
    held, held_groups = drives(10, [0.0, 3.0, 6.0], seed=1)
    gen = torch.Generator().manual_seed(2)
    seen.image_cells = torch.full((len(seen.features), 2, 3, 4), 0.5)
    seen.image_cells[:, :, 0, 0] += 0.01 * torch.randn(len(seen.features), 2, generator=gen)  # one cell varies
    held.image_cells = 0.5 + 0.05 * torch.randn(len(held.features), 2, 3, 4, generator=gen)
    config = CalibrationConfig(signals=("spatial", "image"), memory_size=50, latent_components=2)
    stats = fit_normal_stats(
        seen.error_cells, seen.features, components=2, memory_size=50, image_cells=seen.image_cells
    )
    unseen = signals_of_unseen_sources(stats, seen, seen_groups, held, held_groups, config, seed=0)
    known, _ = signal_values(held, stats, config)
    assert unseen is not None
    # the training-frame floor turns the held-out frames' ordinary spread into thousands of units
    assert float(known["image"].median()) > 1000
    # theirs: a few units, as the spread of the other drives' held-out frames says
    assert 0.5 < np.median(unseen["image"]) < 20


def test_the_defect_center_of_a_held_out_drive_comes_from_the_other_drives_held_out_frames():
    """The finder marks less on the frames it was trained on (the memory's) than on new ones; each fold's
    cell medians, the floor of `defect_local`, come from the other drives' held-out frames instead."""
    seen, seen_groups = drives(40, [0.0, 3.0, 6.0], seed=0)
    held, held_groups = drives(10, [0.0, 3.0, 6.0], seed=1)
    gen = torch.Generator().manual_seed(2)
    seen.defect_map = -6.0 + 0.1 * torch.randn(len(seen.features), 3, 4, generator=gen)  # trained on: clean
    held.defect_map = -1.0 + 0.1 * torch.randn(len(held.features), 3, 4, generator=gen)  # never seen: less so
    config = CalibrationConfig(signals=("spatial", "defect_local"), memory_size=50, latent_components=2)
    stats = fit_normal_stats(seen.error_cells, seen.features, components=2, memory_size=50, defect_map=seen.defect_map)
    unseen = signals_of_unseen_sources(stats, seen, seen_groups, held, held_groups, config, seed=0)
    known, _ = signal_values(held, stats, config)
    assert unseen is not None
    # against the training frames' logits every held-out frame stands about 5 logits out
    assert float(known["defect_local"].median()) > 4.5
    # against the other drives' held-out frames' medians, about as much as new footage differs
    assert abs(float(np.median(unseen["defect_local"]))) < 0.5


def test_two_held_out_drives_give_a_scene_baseline_that_scores_and_saves_as_fitted(tiny_trained, tmp_path):
    """`calibrate` on two drives: the fleet profile measures each score from the level of the held-out frames
    like it, its threshold set on scores less each frame's level among the other drive's frames; off in the
    config, or with one drive, there is none."""
    detector = tiny_trained.detector
    drives = [np.stack([detector.preprocessor.prepare(f) for f in road_frames(40, seed=s)]) for s in (21, 22)]
    data = TrainingData.split(drives, 0.4)
    cal = calibrate(detector, data)
    assert cal.scene is not None and cal.scene.k == len(data.holdout) // 2
    assert cal.summary()["scene_baseline"] == {"frames": len(data.holdout), "k": cal.scene.k}
    with_scene = detector.with_calibration(cal)
    scored = with_scene.score_prepared(data.holdout)
    assert scored.scene_level is not None and (scored.scene_level >= 0).all() and scored.scene_level.max() > 0
    unlowered = dataclasses.replace(cal, scene=None)
    plain = detector.with_calibration(unlowered).score_prepared(data.holdout)
    np.testing.assert_allclose(scored.score, plain.score - scored.scene_level, rtol=1e-6, atol=1e-6)
    assert plain.scene_level is None

    path = tmp_path / "scene.pt"
    save_detector(with_scene, path)
    loaded = load_detector(path, torch.device("cpu"))
    assert loaded.calibrated.scene is not None and loaded.calibrated.scene.k == cal.scene.k
    np.testing.assert_allclose(loaded.score_prepared(data.holdout).score, scored.score, rtol=1e-5, atol=1e-5)

    off = detector.config.calibration.model_copy(update={"scene_baseline": False})
    without = dataclasses.replace(detector, config=detector.config.model_copy(update={"calibration": off}))
    assert calibrate(without, data).scene is None
    assert calibrate(detector, TrainingData.split(drives[:1], 0.4)).scene is None
