"""Fitting a detector's calibration: the trained networks run over normal frames, then statistics, signal
scales and a threshold are fitted from what they give.

Two fits share this code. After training (`calibrate`), statistics come from the training frames and
scales and threshold from the held-out tail of each source, which the networks never saw. For a
camera (`fit_camera_profile`, `anomaly calibrate`), from a few minutes of its normal footage:

- the pooled per-cell error range, the latent axes and the discriminator's per-position range;
- a memory of its frames (a coreset), added to the fleet memory from training, so a frame is
  measured against the normal frames it resembles, from this camera or any other;
- signal scales and the threshold.

The threshold must come from frames the statistics did not see, or it promises fewer false
alarms than a new drive gets. With only minutes of footage there is none to spare, so the fit is
cross-fitted: with two or more sources each whole source is scored with statistics fit on the
others (a drive never seen, as training holds out whole sources); one source is cut into
`camera_blocks` contiguous time blocks, each scored with statistics fit on the other blocks. The
scales and threshold come from those scores, and the statistics kept are then fit on everything.
The false-alarm rate of each source (or block) at a threshold set without it is reported. On real
footage whole sources matter: a camera calibrated on the first halves of two of its drives flagged
35% of their second halves with time blocks and 26.5% with whole sources (benchmarks/fleet_eval.py).

A few minutes of one camera also show less variety than its drives will (a car waiting at a junction
shows almost none), and ranges and scales fitted on them alone are as narrow as those minutes: a
profile calibrated on two minutes of waiting flagged 20-25% of the same camera's later driving. So a
camera profile is never narrower than the fleet it joins (`no_narrower_than_fleet`): no per-position
normal range below the fleet's, no signal's scale below the fleet's, except the two measured along the
camera's own principal axes (`latent`, `pca`), whose unit is the camera's. Its medians, axes, memory
and threshold stay its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch

from anomaly.calibration import (
    ROW_MEMORIES,
    Calibration,
    NormalStats,
    fit_normal_stats,
    fit_scaling,
    position_stats,
    refit_floors,
    score_quantiles,
    standard_patches,
    stored_patches,
)
from anomaly.config import FINDER_SIGNALS, CalibrationConfig
from anomaly.detector import Detector
from anomaly.frame_scores import combine
from anomaly.memory import coreset_indices
from anomaly.scene_baseline import fit_scene_baseline
from anomaly.scoring import RawSignals, patch_distance_maps, patch_signal, raw_signals, signal_values
from anomaly.thresholds import threshold_for_rate
from anomaly.training.distributed import SINGLE_PROCESS, DistributedContext, all_gather_rows, shard

if TYPE_CHECKING:
    from anomaly.training.train import TrainingData


def collect_raw(detector: Detector, frames: np.ndarray, batch_size: int = 128) -> RawSignals:
    """Raw signals for many prepared frames, gathered on the CPU (a signal's network that the model
    lacks, the defect finder of a format-4 model, stays None)."""
    parts = []
    for i in range(0, len(frames), batch_size):
        x = detector.preprocessor.to_tensor(frames[i : i + batch_size], detector.device)
        r = raw_signals(detector.net, x, detector.config.calibration)
        parts.append({f.name: getattr(r, f.name) for f in fields(RawSignals)})
    return RawSignals(
        **{name: None if parts[0][name] is None else torch.cat([p[name].cpu() for p in parts]) for name in parts[0]}
    )


def collect_raw_sharded(detector: Detector, frames: np.ndarray, context: DistributedContext) -> RawSignals:
    """`collect_raw` of all `frames` on every rank, each rank computing only its shard."""
    if len(frames) < context.world_size:  # too few to split: every rank computes them all
        return collect_raw(detector, frames)
    return collect_raw(detector, shard(frames, context)).map(lambda rows: all_gather_rows(rows, context))


def evenly_index(n: int, limit: int) -> np.ndarray:
    """At most `limit` indices of `n` items, spread evenly from the first to the last."""
    if n <= limit:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).round().astype(int)


def fit_stats(raw: RawSignals, cfg: CalibrationConfig, seed: int = 0) -> NormalStats:
    """`fit_normal_stats` with the settings of `cfg`: pooled statistics, patch statistics and the memory;
    and, with a defect finder, its cells' offsets (none yet: feedback raises them)."""
    stats = fit_normal_stats(
        raw.error_cells,
        raw.features,
        cell_quantile=cfg.cell_quantile,
        spread_floor=cfg.spread_floor,
        components=cfg.latent_components,
        disc_map=raw.disc_map,
        memory_size=cfg.memory_size,
        patch_maps=raw.patch_features,
        image_cells=raw.image_cells,
        defect_map=raw.defect_map,
        thumbnails=raw.thumbnail,
        row_changes=raw.row_changes,
        thumbnail_variance=cfg.thumbnail_variance,
        thumbnail_components=cfg.thumbnail_components,
        seed=seed,
    )
    if raw.defect_map is not None:
        stats.defect_offset = torch.zeros_like(raw.defect_map[0], dtype=torch.float32)
    return stats


def fit_patch_range(stats: NormalStats, held: RawSignals, cfg: CalibrationConfig) -> None:
    """Give `stats` the per-position range of the patch distances of `held`, frames the memory does not hold.

    The memory's own frames are at distance 0 from themselves, so the range must come from other
    frames. Nothing to fit when the statistics hold no patch memory.
    """
    maps = patch_distance_maps(held, stats, cfg)
    if maps is not None:
        stats.patch_center, stats.patch_spread = position_stats(maps, cfg.patch_quantile, cfg.patch_floor)


@dataclass(frozen=True)
class KnownDriveFrames:
    """Held-out frames as the statistics kept score them (later stretches of drives they know): every
    signal, and the summary features the scene baseline finds similar frames by."""

    signals: dict[str, np.ndarray]
    features: np.ndarray  # N x d


def held_out_false_alarms(
    scores: np.ndarray, groups: np.ndarray, names: tuple[str, ...], rate: float
) -> dict[str, float]:
    """Per held-out group: the share of its frames above a threshold set on the *other* groups' scores.

    What a new drive (or a new stretch of a drive) will see, where the threshold from all groups
    would count each group's frames in its own threshold. One group alone: its in-sample rate.
    """
    out = {}
    for g, name in enumerate(names):
        mine = groups == g
        if not mine.any():
            continue
        others = scores[~mine] if (~mine).any() else scores
        out[name] = float((scores[mine] > threshold_for_rate(others, rate)).mean())
    return out


def calibration_from_signals(
    stats: NormalStats,
    signals: dict[str, np.ndarray],
    cfg: CalibrationConfig,
    groups: np.ndarray | None = None,
    names: tuple[str, ...] = (),
    scale_floor: dict[str, float] | None = None,
    known: KnownDriveFrames | None = None,
) -> Calibration:
    """Signal scales and the threshold from signals of normal frames that `stats` were not fit on; no
    signal's scale below its `scale_floor` (a camera profile's: the fleet's, see the module's docstring).
    With `known` (the same frames scored by `stats` as later stretches of known drives), and the config's
    `scene_baseline`, a scene baseline of them (`anomaly.scene_baseline`), taken off the scores the threshold is set on
    as it is off every score: each frame's level among the other sources' frames."""
    loc, scale = fit_scaling(signals)
    if scale_floor:
        scale = {name: max(v, scale_floor.get(name, 0.0)) for name, v in scale.items()}
    scores = combine(signals, loc, scale, cfg.signals, cfg.combination)
    scene = None
    if known is not None and groups is not None and cfg.scene_baseline and stats.feature_center is not None:
        assert stats.feature_scale is not None  # set with the center
        own = combine(known.signals, loc, scale, cfg.signals, cfg.combination)
        center, spread = stats.feature_center.cpu().numpy(), stats.feature_scale.cpu().numpy()
        scene = fit_scene_baseline(center, spread, known.features, own, groups)
        if scene is not None:
            scores = scores - scene.leave_group_out_levels(groups)
    far = {} if groups is None else held_out_false_alarms(scores, groups, names, cfg.target_false_alarm_rate)
    return Calibration(
        stats=stats,
        loc=loc,
        scale=scale,
        signals=tuple(cfg.signals),
        threshold=threshold_for_rate(scores, cfg.target_false_alarm_rate),
        target_false_alarm_rate=cfg.target_false_alarm_rate,
        n_frames=len(scores),
        score_quantiles=score_quantiles(scores),
        holdout_false_alarms=far,
        combination=cfg.combination,
        scene=scene,
    )


def check_signals_available(detector: Detector) -> None:
    """Refuse a score that reads a signal whose network the model lacks (it would read 0 on every frame)."""
    wanted = sorted(FINDER_SIGNALS & set(detector.config.calibration.signals))
    if wanted and detector.model.finder is None:
        need = "signal needs" if len(wanted) == 1 else "signals need"
        raise ValueError(
            f"the {' and '.join(wanted)} {need} a defect finder, which this model has not got (trained without "
            f"one, or before it existed): choose --signals without {', '.join(wanted)}, or retrain"
        )


def calibrate(detector: Detector, data: TrainingData, context: DistributedContext = SINGLE_PROCESS) -> Calibration:
    """Normal statistics from training frames; signal scales and threshold from held-out frames.

    The held-out frames are scored as new frames will be: by networks that never saw them and, with
    two or more held-out sources, by statistics fitted without their source at all
    (`signals_of_unseen_sources`), so the scales and the threshold are those of a drive the model
    has never seen and the false-alarm rate carries over to new drives. With one source, by the
    statistics kept (a later stretch of the one drive).
    """
    check_signals_available(detector)
    cfg = detector.config.calibration
    seed = detector.config.train.seed
    detector.model.eval()
    seen_at = evenly_index(len(data.train), cfg.max_stat_frames)
    seen = collect_raw_sharded(detector, data.train[seen_at], context)
    stats = fit_stats(seen, cfg, seed=seed)
    keep = evenly_index(len(data.holdout), cfg.max_stat_frames)
    held = collect_raw_sharded(detector, data.holdout[keep], context)
    fit_patch_range(stats, held, cfg)
    groups = None if data.holdout_groups is None else data.holdout_groups[keep]
    signals = None
    if groups is not None and data.train_groups is not None:
        signals = signals_of_unseen_sources(stats, seen, data.train_groups[seen_at], held, groups, cfg, seed)
    if signals is not None:
        refit_floors(stats, held)  # as each fold's: from held-out frames (see there)
    if signals is None:  # one held-out source: scored as a later stretch of it, no scene baseline
        own = known_drive_frames(held, stats, cfg).signals
        return calibration_from_signals(stats, own, cfg, groups, data.holdout_sources)
    known = known_drive_frames(held, stats, cfg) if cfg.scene_baseline else None  # unused without a baseline
    return calibration_from_signals(stats, signals, cfg, groups, data.holdout_sources, known=known)


def known_drive_frames(held: RawSignals, stats: NormalStats, cfg: CalibrationConfig) -> KnownDriveFrames:
    """The held-out frames scored by the statistics kept, as later stretches of drives they know."""
    values, _ = signal_values(held, stats, cfg)
    return KnownDriveFrames({name: v.numpy().astype(np.float64) for name, v in values.items()}, held.features.numpy())


def signals_of_unseen_sources(
    stats: NormalStats,
    seen: RawSignals,
    seen_groups: np.ndarray,
    held: RawSignals,
    held_groups: np.ndarray,
    cfg: CalibrationConfig,
    seed: int,
) -> dict[str, np.ndarray] | None:
    """Every signal of each held-out frame, scored with statistics (cell ranges, latent axes, memory)
    fitted on the training frames of the *other* sources only; None with fewer than two sources.

    The next minutes of a drive the statistics know look far more normal than a drive they never
    saw: on real fleet footage a signal's spread over unseen drives was up to 2.5 times its spread
    over later stretches of known ones (`spatial`), and by how much differs from signal to signal.
    Scales fitted on these values weigh each signal by how far its normal range carries to a new
    drive, so the one that carries worst (new scenery for `patch`, a wet road for `spatial`) no
    longer makes the score alone. The per-position patch range stays the one fitted on all sources;
    the `image` floor and the defect finder's cell medians come from the *other* sources' held-out
    frames, so no frame sets both its own floor and the threshold.
    """
    names = np.unique(held_groups)
    if len(names) < 2 or any(int((seen_groups != g).sum()) < 2 for g in names):
        return None
    out: dict[str, np.ndarray] = {}
    for g in names:
        fold = fit_stats(select(seen, seen_groups != g), cfg, seed=seed)
        fold.patch_center, fold.patch_spread = stats.patch_center, stats.patch_spread
        mine = held_groups == g
        refit_floors(fold, held, torch.from_numpy(~mine))
        values, _ = signal_values(select(held, mine), fold, cfg)
        for name, v in values.items():
            out.setdefault(name, np.zeros(len(held_groups)))[mine] = v.numpy()
    return out


def time_blocks(lengths: Sequence[int], blocks: int) -> np.ndarray:
    """Per frame of the concatenated sources, a block id: each source cut into up to `blocks` runs in time."""
    ids, next_id = [], 0
    for n in lengths:
        k = max(1, min(blocks, n // 2))
        ids.append(next_id + np.minimum(np.arange(n) * k // max(n, 1), k - 1))
        next_id += k
    return np.concatenate(ids) if ids else np.zeros(0, int)


def select(raw: RawSignals, mask: np.ndarray) -> RawSignals:
    idx = torch.from_numpy(np.flatnonzero(mask))
    return raw.map(lambda rows: rows[idx])


def with_fleet_memory(stats: NormalStats, fleet: NormalStats, limit: int, seed: int) -> NormalStats:
    """`stats` whose memory is the fleet memory plus (a coreset of) this camera's frames.

    The camera's features are standardised like the fleet memory's, so one distance serves both.
    """
    if not fleet.has_memory or not stats.has_memory:
        return stats
    assert fleet.memory_features is not None and fleet.memory_cells is not None
    assert stats.memory_features is not None and stats.memory_cells is not None
    assert stats.feature_center is not None and stats.feature_scale is not None
    # re-standardise this camera's memory frames with the fleet's scale
    raw_feats = stats.memory_features * stats.feature_scale + stats.feature_center
    own = (raw_feats - fleet.feature_center) / fleet.feature_scale
    keep = coreset_indices(own, limit, seed=seed)
    if fleet.has_patch_memory and stats.has_patch_memory:
        assert fleet.memory_patches is not None and stats.memory_patches is not None
        assert stats.patch_channel_center is not None and stats.patch_channel_scale is not None
        own_maps = stats.memory_patches[keep].float() * stats.patch_channel_scale.view(1, -1, 1, 1)
        own_maps = own_maps + stats.patch_channel_center.view(1, -1, 1, 1)
        stats.patch_channel_center, stats.patch_channel_scale = fleet.patch_channel_center, fleet.patch_channel_scale
        own_patches = stored_patches(standard_patches(own_maps, stats))
        stats.memory_patches = torch.cat([fleet.memory_patches.cpu().float(), own_patches])
    else:  # rows of the patch memory must match the merged memory's: without both, no patch memory
        stats.memory_patches = stats.patch_channel_center = stats.patch_channel_scale = None
    for table in ROW_MEMORIES:
        if fleet.has_rows(table) and stats.has_rows(table):
            setattr(stats, table.rows, torch.cat([getattr(fleet, table.rows).cpu(), getattr(stats, table.rows)[keep]]))
        else:  # as for the patch memory: its rows must match the merged memory's
            setattr(stats, table.rows, None)
            if table.floor is not None:
                setattr(stats, table.floor, None)
    stats.memory_features = torch.cat([fleet.memory_features.cpu(), own[keep]])
    stats.feature_center, stats.feature_scale = fleet.feature_center, fleet.feature_scale
    return stats


# Signals measured along principal axes fitted on the profile's own frames (of the summary features, of the
# thumbnails): a camera's unit for them is its own, and the fleet's scale says nothing about it.
OWN_AXES_SIGNALS = frozenset({"latent", "pca"})
# The per-position normal ranges of `NormalStats`, each in the units of what it ranges over (a cell's
# error, a logit, a patch distance, a step of luminance, a cell statistic), whichever profile fitted it.
FLEET_FLOORED_RANGES = ("cell_spread", "disc_spread", "patch_spread", "row_spread", "image_floor")


def no_narrower_than_fleet(stats: NormalStats, fleet: NormalStats) -> NormalStats:
    """`stats` with each per-position normal range at least the fleet's (where both have it): the
    fleet's ranges come from hours of many drives, a camera's from its few minutes."""
    for name in FLEET_FLOORED_RANGES:
        mine, theirs = getattr(stats, name), getattr(fleet, name)
        if mine is not None and theirs is not None and mine.shape == theirs.shape:
            setattr(stats, name, torch.maximum(mine, theirs.to(mine.device, mine.dtype)))
    return stats


def fit_camera_profile(
    detector: Detector, per_source: Sequence[np.ndarray], *, names: Sequence[str] | None = None
) -> Calibration:
    """A calibration for one camera from its normal footage (prepared frames per source, in time order)."""
    check_signals_available(detector)
    cfg = detector.config.calibration
    seed = detector.config.train.seed
    fleet = detector.for_camera(None).calibrated.stats
    lengths = [len(f) for f in per_source]
    if sum(lengths) < 8:
        raise ValueError(f"only {sum(lengths)} frames of the camera: give at least 8 (a minute of footage is better)")
    frames = np.concatenate(list(per_source))
    whole = len(lengths) > 1  # whole sources held out, as training holds out whole drives; one: time blocks
    block = np.repeat(np.arange(len(lengths)), lengths) if whole else time_blocks(lengths, cfg.camera_blocks)
    keep = evenly_index(len(frames), max(cfg.max_stat_frames, 10))
    frames, block = frames[keep], block[keep]
    detector.model.eval()
    raw = collect_raw(detector, frames)

    def fit(mask: np.ndarray) -> NormalStats:
        stats = with_fleet_memory(fit_stats(select(raw, mask), cfg, seed=seed), fleet, cfg.memory_size, seed)
        return no_narrower_than_fleet(stats, fleet)

    pooled: dict[str, list[np.ndarray]] = {}
    order, patch_maps = [], []
    for b in np.unique(block):
        inside = block == b
        if (~inside).sum() < 2:
            continue
        held, stats = select(raw, inside), fit(~inside)
        patch_maps += [m for m in [patch_distance_maps(held, stats, cfg)] if m is not None]
        values, _ = signal_values(held, stats, cfg)  # `patch` reads 0 here: its range needs every block's maps
        for name, v in values.items():
            pooled.setdefault(name, []).append(v.numpy().astype(np.float64))
        order.append(np.full(int(inside.sum()), b))
    if not order:
        raise ValueError("too few frames to cross-fit the camera's threshold; give longer footage")
    final = fit(np.ones(len(frames), bool))
    if patch_maps and final.has_patch_memory:
        # the per-position range from every block's out-of-block distances, then each block's patch signal
        all_maps = torch.cat(patch_maps)
        final.patch_center, final.patch_spread = position_stats(all_maps, cfg.patch_quantile, cfg.patch_floor)
        no_narrower_than_fleet(final, fleet)
        pooled["patch"] = [patch_signal(m, final).numpy().astype(np.float64) for m in patch_maps]
    signals = {name: np.concatenate(v) for name, v in pooled.items()}
    groups = np.concatenate(order)
    source_names = list(names) if names else [f"source {i + 1}" for i in range(len(per_source))]
    if whole:
        block_names = source_names
    else:
        k = max(1, min(cfg.camera_blocks, lengths[0] // 2))  # as `time_blocks` cuts the one source
        block_names = [f"{source_names[0]} block {j + 1}/{k}" for j in range(k)]
    fleet_scale = detector.for_camera(None).calibrated.scale
    floor = {name: v for name, v in fleet_scale.items() if name not in OWN_AXES_SIGNALS}
    # groups are block ids; report each block under its name
    return calibration_from_signals(final, signals, cfg, groups, tuple(block_names), scale_floor=floor)
