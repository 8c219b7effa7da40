"""Camera profiles: a camera's own normal statistics and threshold, fitted without retraining.

Every camera sees the road differently (mounting height, lens, bonnet in view, colour grading,
compression), so what is normal for one camera's cells, features and patches is not normal for
another's. `anomaly calibrate` runs the trained networks over a few minutes of a camera's normal
footage and fits, for that camera only:

- the pooled per-cell error range, the latent axes and the discriminator's per-position range;
- a memory of its frames (a coreset), added to the fleet memory from training, so a frame is
  measured against the normal frames it resembles, from this camera or any other;
- signal scales and the threshold.

The threshold must come from frames the statistics did not see, or it promises fewer false
alarms than a new drive gets. With only minutes of footage there is none to spare, so the fit is
cross-fitted: each source is cut into `camera_blocks` contiguous time blocks, each block is scored
with statistics fit on all the other blocks, and the scales and threshold come from those
out-of-block scores. The statistics kept are then fit on all blocks. The false-alarm rate of each
block at a threshold set without it is reported, as training does per held-out source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import torch

from anomaly.calibration import Calibration, NormalStats
from anomaly.detector import Detector
from anomaly.memory import coreset_indices
from anomaly.scoring import RawSignals, signal_values
from anomaly.training.train import calibration_from_signals, collect_raw, evenly_index, fit_stats


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
    return RawSignals(
        **{f.name: None if getattr(raw, f.name) is None else getattr(raw, f.name)[idx] for f in fields(RawSignals)}
    )


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
    stats.memory_features = torch.cat([fleet.memory_features.cpu(), own[keep]])
    stats.memory_cells = torch.cat([fleet.memory_cells.cpu(), stats.memory_cells[keep]])
    stats.feature_center, stats.feature_scale = fleet.feature_center, fleet.feature_scale
    return stats


def fit_camera_profile(
    detector: Detector, per_source: Sequence[np.ndarray], *, names: Sequence[str] | None = None
) -> Calibration:
    """A calibration for one camera from its normal footage (prepared frames per source, in time order)."""
    cfg = detector.config.calibration
    seed = detector.config.train.seed
    fleet = detector.for_camera(None).calibrated.stats
    lengths = [len(f) for f in per_source]
    if sum(lengths) < 8:
        raise ValueError(f"only {sum(lengths)} frames of the camera: give at least 8 (a minute of footage is better)")
    frames = np.concatenate(list(per_source))
    block = time_blocks(lengths, cfg.camera_blocks)
    keep = evenly_index(len(frames), max(cfg.max_stat_frames, 10))
    frames, block = frames[keep], block[keep]
    detector.model.eval()
    raw = collect_raw(detector, frames)

    def fit(mask: np.ndarray) -> NormalStats:
        return with_fleet_memory(fit_stats(select(raw, mask), cfg, seed=seed), fleet, cfg.memory_size, seed)

    pooled: dict[str, list[np.ndarray]] = {}
    order = []
    for b in np.unique(block):
        inside = block == b
        if (~inside).sum() < 2:
            continue
        values, _ = signal_values(select(raw, inside), fit(~inside), cfg)
        for name, v in values.items():
            pooled.setdefault(name, []).append(v.numpy().astype(np.float64))
        order.append(np.full(int(inside.sum()), b))
    if not order:
        raise ValueError("too few frames to cross-fit the camera's threshold; give longer footage")
    signals = {name: np.concatenate(v) for name, v in pooled.items()}
    groups = np.concatenate(order)
    source_names = list(names) if names else [f"source {i + 1}" for i in range(len(per_source))]
    block_names = []
    for i, n in enumerate(lengths):
        k = max(1, min(cfg.camera_blocks, n // 2))
        block_names += [f"{source_names[i]} block {j + 1}/{k}" for j in range(k)]
    # groups are block ids; report each block under its name
    return calibration_from_signals(fit(np.ones(len(frames), bool)), signals, cfg, groups, tuple(block_names))
