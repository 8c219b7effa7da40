"""The memory of normal frames: coreset bounds, and scores that respect several kinds of normal."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly.calibrate import fit_patch_range
from anomaly.calibration import NormalStats, fit_normal_stats
from anomaly.config import CalibrationConfig
from anomaly.memory import (
    coreset_indices,
    mean_distance,
    nearest,
    neighbour_cell_scores,
    neighbour_deviations,
    patch_distances,
    standardiser,
    upper_quantile,
)
from anomaly.scoring import (
    IMAGE_STATISTICS,
    RawSignals,
    defect_local_signal,
    image_cell_statistics,
    signal_values,
)


@pytest.mark.parametrize(("n", "size"), [(50, 1), (50, 10), (50, 49), (50, 50), (50, 500), (1, 3)])
def test_coreset_size_is_bounded_and_indices_are_distinct(n, size):
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))
    idx = coreset_indices(x, size, seed=3)
    assert len(idx) == min(n, size)
    assert len(set(idx.tolist())) == len(idx) and int(idx.min()) >= 0 and int(idx.max()) < n


def test_coreset_is_deterministic_and_covers_rare_points():
    g = torch.Generator().manual_seed(1)
    common = torch.randn(500, 4, generator=g) * 0.1
    rare = torch.tensor([[10.0, 0, 0, 0], [0, -10.0, 0, 0]])  # two rare kinds of normal frame
    x = torch.cat([common, rare])
    idx = coreset_indices(x, 8, seed=0)
    assert torch.equal(idx, coreset_indices(x, 8, seed=0))
    assert {500, 501} <= set(idx.tolist())  # a random subset of 8 would almost surely miss them
    # every point lies within the covering radius of a chosen one, which is far below the data's extent
    radius = torch.cdist(x, x[idx]).min(1).values.max()
    assert radius < 0.5


def test_coreset_rejects_size_zero():
    with pytest.raises(ValueError, match="at least 1"):
        coreset_indices(torch.zeros(3, 2), 0)


def test_nearest_and_knn_distance():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    dist, idx = nearest(torch.tensor([[0.9, 0.0]]), bank, 2)
    assert idx.tolist() == [[1, 0]]
    torch.testing.assert_close(dist, torch.tensor([[0.1, 0.9]]))
    dist, _ = nearest(torch.tensor([[0.9, 0.0]]), bank, 2)
    assert mean_distance(dist, 2).item() == pytest.approx(0.5 / 2**0.5)
    assert nearest(torch.zeros(1, 2), bank, 10)[0].shape == (1, 3)  # k capped by the bank


def test_standardiser_floors_constant_dimensions():
    f = torch.tensor([[1.0, 5.0, 0.0], [3.0, 5.0, 2.0], [2.0, 5.0, 4.0]])
    mean, std = standardiser(f)
    torch.testing.assert_close(mean, torch.tensor([2.0, 5.0, 2.0]))
    assert std[1] > 0


def two_cameras(n: int, seed: int):
    """Two clusters of normal frames: camera A (features near +5, its left cell noisy, right cell quiet) and
    camera B (features near -5, the other way round)."""
    g = torch.Generator().manual_seed(seed)
    half = n // 2
    feats = torch.randn(n, 2, generator=g) * 0.3
    feats[:half, 0] += 5.0
    feats[half:, 0] -= 5.0
    cells = torch.empty(n, 1, 2)
    cells[:half, 0, 0] = torch.rand(half, generator=g) * 10
    cells[:half, 0, 1] = torch.rand(half, generator=g) * 0.1
    cells[half:, 0, 0] = torch.rand(n - half, generator=g) * 0.1
    cells[half:, 0, 1] = torch.rand(n - half, generator=g) * 10
    return feats, cells


def raw(feats, cells, patches=None):
    n = len(feats)
    return RawSignals(
        recon=torch.zeros(n), error_cells=cells, features=feats, disc=torch.zeros(n), patch_features=patches
    )


def test_two_cluster_normal_set_pooled_statistics_fail_and_the_memory_succeeds():
    cfg = CalibrationConfig(memory_size=200, knn_k=5, local_neighbours=20, local_floor=0.0)
    train_f, train_c = two_cameras(400, seed=0)
    stats = fit_normal_stats(train_c, train_f, components=2, memory_size=cfg.memory_size, spread_floor=0.0)
    assert len(stats.memory_features) == 200

    normal_f, normal_c = two_cameras(100, seed=1)
    # a new kind of picture halfway between the cameras (say a camera knocked to face the road): near the pooled mean
    g = torch.Generator().manual_seed(2)
    between_f = torch.randn(50, 2, generator=g) * 0.3
    between_c = normal_c[:50].clone()
    # camera A frames with camera B's kind of error in A's quiet cell (an object where A never errs)
    local_f = normal_f[:50].clone()
    local_c = normal_c[:50].clone()
    local_c[:, 0, 1] = 2.0 + torch.rand(50, generator=g)

    s_normal, _ = signal_values(raw(normal_f, normal_c), stats, cfg)
    s_between, _ = signal_values(raw(between_f, between_c), stats, cfg)
    s_local, heat = signal_values(raw(local_f, local_c), stats, cfg)

    def auc(normal, anomalous):
        return roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], np.r_[normal, anomalous])

    # pooled: the Gaussian latent distance puts the in-between frames *closer* than normal ones,
    # and the pooled cell range (wide because of camera B) swallows the error in A's quiet cell
    assert auc(s_normal["latent"], s_between["latent"]) < 0.2
    assert auc(s_normal["spatial"], s_local["spatial"]) < 0.8
    # the memory: both separated
    assert auc(s_normal["knn"], s_between["knn"]) > 0.99
    assert auc(s_normal["local"], s_local["local"]) > 0.99
    assert heat.shape == local_c.shape and (heat[:, 0, 1] > heat[:, 0, 0]).all()  # the heat map points at the cell


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_patch_distances_match_a_brute_force_search(shift):
    g = torch.Generator().manual_seed(shift)
    query, neighbours = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 2, 4, 5, 6, generator=g)
    got = patch_distances(query, neighbours, shift)
    want = torch.full((3, 5, 6), float("inf"))
    for n in range(3):
        for y in range(5):
            for x in range(6):
                for k in range(2):
                    for dy in range(-shift, shift + 1):
                        for dx in range(-shift, shift + 1):
                            yy, xx = min(max(y + dy, 0), 4), min(max(x + dx, 0), 5)  # edges replicate
                            d = (query[n, :, y, x] - neighbours[n, k, :, yy, xx]).pow(2).sum()
                            want[n, y, x] = torch.minimum(want[n, y, x], d)
    torch.testing.assert_close(got, want)


def two_cameras_with_patches(n: int, seed: int):
    """Camera A (features near +5) always shows pattern P at the top-left position, camera B (near -5)
    pattern Q there; the other positions are noise common to both."""
    g = torch.Generator().manual_seed(seed)
    feats, cells = two_cameras(n, seed)
    maps = torch.randn(n, 3, 2, 2, generator=g) * 0.1
    half = n // 2
    maps[:half, :, 0, 0] += torch.tensor([3.0, 0.0, 0.0])
    maps[half:, :, 0, 0] += torch.tensor([0.0, 3.0, 0.0])
    return feats, cells, maps


def test_patch_signal_measures_a_patch_against_similar_frames_not_the_whole_fleet():
    train_f, train_c, train_m = two_cameras_with_patches(400, seed=0)
    held_f, held_c, held_m = two_cameras_with_patches(100, seed=1)
    normal_f, normal_c, normal_m = two_cameras_with_patches(100, seed=2)
    # camera A frames showing camera B's pattern where A never does (normal somewhere in the fleet, not here)
    odd_m = normal_m[:50].clone()
    odd_m[:, :, 0, 0] = normal_m[50:, :, 0, 0]

    def scores(cfg: CalibrationConfig):
        stats = fit_normal_stats(train_c, train_f, components=2, memory_size=cfg.memory_size, patch_maps=train_m)
        fit_patch_range(stats, raw(held_f, held_c, held_m), cfg)
        normal = signal_values(raw(normal_f, normal_c, normal_m), stats, cfg)[0]["patch"]
        odd = signal_values(raw(normal_f[:50], normal_c[:50], odd_m), stats, cfg)[0]["patch"]
        return roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(odd))], np.r_[normal, odd])

    similar = CalibrationConfig(memory_size=200, patch_neighbours=10, patch_shift=0)
    whole_fleet = CalibrationConfig(memory_size=200, patch_neighbours=200, patch_shift=0)
    assert scores(whole_fleet) < 0.7  # some normal frame of the fleet shows that patch there
    assert scores(similar) > 0.99  # no frame like this one does


def test_patch_memory_round_trips_in_half_precision_and_older_statistics_score_patch_zero():
    f, c, m = two_cameras_with_patches(60, seed=0)
    cfg = CalibrationConfig(memory_size=20)
    stats = fit_normal_stats(c, f, components=2, memory_size=cfg.memory_size, patch_maps=m)
    fit_patch_range(stats, raw(f, c, m), cfg)
    state = stats.to_state()
    assert state["memory_patches"].dtype == torch.float16 and state["memory_patches"].shape == (20, 3, 2, 2)
    back = NormalStats.from_state(state)
    assert back.has_patch_range and back.memory_patches.dtype == torch.float32
    s_back = signal_values(raw(f, c, m), back, cfg)[0]["patch"]
    torch.testing.assert_close(s_back, signal_values(raw(f, c, m), stats, cfg)[0]["patch"], atol=0.05, rtol=0.01)
    older = {k: v for k, v in state.items() if "patch" not in k}  # a format-4 model from before the signal
    assert (signal_values(raw(f, c, m), NormalStats.from_state(older), cfg)[0]["patch"] == 0).all()


def test_neighbour_deviations_count_a_drop_as_much_as_a_rise():
    neighbours = torch.tensor([4.0, 6.0] * 5).view(1, 10, 1, 1).expand(4, 10, 1, 1)  # mean 5
    spread = float(neighbours[0].std())
    cells = torch.tensor([5.0 + spread, 5.0 - spread, 5.0, 5.0 + 3 * spread]).view(4, 1, 1)
    z = neighbour_deviations(cells, neighbours, torch.zeros(1, 1))
    torch.testing.assert_close(z.flatten(), torch.tensor([1.0, 1.0, 0.0, 3.0]))
    # a drop is what one-sided scores miss: they read it as normal (negative)
    one_sided = neighbour_cell_scores(cells, neighbours, quantile=0.9, spread_floor=torch.zeros(1, 1))
    assert one_sided.flatten()[1] < 0
    # neighbours that agree exactly: the floor sets the unit
    floored = neighbour_deviations(cells, torch.full((4, 10, 1, 1), 5.0), torch.full((1, 1), 2.0))
    torch.testing.assert_close(floored.flatten(), (cells.flatten() - 5.0).abs() / 2.0)


def test_neighbour_deviations_with_a_shift_forgive_a_step_of_misalignment_but_not_an_object():
    gen = torch.Generator().manual_seed(0)
    neighbours = 0.1 * torch.randn(1, 8, 1, 6, generator=gen)
    neighbours[..., 2] += 10.0  # every neighbour has a marking at column 2
    cells = torch.zeros(1, 1, 6)
    cells[..., 3] = 10.0  # this frame has it one step right
    cells[..., 5] = 10.0  # and something at column 5 that none of them had near there
    floor = torch.full((1, 6), 0.5)
    plain = neighbour_deviations(cells, neighbours, floor).flatten()
    beside = neighbour_deviations(cells, neighbours, floor, shift=1).flatten()
    assert plain[3] > 10 and plain[5] > 10
    assert beside[3] < 1.0  # matched by the neighbours' column 2
    assert beside[5] == pytest.approx(float(plain[5]), rel=0.1)  # column 4 had nothing either
    assert torch.all(beside <= plain)  # never more than without the shift
    # at the edge, a cell beyond the map is no match: column 0 against columns 0 and 1 only
    edge = torch.zeros(1, 1, 6)
    edge[..., 0] = 10.0
    assert neighbour_deviations(edge, neighbours, floor, shift=1).flatten()[0] > 10


def test_image_cell_statistics_measure_colour_contrast_and_edges_per_cell():
    x = torch.zeros(2, 3, 16, 16)
    x[1, :, :, 8:] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # frame 1: its right half red
    x[1, :, ::2, 8:] += 0.5  # and striped there
    stats = image_cell_statistics(x, cell=8, stride=8)
    assert stats.shape == (2, len(IMAGE_STATISTICS), 2, 2)
    assert torch.all(stats[0] == 0)  # a flat frame: no colour, contrast or edges anywhere
    left, right = stats[1, :, :, 0], stats[1, :, :, 1]
    assert torch.all(left[:4] == 0)
    red, green, contrast, edges = (IMAGE_STATISTICS.index(k) for k in ("red", "green", "contrast", "edges"))
    assert torch.all(right[red] > right[green]) and torch.all(right[contrast] > 0) and torch.all(right[edges] > 0)


def test_the_image_signal_finds_a_smear_that_pooled_statistics_and_the_error_map_cannot():
    """Camera A's right cell is always textured, camera B's always flat; a smear that flattens A's right
    cell looks like B to any pooled range and leaves no reconstruction error, but not to A's own frames."""
    # two cells a whole cell apart (real cells overlap, 2 pixels a step): no matching the cell beside
    cfg = CalibrationConfig(memory_size=300, local_neighbours=20, image_shift=0)

    def frames(n: int, seed: int, smear: bool = False):
        g = torch.Generator().manual_seed(seed)
        feats, cells = two_cameras(n, seed)
        image = torch.rand(n, len(IMAGE_STATISTICS), 1, 2, generator=g) * 0.1
        image[: n // 2, :, 0, 1] += 1.0  # camera A (the first half): texture in the right cell
        if smear:
            image[:, :, 0, 1] = torch.rand(n, len(IMAGE_STATISTICS), generator=g) * 0.1
        return RawSignals(
            recon=torch.zeros(n), error_cells=cells * 0, features=feats, disc=torch.zeros(n), image_cells=image
        )

    train = frames(400, 0)
    stats = fit_normal_stats(
        train.error_cells, train.features, components=2, memory_size=cfg.memory_size, image_cells=train.image_cells
    )
    assert stats.has_image_memory and stats.memory_image.shape == (300, len(IMAGE_STATISTICS), 1, 2)
    normal, smeared = frames(100, 1), frames(100, 2, smear=True)
    a = slice(0, 50)  # the smear on camera A's frames only
    s_normal, _ = signal_values(normal, stats, cfg)
    s_smeared, _ = signal_values(smeared, stats, cfg)

    def auc(n, m):
        return roc_auc_score(np.r_[np.zeros(len(n)), np.ones(len(m))], np.r_[n, m])

    assert auc(s_normal["image"], s_smeared["image"][a]) > 0.99
    # what pooled per-cell ranges of the statistics would say: within the fleet's range (camera B's), unseen
    pooled_low = train.image_cells[:, :, 0, 1].amin(0)
    assert torch.all(smeared.image_cells[a, :, 0, 1] >= pooled_low)
    assert auc(s_normal["spatial"], s_smeared["spatial"][a]) < 0.7  # no reconstruction error to see


def test_old_statistics_without_an_image_memory_read_zero():
    feats, cells = two_cameras(40, 0)
    stats = fit_normal_stats(cells, feats, components=2, memory_size=20)  # as calibrated before `image`
    assert not stats.has_image_memory
    values, _ = signal_values(raw(feats, cells), stats, CalibrationConfig(local_neighbours=5, knn_k=3))
    assert torch.all(values["image"] == 0)


def test_defect_local_measures_each_cell_above_the_neighbours_quantile_or_the_cell_median():
    neighbours = torch.arange(10.0).view(1, 10, 1, 1).expand(4, 10, 1, 2).clone()  # 0..9 in both cells
    center = torch.tensor([[0.0, 20.0]])  # the right cell's median over normal frames is above its neighbours
    maps = torch.tensor([[[9.1, 0.0]], [[0.0, 25.0]], [[3.0, 0.0]], [[12.0, 12.0]]])
    got = defect_local_signal(maps, None, neighbours, center, quantile=0.9)
    # the left cell counts above the neighbours' 0.9 quantile (8.1), the right one above its median (20),
    # which is higher there: 12 in the right cell is above every neighbour and still normal
    torch.testing.assert_close(got, torch.tensor([9.1 - 8.1, 25.0 - 20.0, 3.0 - 8.1, 12.0 - 8.1]))
    # feedback's offsets lower the frame's cells before the comparison, as for `defect`
    offset = torch.tensor([[1.0, 0.0]])
    lowered = defect_local_signal(maps, offset, neighbours, center, quantile=0.9)
    torch.testing.assert_close(lowered, torch.tensor([0.0, 5.0, -6.1, 2.9]))


def test_defect_local_finds_what_is_normal_for_one_camera_but_never_for_the_other():
    """Camera A always shows something the defect finder marks in its right cell (a mascot on the
    bonnet), camera B never; the same mark in a frame of B is an anomaly, which the finder's plain
    maximum cannot tell from A's normal frames but the cell against the frame's own neighbours can."""
    cfg = CalibrationConfig(memory_size=300, local_neighbours=20)

    def frames(n: int, seed: int, marked: bool = False):
        g = torch.Generator().manual_seed(seed)
        feats, cells = two_cameras(n, seed)
        maps = torch.randn(n, 1, 2, generator=g) * 0.3 - 4.0  # clean: low logits everywhere
        maps[: n // 2, 0, 1] += 7.0  # camera A (the first half): its mascot in the right cell
        if marked:
            maps[:, 0, 1] = 3.0 + torch.randn(n, generator=g) * 0.3
        return RawSignals(recon=torch.zeros(n), error_cells=cells, features=feats, defect_map=maps)

    train = frames(400, 0)
    stats = fit_normal_stats(
        train.error_cells, train.features, components=2, memory_size=cfg.memory_size, defect_map=train.defect_map
    )
    assert stats.has_defect_memory and stats.memory_defect.shape == (300, 1, 2)
    normal, marked = frames(100, 1), frames(100, 2, marked=True)
    b = slice(50, 100)  # the mark on camera B's frames
    s_normal, _ = signal_values(normal, stats, cfg)
    s_marked, _ = signal_values(marked, stats, cfg)

    def auc(n, m):
        return roc_auc_score(np.r_[np.zeros(len(n)), np.ones(len(m))], np.r_[n, m])

    assert auc(s_normal["defect_local"], s_marked["defect_local"][b]) > 0.99
    a = slice(0, 50)  # camera A's normal frames are as high as the mark: the plain maximum cannot tell
    assert auc(s_normal["defect"][a], s_marked["defect"][b]) < 0.7


def test_old_statistics_without_a_defect_memory_read_zero():
    feats, cells = two_cameras(40, 0)
    stats = fit_normal_stats(cells, feats, components=2, memory_size=20)  # as calibrated before `defect_local`
    assert not stats.has_defect_memory
    maps = torch.zeros(40, 1, 2)
    values, _ = signal_values(
        RawSignals(recon=torch.zeros(40), error_cells=cells, features=feats, defect_map=maps),
        stats,
        CalibrationConfig(local_neighbours=5, knn_k=3),
    )
    assert torch.all(values["defect_local"] == 0)


@pytest.mark.parametrize(("k", "q"), [(30, 0.9), (30, 0.5), (10, 0.9), (11, 0.9), (5, 0.99), (1, 0.9)])
def test_upper_quantile_is_torch_quantile_from_the_largest_values_only(k, q):
    values = torch.randn(3, k, 4, 5, generator=torch.Generator().manual_seed(k))
    torch.testing.assert_close(upper_quantile(values, q, dim=1), torch.quantile(values, q, dim=1))
