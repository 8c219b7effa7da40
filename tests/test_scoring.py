import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories import road_frames

from anomaly.calibration import NormalStats
from anomaly.config import COSTLY_SIGNALS, costly_signals_computed
from anomaly.detector import Detector
from anomaly.frame_scores import FrameScores, combine, lone_signal_level
from anomaly.scoring import (
    RawSignals,
    gaussian_blur,
    pool_errors,
    row_changes,
    score_frames,
    score_prepared,
    signal_values,
    thumbnail,
)

# error_pool 4 on a 24x32 model input: cells of 4 px, stride 2 -> 11 x 15 cells; the heat map is per model pixel
CELLS = (11, 15)
MODEL_SIZE = (24, 32)
FIELDS = ("score", "recon_error", "spatial_score", "latent_score", "is_anomaly")


def with_square(frame: np.ndarray, cx: int, cy: int, side: int = 8) -> np.ndarray:
    """A bright square (an 'obstacle') centred at source pixel (cx, cy)."""
    out = frame.copy()
    out[cy - side // 2 : cy + side // 2, cx - side // 2 : cx + side // 2] = 255
    return out


@pytest.fixture
def detector(tiny_trained) -> Detector:
    return tiny_trained.detector


@pytest.fixture
def source_frames() -> np.ndarray:
    return road_frames(8, seed=7, size=(64, 48))  # BGR, like the training frames but unseen in training


def test_score_frames_equals_score_prepared_of_prepare(detector, source_frames):
    a = score_frames(detector, list(source_frames))
    b = score_prepared(detector, [detector.preprocessor.prepare(f) for f in source_frames])
    for name in (*FIELDS, "heatmap"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.threshold == b.threshold


def test_frame_scores_shapes_and_types(detector, source_frames):
    s = score_frames(detector, list(source_frames))
    assert isinstance(s, FrameScores)
    assert len(s) == 8
    for name in FIELDS:
        assert getattr(s, name).shape == (8,), name
    assert s.is_anomaly.dtype == bool
    assert s.heatmap.shape == (8, *MODEL_SIZE)
    assert s.threshold == detector.threshold
    assert np.isfinite(s.score).all()
    assert (s.recon_error >= 0).all() and (s.latent_score >= 0).all()
    every = score_frames(detector.with_all_signals(), list(source_frames))
    assert ((every.disc_score >= 0) & (every.disc_score <= 1)).all()


def test_the_discriminator_runs_only_when_a_signal_needs_it(detector, source_frames, monkeypatch):
    calls = []
    kind = type(detector.model.discriminator)
    original = kind.forward
    monkeypatch.setattr(kind, "forward", lambda self, x: calls.append(1) or original(self, x))
    score_frames(detector, list(source_frames[:2]))
    assert calls == []
    score_frames(detector.with_all_signals(), list(source_frames[:2]))
    assert calls == [1]


def test_scores_do_not_depend_on_the_batch(detector, source_frames):
    prepared = np.stack([detector.preprocessor.prepare(f) for f in source_frames])
    whole = score_prepared(detector, prepared)
    one = score_prepared(detector, prepared[3:4])
    np.testing.assert_allclose(one.score, whole.score[3:4], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one.heatmap, whole.heatmap[3:4], rtol=1e-4, atol=1e-4)


def test_is_anomaly_is_score_above_threshold(detector, source_frames):
    frames = [*source_frames, with_square(source_frames[0], 32, 34)]
    s = score_frames(detector, frames)
    np.testing.assert_array_equal(s.is_anomaly, s.score > s.threshold)


@pytest.mark.parametrize("centre", [(16, 16), (48, 32), (40, 12), (24, 36)])
def test_bright_square_raises_spatial_score_and_heatmap_peaks_on_it(detector, source_frames, centre):
    cx, cy = centre
    clean = source_frames[1]
    s = score_frames(detector, [clean, with_square(clean, cx, cy)])
    assert s.spatial_score[1] > s.spatial_score[0] + 1.0
    assert s.score[1] > s.score[0]
    # the hottest pixels are those of the hottest cell; the model is at half the source scale
    ys, xs = np.nonzero(s.heatmap[1] == s.heatmap[1].max())
    centre_x, centre_y = xs.mean() + 0.5, ys.mean() + 0.5
    assert abs(centre_x - cx / 2) <= 3
    assert abs(centre_y - cy / 2) <= 3


def test_with_threshold_changes_is_anomaly_only(detector, source_frames):
    frames = list(source_frames)
    base = score_frames(detector, frames)
    middle = float(np.median(base.score))
    moved = detector.with_threshold(middle)
    s = score_frames(moved, frames)
    for name in ("score", "recon_error", "spatial_score", "latent_score", "heatmap"):
        np.testing.assert_array_equal(getattr(s, name), getattr(base, name), err_msg=name)
    assert s.threshold == middle == moved.threshold
    np.testing.assert_array_equal(s.is_anomaly, base.score > middle)
    assert 0 < s.is_anomaly.sum() < len(frames)
    # the original detector is untouched
    assert detector.threshold == base.threshold
    assert moved.calibration.loc == detector.calibration.loc


def test_uncalibrated_detector_cannot_score(tiny_trained, source_frames):
    fresh = Detector.new(tiny_trained.config, torch.device("cpu"))
    with pytest.raises(ValueError, match="not been calibrated"):
        score_frames(fresh, list(source_frames[:1]))


def test_wrong_size_prepared_frames_are_rejected(detector):
    with pytest.raises(ValueError):
        score_prepared(detector, np.zeros((2, 48, 64, 3), np.uint8))


# --- the pieces ----------------------------------------------------------------------------------


def test_pool_errors_overlapping_cells():
    error = torch.arange(4 * 6, dtype=torch.float32).view(1, 4, 6)
    pooled = pool_errors(error, 2, 1)
    assert pooled.shape == (1, 3, 5)
    assert pooled[0, 0, 0].item() == pytest.approx((0 + 1 + 6 + 7) / 4)
    assert pool_errors(torch.ones(3, *MODEL_SIZE), 4, 2).shape == (3, *CELLS)
    assert pool_errors(torch.ones(3, *MODEL_SIZE), 40, 4).shape == (3, 1, 1)  # cells never exceed the frame


def test_signal_values_and_combine_by_hand():
    stats = NormalStats(
        cell_center=torch.tensor([[1.0, 1.0]]),
        cell_spread=torch.tensor([[0.5, 2.0]]),
        feature_mean=torch.tensor([1.0, -1.0]),
        feature_whitening=torch.tensor([[2.0], [0.0]]),  # one axis: the first feature, variance 1/4
    )
    raw = RawSignals(
        recon=torch.tensor([0.3]),
        error_cells=torch.tensor([[[2.0, 5.0]]]),
        features=torch.tensor([[2.0, 1.0]]),
        disc=torch.tensor([0.25]),
    )
    signals, heat = signal_values(raw, stats)
    torch.testing.assert_close(heat, torch.tensor([[[2.0, 2.0]]]))
    assert signals["spatial"].item() == pytest.approx(2.0)
    assert signals["latent"].item() == pytest.approx(2.0)  # (2 - 1) * 2; the second feature is off-axis
    assert signals["recon"].item() == pytest.approx(0.3)
    assert signals["disc"].item() == pytest.approx(0.25)

    values = {"spatial": np.array([2.0, 0.0]), "latent": np.array([1.0, 9.0])}
    score = combine(values, {"spatial": 1.0, "latent": 1.0}, {"spatial": 0.5, "latent": 4.0}, ["spatial", "latent"])
    np.testing.assert_allclose(score, [2.0, 2.0])  # max of (2, 0) and (-2, 2)
    np.testing.assert_allclose(combine(values, {"latent": 1.0}, {"latent": 4.0}, ["latent"]), [0.0, 2.0])


def one_cell_stats(**fields: torch.Tensor) -> NormalStats:
    """Statistics of one heat-map cell and one feature, plus `fields`: for testing a signal without a network."""
    return NormalStats(
        cell_center=torch.tensor([[1.0]]),
        cell_spread=torch.tensor([[1.0]]),
        feature_mean=torch.tensor([0.0]),
        feature_whitening=torch.tensor([[1.0]]),
        **fields,
    )


def one_cell_raw(n: int, **fields: torch.Tensor) -> RawSignals:
    """Raw signals of `n` frames with one cell and one feature, all zero, plus `fields`."""
    return RawSignals(recon=torch.zeros(n), error_cells=torch.zeros(n, 1, 1), features=torch.zeros(n, 1), **fields)


def test_pca_signal_is_the_mean_squared_residual_of_the_thumbnail_outside_the_normal_axes():
    stats = one_cell_stats(
        thumbnail_mean=torch.tensor([1.0, 1.0, 1.0, 1.0]),
        thumbnail_basis=torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]),  # one axis, one unused row
    )
    raw = one_cell_raw(3, thumbnail=torch.tensor([[5.0, 1.0, 1.0, 1.0], [1.0, 3.0, 1.0, 1.0], [9.0, 1.0, 0.0, 1.0]]))
    signals, _ = signal_values(raw, stats)
    # along the normal axis: nothing left; off it: the squared residual's mean over the 4 pixels
    torch.testing.assert_close(signals["pca"], torch.tensor([0.0, 1.0, 0.25]))
    before = dataclasses.replace(stats, thumbnail_mean=None, thumbnail_basis=None)  # calibrated before `pca`
    torch.testing.assert_close(signal_values(raw, before)[0]["pca"], torch.zeros(3))


def test_thumbnail_is_the_frame_averaged_over_blocks_about_the_width_asked_for():
    x = torch.randn(2, 3, 72, 128)
    torch.testing.assert_close(thumbnail(x, 64), F.avg_pool2d(x, 2).flatten(1))
    assert thumbnail(x, 32).shape == (2, 3 * 18 * 32)
    assert thumbnail(x, 500).shape == (2, 3 * 72 * 128)  # a frame narrower than asked: every pixel


def test_row_changes_are_the_mean_luminance_step_across_each_row_boundary():
    x = torch.zeros(1, 3, 4, 6)
    x[:, :, 2:, :3] = 1.0  # the lower half's left half steps up by 1 in every channel (luminance 1)
    torch.testing.assert_close(row_changes(x), torch.tensor([[0.0, 0.5, 0.0]]))


def test_tear_signal_is_the_worst_row_boundary_against_its_normal_range():
    stats = one_cell_stats(
        row_center=torch.tensor([0.1, 0.5, 0.1]),  # a horizon at the second boundary: normally a large step
        row_spread=torch.tensor([0.1, 0.4, 0.1]),
    )
    raw = one_cell_raw(2, row_changes=torch.tensor([[0.1, 0.9, 0.1], [0.1, 0.5, 0.6]]))
    # the horizon's step is within its range (z 1); the same step where rows are normally alike is a tear (z 5)
    torch.testing.assert_close(signal_values(raw, stats)[0]["tear"], torch.tensor([1.0, 5.0]))
    before = dataclasses.replace(stats, row_center=None, row_spread=None)  # calibrated before `tear`
    torch.testing.assert_close(signal_values(raw, before)[0]["tear"], torch.zeros(2))


def test_a_slice_of_rows_lost_by_the_decoder_raises_the_tear_signal(detector, source_frames):
    h = source_frames.shape[1]
    torn = source_frames.copy()
    torn[:, h // 2 : h // 2 + h // 8] = (60, 160, 90)  # BGR: the flat grey-green of a lost slice
    normal = score_frames(detector, source_frames).tear_score
    assert normal is not None and np.median(score_frames(detector, torn).tear_score) > np.max(normal)


def test_a_camera_rolled_in_its_mount_raises_the_pca_signal(detector, source_frames):
    h, w = source_frames.shape[1:3]
    roll = cv2.getRotationMatrix2D((w / 2, h / 2), 15, 1.4)  # rolled 15 degrees, zoomed so no pixel is made up
    rolled = np.stack([cv2.warpAffine(f, roll, (w, h)) for f in source_frames])
    normal = score_frames(detector, source_frames).pca_score
    assert normal is not None and np.median(score_frames(detector, rolled).pca_score) > 2 * np.median(normal)


def test_logmeanexp_lets_signals_raised_together_outweigh_one_raised_alone():
    names = ["spatial", "latent"]
    loc, scale = dict.fromkeys(names, 0.0), dict.fromkeys(names, 1.0)
    # frame 0: both signals at 2.5; frame 1: one at 3, the other at 0
    values = {"spatial": np.array([2.5, 3.0]), "latent": np.array([2.5, 0.0])}
    by_max = combine(values, loc, scale, names, "max")
    smooth = combine(values, loc, scale, names, "logmeanexp")
    assert by_max[1] > by_max[0]  # the maximum ranks the lone signal first
    assert smooth[0] > smooth[1]  # the log-mean-exp ranks the two raised together first
    np.testing.assert_allclose(smooth, [2.5, np.log((np.exp(3.0) + 1.0) / 2)])


def test_logmeanexp_lies_between_the_mean_and_the_maximum_and_does_not_overflow():
    rng = np.random.default_rng(0)
    names = ["spatial", "latent", "patch", "image", "defect_local"]
    z = rng.normal(0, 3, (5, 200))
    z[:, 0] = [800.0, 790.0, -5.0, 0.0, 1.0]  # exp(800) overflows float64 unless shifted first
    values = dict(zip(names, z, strict=True))
    loc, scale = dict.fromkeys(names, 0.0), dict.fromkeys(names, 1.0)
    smooth = combine(values, loc, scale, names, "logmeanexp")
    assert np.isfinite(smooth).all()
    assert (smooth <= z.max(0) + 1e-9).all() and (smooth >= z.mean(0) - 1e-9).all()
    equal = dict.fromkeys(names, np.full(3, 1.7))
    np.testing.assert_allclose(combine(equal, loc, scale, names, "logmeanexp"), 1.7)  # all alike: that value


@pytest.mark.parametrize("rule", ["max", "logmeanexp"])
def test_one_signal_at_its_lone_level_lifts_the_score_to_the_level_whatever_the_others_read(rule):
    names = ["spatial", "latent", "patch"]
    loc, scale = dict.fromkeys(names, 0.0), dict.fromkeys(names, 1.0)
    others = np.random.default_rng(1).normal(-3, 4, (2, 100))
    lone = lone_signal_level(4.0, rule, len(names))
    values = {"spatial": np.full(100, lone), "latent": others[0], "patch": others[1]}
    assert (combine(values, loc, scale, names, rule) >= 4.0 - 1e-9).all()
    floor = {"spatial": np.array([lone]), "latent": np.array([-1e6]), "patch": np.array([-1e6])}
    np.testing.assert_allclose(combine(floor, loc, scale, names, rule), 4.0)  # and no more than needed


def test_smoothing_drops_pixel_texture_but_keeps_an_object():
    x = torch.zeros(1, 3, 24, 32)
    texture = torch.ones(1, 3, 24, 32)
    texture[..., ::2, :] *= -1
    texture[..., :, ::2] *= -1  # a checkerboard: the kind of detail an autoencoder never reproduces
    obj = torch.zeros(1, 3, 24, 32)
    obj[..., 8:14, 10:16] = 1.0  # a 6x6 object the reconstruction lacks

    def blurred_error(recon):
        return (gaussian_blur(x, 1.0) - gaussian_blur(recon, 1.0)).pow(2).mean()

    def raw_error(recon):
        return (x - recon).pow(2).mean()

    assert blurred_error(x + texture) < 0.05 * raw_error(x + texture)
    assert blurred_error(x + obj) > 0.4 * raw_error(x + obj)
    assert torch.equal(gaussian_blur(x + texture, 0.0), x + texture)  # sigma 0: no blur


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7, 3.0])
def test_gaussian_blur_equals_torchvisions_bit_for_bit(sigma):
    """Checkpoints were calibrated with torchvision's blur; the core's own must give the same floats."""
    tv = pytest.importorskip("torchvision.transforms.v2.functional")
    x = torch.randn(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    size = 2 * math.ceil(2 * sigma) + 1
    assert torch.equal(gaussian_blur(x, sigma), tv.gaussian_blur(x.contiguous(), [size, size], [sigma, sigma]))


def test_costly_signals_are_computed_only_when_the_score_uses_them_or_all_are_asked_for(detector, source_frames):
    import dataclasses

    assert not COSTLY_SIGNALS & set(detector.calibrated.signals)
    lean = score_frames(detector, list(source_frames))
    full = score_frames(detector.with_all_signals(), list(source_frames))
    costly = ("patch_score", "local_score", "disc_score", "disc_patch_score")
    assert all(getattr(lean, name) is None for name in costly)  # empty CSV cells
    assert all(np.isfinite(getattr(full, name)).all() for name in costly)
    for name in (*FIELDS, "knn_score"):  # skipping them changes no other signal
        np.testing.assert_array_equal(getattr(lean, name), getattr(full, name), err_msg=name)
    # without `local` the heat map is the pooled one `spatial` reads: its worst pixel is the spatial score
    np.testing.assert_allclose(lean.heatmap.reshape(len(lean), -1).max(1), lean.spatial_score, rtol=1e-6)
    np.testing.assert_allclose(full.heatmap.reshape(len(full), -1).max(1), full.local_score, rtol=1e-6)
    for chosen in (("patch", "latent"), ("local", "latent"), ("disc", "latent"), ("disc_patch", "latent")):
        uses = detector.with_calibration(dataclasses.replace(detector.calibrated, signals=chosen))
        got = score_frames(uses, list(source_frames))
        np.testing.assert_array_equal(getattr(got, f"{chosen[0]}_score"), getattr(full, f"{chosen[0]}_score"))
    assert detector.with_all_signals().with_threshold(1.0).all_signals  # copies keep the choice


def test_the_costly_signals_computed_are_those_the_score_uses_and_the_discriminator_s_come_together():
    assert costly_signals_computed(("spatial", "latent"), False) == frozenset()
    assert costly_signals_computed(("spatial", "patch"), False) == {"patch"}
    assert costly_signals_computed(("latent", "disc_patch"), False) == {"disc", "disc_patch"}  # disc is free then
    assert costly_signals_computed(("latent",), True) == COSTLY_SIGNALS
