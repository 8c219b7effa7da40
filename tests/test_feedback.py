"""Folding confirmed-normal stretches into a profile: the false alarm goes, a different anomaly stays caught."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from factories import road_frames

from anomaly.calibrate import collect_raw
from anomaly.calibration import ROW_MEMORIES, Calibration, NormalStats
from anomaly.feedback import (
    fold_feedback,
    folded_stats,
    raise_offsets,
    remember,
    widen_basis,
    widen_ranges,
    widen_whitening,
)
from anomaly.scoring import RawSignals, pca_signal


def sign(frames: np.ndarray, corner: str) -> np.ndarray:
    """Frames with a white board in the sky (a roadside sign the training drives never passed), left or right."""
    out = frames.copy()
    h, w = out.shape[1:3]
    x0 = 2 if corner == "left" else w - w // 4 - 2
    out[:, 2 : h // 4, x0 : x0 + w // 4] = 255
    return out


def noise_block(frames: np.ndarray, rows: slice, cols: slice, seed: int) -> np.ndarray:
    """Frames with a block of uniform colour noise (a sticker, a torn block), the same noise in every frame."""
    out = frames.copy()
    h, w = len(range(*rows.indices(out.shape[1]))), len(range(*cols.indices(out.shape[2])))
    out[:, rows, cols] = np.random.default_rng(seed).integers(0, 256, (len(out), h, w, 3), dtype=np.uint8)
    return out


def test_widen_ranges_covers_the_frames_and_touches_only_the_cells_they_exceed() -> None:
    center, spread = torch.zeros(3, 4), torch.ones(3, 4)
    values = torch.zeros(2, 3, 4)
    values[1, 0, 0] = 10.0
    widened = widen_ranges(values, center, spread, target=2.0)
    assert float(widened[0, 0]) == 5.0 and int((widened != spread).sum()) == 1
    assert float(((values - center) / widened).amax()) <= 2.0


def test_raise_offsets_lowers_only_the_cells_above_the_target_and_respects_the_cap() -> None:
    offset = torch.zeros(3, 4)
    values = torch.full((2, 3, 4), -1.0)
    values[1, 0, 0], values[0, 2, 3] = 5.0, 4.0
    cap = torch.full((3, 4), float("inf"))
    cap[2, 3] = 1.0  # a confirmed anomaly needs that cell
    raised = raise_offsets(values, offset, target=2.0, cap=cap)
    assert float(raised[0, 0]) == 3.0 and float(raised[2, 3]) == 1.0 and int((raised != offset).sum()) == 2
    assert float((values - raised)[:, 0, 0].max()) <= 2.0


def test_widen_whitening_brings_the_frames_to_the_target_and_keeps_other_directions() -> None:
    rng = np.random.default_rng(0)
    whitening = torch.eye(4)
    mean = torch.zeros(4)
    confirmed = torch.tensor(rng.normal(0, 0.3, (6, 4)), dtype=torch.float32)
    confirmed[:, 0] += 8.0  # far out along the first axis
    widened = widen_whitening(confirmed, mean, whitening, target=2.0)
    distances = (confirmed @ widened).norm(dim=1)
    assert float(distances.max()) <= 2.0 + 1e-4 and float(distances.max()) > 1.9  # just enough
    across = torch.tensor([[0.0, 0.0, 0.0, 3.0]])
    assert float((across @ widened).norm()) == pytest.approx(3.0, rel=0.05)  # a direction they do not lie in
    assert torch.equal(widen_whitening(confirmed * 0.01, mean, whitening, target=2.0), whitening)


def test_widen_basis_fills_unused_rows_with_the_confirmed_frames_directions_and_keeps_a_caught_anomaly() -> None:
    rng = np.random.default_rng(1)
    mean, basis = torch.zeros(12), torch.zeros(4, 12)
    basis[0, 0] = 1.0  # one normal axis; three rows unused
    confirmed = torch.tensor(rng.normal(0, 0.01, (8, 12)), dtype=torch.float32)
    confirmed[:, 1] += torch.linspace(2.0, 3.0, 8)  # an overpass: far out along a direction normal frames never took
    confirmed[:, 0] += 5.0  # and anywhere along the normal axis
    widened = widen_basis(confirmed, mean, basis, target=0.01)
    assert float(pca_signal(confirmed, mean, widened).max()) <= 0.01
    assert torch.equal(widened[0], basis[0])  # the normal axis stays
    assert int((widened.norm(dim=1) > 0).sum()) == 2  # one direction was enough
    torch.testing.assert_close(widened @ widened.T, torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0])), atol=1e-5, rtol=0)
    elsewhere = torch.zeros(1, 12)
    elsewhere[0, 5] = 3.0  # a direction they do not lie in keeps its residual
    torch.testing.assert_close(pca_signal(elsewhere, mean, widened), pca_signal(elsewhere, mean, basis))
    # a confirmed anomaly along the same direction, caught by pca alone, is kept: nothing is added
    anomaly = torch.zeros(1, 12)
    anomaly[0, 1] = 6.0
    level = float(pca_signal(anomaly, mean, basis)) / 2
    assert torch.equal(widen_basis(confirmed, mean, basis, target=0.01, protected=[anomaly], level=level), basis)
    full = torch.eye(12)[[0, 2, 3, 4]]  # no unused row: the basis cannot grow
    assert torch.equal(widen_basis(confirmed, mean, full, target=0.01), full)


def test_folding_widens_only_the_row_boundaries_a_false_alarm_exceeded_and_keeps_a_confirmed_tear() -> None:
    stats = NormalStats(
        cell_center=torch.zeros(1, 1),
        cell_spread=torch.ones(1, 1),
        feature_mean=torch.zeros(1),
        feature_whitening=torch.ones(1, 1),
        row_center=torch.full((4,), 0.1),
        row_spread=torch.full((4,), 0.1),
    )
    cal = Calibration(stats, {"tear": 0.0}, {"tear": 1.0}, ("tear",), 3.0, 0.01, 100)

    def rows(*values: float) -> RawSignals:
        return RawSignals(torch.zeros(1), torch.zeros(1, 1, 1), torch.zeros(1, 1), row_changes=torch.tensor([values]))

    overpass = rows(0.1, 0.9, 0.1, 0.1)  # a bridge's edge across the second boundary: z 8, a false alarm
    folded, changed = folded_stats(cal, overpass, [], margin=0.8, seed=0)
    assert changed["tear"] == 1 and torch.equal(folded.row_spread[[0, 2, 3]], stats.row_spread[[0, 2, 3]])
    z = (overpass.row_changes - folded.row_center) / folded.row_spread
    assert float(z.max()) <= 0.8 * 3.0 + 1e-5
    # a confirmed tear at the same boundary keeps it above the threshold: the range widens only so far
    tear = rows(0.1, 1.2, 0.1, 0.1)
    kept, _ = folded_stats(cal, overpass, [tear], margin=0.8, seed=0)
    assert float(((tear.row_changes - kept.row_center) / kept.row_spread).max()) > 3.0


def test_folding_a_false_alarm_clears_it_and_keeps_another_anomaly(tiny_trained, prepare_all) -> None:
    detector = tiny_trained.detector
    config = tiny_trained.config
    base = road_frames(30, seed=5)
    false_alarm = prepare_all(config, sign(base[:15], "left"))
    other_kind = prepare_all(config, base[15:] // 4)  # night: the whole frame dark
    assert detector.score_prepared(false_alarm).is_anomaly.any(), "the sign must raise the alarm to begin with"
    assert detector.score_prepared(other_kind).is_anomaly.any()
    result = fold_feedback(detector, [false_alarm], [other_kind])
    assert result.false_alarms_before == 1 and result.false_alarms_after == 0
    assert result.caught_before == result.caught_after == 1 and not result.newly_missed
    assert set(result.widened) >= {"spatial", "latent"} and sum(result.widened.values()) > 0
    assert result.calibration.threshold == detector.threshold  # only the statistics change
    refolded = detector.with_calibration(result.calibration)
    unseen = prepare_all(config, sign(road_frames(10, seed=9), "left"))  # the same sign on another stretch
    assert refolded.score_prepared(unseen).score.max() < detector.score_prepared(unseen).score.max()
    with pytest.raises(ValueError, match="nothing to fold"):
        fold_feedback(detector, [])


def test_a_confirmed_anomaly_in_the_same_cells_stays_caught(tiny_trained, prepare_all) -> None:
    detector = tiny_trained.detector
    base = road_frames(30, seed=11)
    board = prepare_all(tiny_trained.config, sign(base[:15], "left"))  # marked normal
    red = base[15:].copy()
    red[:, 2:16, 2:26] = (0, 0, 255)  # a red board in the same place: confirmed anomaly
    confirmed = prepare_all(tiny_trained.config, red)
    assert detector.score_prepared(confirmed).is_anomaly.any()
    result = fold_feedback(detector, [board], [confirmed])
    assert result.caught_after == 1 and not result.newly_missed
    kept = detector.with_calibration(result.calibration).score_prepared(confirmed).score.max()
    assert kept > detector.threshold


def test_folding_lowers_the_defect_finders_cells_of_a_false_alarm_and_keeps_a_confirmed_one(
    tiny_trained, prepare_all
) -> None:
    """A profile scored by `defect` alone: a sticker high on the lens marked normal stops counting, a confirmed
    noise block low in the frame stays caught. (Noise, not a plain board: what a finder marks in a plain
    white board depends on its training run, and a board it does not mark tests nothing.)"""
    detector = tiny_trained.detector.with_all_signals()
    config = tiny_trained.config
    base = road_frames(30, seed=5)
    board = prepare_all(config, noise_block(base[:15], slice(4, 20), slice(8, 40), seed=1))
    confirmed = prepare_all(config, noise_block(base[15:], slice(-20, -4), slice(8, 40), seed=0))
    cal = detector.calibrated
    peak = [float(detector.score_prepared(f).defect_score.max()) for f in (board, confirmed)]
    z = [(p - cal.loc["defect"]) / cal.scale["defect"] for p in peak]
    only = dataclasses.replace(cal, signals=("defect",), threshold=0.9 * min(z))
    profiled = detector.with_calibration(only)
    result = fold_feedback(profiled, [board], [confirmed])
    assert result.false_alarms_before == 1 and result.false_alarms_after == 0
    assert result.caught_before == result.caught_after == 1 and not result.newly_missed
    assert "defect" not in result.unchanged and result.widened["defect"] > 0
    offset = result.calibration.stats.defect_offset
    assert offset is not None and (offset >= 0).all() and (offset > 0).sum() < offset.numel()


def test_remember_grows_every_table_of_the_memory_alike_or_none_of_them(tiny_trained, prepare_all) -> None:
    """Confirmed-normal frames join every per-frame table of the memory; frames lacking one table join none,
    so the tables never go out of step (a table a row short would pair frames with other frames' maps)."""
    detector = tiny_trained.detector
    raw = collect_raw(detector, prepare_all(tiny_trained.config, road_frames(12, seed=8)))
    fitted = vars(detector.calibrated.stats).items()
    stats = NormalStats(**{k: None if v is None else v.cpu().clone() for k, v in fitted})
    tables = [t.rows for t in ROW_MEMORIES if getattr(stats, t.rows) is not None]
    tables += ["memory_features", "memory_patches"]
    assert {"memory_image", "memory_defect"} <= set(tables)  # the tiny model keeps every table
    before = {t: len(getattr(stats, t)) for t in tables}
    assert remember(stats, dataclasses.replace(raw, image_cells=None), seed=0) == 0
    assert {t: len(getattr(stats, t)) for t in tables} == before
    added = remember(stats, raw, seed=0)
    assert added > 0 and {t: len(getattr(stats, t)) for t in tables} == {t: n + added for t, n in before.items()}
