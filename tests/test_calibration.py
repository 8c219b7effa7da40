import dataclasses
import io

import numpy as np
import pytest
import torch
from factories import N

from anomaly.calibration import (
    Calibration,
    NormalStats,
    fit_normal_stats,
    fit_scaling,
    score_quantiles,
    thumbnail_axes,
)

# --- fit_scaling ---------------------------------------------------------------------------------


def test_fit_scaling_standard_normal_is_about_zero_and_one():
    loc, scale = fit_scaling({"a": np.random.default_rng(0).standard_normal(N)})
    assert loc["a"] == pytest.approx(0.0, abs=0.03)
    assert scale["a"] == pytest.approx(1.0, abs=0.03)


def test_fit_scaling_is_median_and_upper_tail_over_1645():
    values = np.r_[np.arange(1.0, 41.0), 1000.0, -500.0]  # the two extremes move neither figure
    loc, scale = fit_scaling({"x": values, "shifted": 10 * values + 7})
    q50, q95 = np.percentile(values, [50, 95])
    assert loc["x"] == pytest.approx(q50)
    assert scale["x"] == pytest.approx((q95 - q50) / 1.645)
    assert scale["x"] < 15  # not pulled up by the 1000
    assert loc["shifted"] == pytest.approx(10 * q50 + 7)
    assert scale["shifted"] == pytest.approx(10 * scale["x"])
    assert set(loc) == set(scale) == {"x", "shifted"}


def test_fit_scaling_gives_signals_with_different_tails_the_same_false_alarm_share():
    rng = np.random.default_rng(5)
    signals = {"gaussian": rng.normal(0.0, 1.0, N), "long_tail": rng.exponential(1.0, N)}
    loc, scale = fit_scaling(signals)
    for name, v in signals.items():
        z = (v - loc[name]) / scale[name]
        assert (z > 1.645).mean() == pytest.approx(0.05, abs=0.005), name


def test_fit_scaling_zero_spread_falls_back_to_std_then_tiny():
    mostly_zero = np.zeros(100)
    mostly_zero[:3] = 10.0
    loc, scale = fit_scaling({"spiky": mostly_zero, "flat": np.full(10, 4.0)})
    assert loc["spiky"] == 0.0
    assert scale["spiky"] == pytest.approx(mostly_zero.std())
    assert loc["flat"] == 4.0
    assert scale["flat"] == pytest.approx(1e-6)


# --- fit_normal_stats ----------------------------------------------------------------------------


def test_fit_normal_stats_cell_range_and_floor():
    gen = torch.Generator().manual_seed(0)
    cells = torch.rand(200, 3, 3, generator=gen) * torch.linspace(0.5, 2.0, 9).view(3, 3)
    cells[:, 0, 0] = 0.25  # a cell that is always reconstructed exactly as well (flat sky)
    stats = fit_normal_stats(cells, torch.randn(200, 5, generator=gen), cell_quantile=0.9, spread_floor=0.1)
    flat = cells.double().flatten(1)
    center = flat.median(0).values
    spread = torch.quantile(flat, 0.9, dim=0) - center
    floor = 0.1 * float(spread.median())
    assert float(stats.cell_spread[0, 0]) == pytest.approx(floor, rel=1e-5)
    torch.testing.assert_close(stats.cell_spread.flatten()[1:], spread.float()[1:])
    torch.testing.assert_close(stats.cell_center.flatten(), center.float())
    assert stats.cell_center.dtype == stats.cell_spread.dtype == torch.float32


def test_heavy_tailed_cells_get_a_wide_range_without_their_outliers_dominating():
    gen = torch.Generator().manual_seed(3)
    cells = torch.rand(400, 1, 2, generator=gen) * 0.1 + 1.0
    cells[::50, 0, 1] = 50.0  # a roadside cell that rarely shows a huge error (a tree passing by)
    stats = fit_normal_stats(cells, torch.randn(400, 3, generator=gen), cell_quantile=0.95)
    # 2% outliers do not reach the 95th percentile: the spread stays that of the usual frames
    assert float(stats.cell_spread[0, 1]) < 0.2


def test_fit_normal_stats_features_whiten_the_leading_axes():
    gen = torch.Generator().manual_seed(1)
    scales = torch.tensor([5.0, 3.0, 1.0, 0.1, 0.1, 0.1])
    feats = torch.randn(2000, 6, generator=gen) * scales + torch.arange(6.0)
    stats = fit_normal_stats(torch.rand(2000, 2, 2, generator=gen), feats, components=2)
    torch.testing.assert_close(stats.feature_mean, feats.mean(0), rtol=1e-4, atol=1e-4)
    w = stats.feature_whitening
    assert w.shape == (6, 2)
    projected = (feats - stats.feature_mean) @ w
    torch.testing.assert_close(projected.var(0), torch.ones(2), rtol=0.05, atol=0.05)
    # the two axes are the two widest features
    assert set(w.abs().argmax(0).tolist()) == {0, 1}


def test_fit_normal_stats_caps_components_by_frames():
    stats = fit_normal_stats(torch.rand(4, 2, 2), torch.randn(4, 10), components=8)
    assert stats.feature_whitening.shape == (10, 3)


def test_thumbnail_axes_keep_the_axes_that_explain_the_variance_as_unit_rows_padded_with_zeros():
    gen = torch.Generator().manual_seed(2)
    # three directions of 40-pixel thumbnails carry nearly all the variance, the rest is faint noise
    directions = torch.linalg.qr(torch.randn(40, 3, generator=gen)).Q.T
    x = (torch.randn(500, 3, generator=gen) * torch.tensor([6.0, 4.0, 3.0])) @ directions
    x = x + 0.01 * torch.randn(500, 40, generator=gen) + 0.5
    mean, basis = thumbnail_axes(x, variance=0.95, components=8)
    assert basis.shape == (8, 40)
    kept = basis.norm(dim=1)
    torch.testing.assert_close(kept[:3], torch.ones(3), atol=1e-4, rtol=0)
    assert kept[3:].abs().max() == 0  # one shape for every profile: the unused rows are zero
    torch.testing.assert_close(basis[:3] @ basis[:3].T, torch.eye(3), atol=1e-4, rtol=0)
    # the kept axes span the three directions: projecting on them leaves only the noise
    residual = directions - (directions @ basis.T) @ basis
    assert residual.norm(dim=1).max() < 0.01
    torch.testing.assert_close(mean, x.mean(0), atol=1e-4, rtol=0)
    # a larger share of the variance takes the noise axes too, up to the cap
    assert (thumbnail_axes(x, variance=1.0, components=8)[1].norm(dim=1) > 0.5).sum() == 8


def test_thumbnail_axes_of_few_frames_are_capped_by_the_frames():
    _, basis = thumbnail_axes(torch.rand(4, 30), variance=1.0, components=16)
    assert basis.shape == (16, 30)
    assert int((basis.norm(dim=1) > 0.5).sum()) == 3


def test_fit_normal_stats_fits_thumbnail_axes_only_when_given_thumbnails():
    cells, feats = torch.rand(20, 2, 2), torch.randn(20, 4)
    assert not fit_normal_stats(cells, feats).has_thumbnail_basis
    stats = fit_normal_stats(cells, feats, thumbnails=torch.rand(20, 12), thumbnail_components=5)
    assert stats.has_thumbnail_basis and stats.thumbnail_basis.shape == (5, 12)
    back = NormalStats.from_state(stats.to_state())
    torch.testing.assert_close(back.thumbnail_basis, stats.thumbnail_basis)
    state = stats.to_state()
    del state["thumbnail_mean"], state["thumbnail_basis"]  # a model calibrated before the pca signal
    assert not NormalStats.from_state(state).has_thumbnail_basis


def test_fit_normal_stats_fits_each_row_boundary_s_range_when_given_row_changes():
    gen = torch.Generator().manual_seed(3)
    rows = torch.rand(200, 5, generator=gen) * torch.tensor([1.0, 1.0, 4.0, 1.0, 1.0])  # a wide boundary: a horizon
    stats = fit_normal_stats(torch.rand(200, 2, 2), torch.randn(200, 4), row_changes=rows)
    assert stats.has_row_range and stats.row_center.shape == (5,) and stats.row_spread.shape == (5,)
    torch.testing.assert_close(stats.row_center, rows.median(0).values)
    assert stats.row_spread[2] > 3 * stats.row_spread[[0, 1, 3, 4]].max()
    assert not fit_normal_stats(torch.rand(20, 2, 2), torch.randn(20, 4)).has_row_range


def test_fit_normal_stats_needs_two_frames():
    with pytest.raises(ValueError, match="at least two"):
        fit_normal_stats(torch.rand(1, 2, 2), torch.rand(1, 3))


# --- Calibration state ---------------------------------------------------------------------------


def make_calibration() -> Calibration:
    gen = torch.Generator().manual_seed(0)
    stats = NormalStats(
        cell_center=torch.rand(11, 15, generator=gen),
        cell_spread=torch.rand(11, 15, generator=gen) + 0.1,
        feature_mean=torch.randn(7, generator=gen),
        feature_whitening=torch.randn(7, 3, generator=gen),
    )
    return Calibration(
        stats=stats,
        loc={"spatial": 1.5, "latent": 3.25},
        scale={"spatial": 0.5, "latent": 2.0},
        signals=("spatial", "latent"),
        threshold=4.75,
        target_false_alarm_rate=0.02,
        n_frames=123,
        score_quantiles={"p50": 0.1, "p90": 1.0, "p99": 3.0, "max": 5.0},
    )


def assert_same_calibration(a: Calibration, b: Calibration) -> None:
    for k in NormalStats.FIELDS:
        torch.testing.assert_close(getattr(a.stats, k), getattr(b.stats, k), rtol=0, atol=0)
    assert (a.loc, a.scale, a.signals, a.threshold, a.combination) == (
        b.loc,
        b.scale,
        b.signals,
        b.threshold,
        b.combination,
    )
    assert (a.target_false_alarm_rate, a.n_frames, a.score_quantiles) == (
        b.target_false_alarm_rate,
        b.n_frames,
        b.score_quantiles,
    )


def test_calibration_state_round_trip():
    cal = make_calibration()
    back = Calibration.from_state(cal.to_state())
    assert_same_calibration(cal, back)
    assert isinstance(back.signals, tuple)


def test_calibration_state_survives_a_weights_only_torch_load():
    cal = make_calibration()
    buf = io.BytesIO()
    torch.save(cal.to_state(), buf)
    buf.seek(0)
    assert_same_calibration(cal, Calibration.from_state(torch.load(buf, weights_only=True)))


def test_calibration_state_keeps_its_combination_and_an_old_one_reads_max():
    cal = dataclasses.replace(make_calibration(), combination="logmeanexp")
    assert Calibration.from_state(cal.to_state()).combination == "logmeanexp"
    state = cal.to_state()
    del state["combination"]  # stored before there was a choice: those were all calibrated with the maximum
    assert Calibration.from_state(state).combination == "max"
    with pytest.raises(ValueError, match="unknown score combination 'median'"):
        Calibration.from_state({**cal.to_state(), "combination": "median"})


def test_calibration_state_without_quantiles_loads():
    state = make_calibration().to_state()
    del state["score_quantiles"]
    assert Calibration.from_state(state).score_quantiles == {}


def test_normal_stats_state_is_float32_on_cpu():
    stats = make_calibration().stats
    stats.cell_center = stats.cell_center.double()
    state = stats.to_state()
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    assert NormalStats.from_state(state).cell_center.dtype == torch.float32


def test_summary():
    s = make_calibration().summary()
    assert s["threshold"] == 4.75
    assert s["calibration_frames"] == 123
    assert s["signals"] == ["spatial", "latent"]


def test_score_quantiles():
    q = score_quantiles(np.arange(101.0))
    assert q == pytest.approx({"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0})
