"""Statistics of normal frames, and the threshold that follows from them.

No single signal catches every anomaly (fog makes frames *easier* to reconstruct, a small object
barely moves the mean error), so scoring combines several. To combine them they must share a
scale, and that scale is learned here from normal frames only:

1. `fit_normal_stats`: the usual reconstruction error in each cell of the image (its median and
   its upper spread), and the main directions in which normal frames' encoder features vary.
   Scoring turns a frame into "how far beyond the normal range is its worst cell" and "how far
   is it from normal features along those directions".
2. `fit_scaling`: each signal's median and upper-tail spread, so that signals become comparable
   z-scores.
3. `anomaly.thresholds.threshold_for_rate`: the combined score's upper quantile at the target false-alarm rate
   (less each frame's scene level, `anomaly.scene_baseline`, where the profile has a scene baseline).

Statistics come from the training frames (many scenes, so they know how much roadside scenery
varies); scaling and threshold come from frames held out from training and later in time: the next
seconds of a drive look different from the last, and the networks reconstruct frames they were
trained on better than new ones, so a threshold from training frames would fire far more often
than promised. `anomaly.calibrate` does the fitting, after training and per camera.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch

from anomaly.config import Combination
from anomaly.frame_scores import combination_of
from anomaly.memory import coreset_indices, standardiser
from anomaly.scene_baseline import SceneBaseline

if TYPE_CHECKING:  # scoring imports this module: the type only
    from anomaly.scoring import RawSignals


@dataclass
class NormalStats:
    """What normal frames look like to the networks. The fields after the first four (the memory of
    normal frames and the discriminator's per-position statistics, see `anomaly.memory`) came with
    checkpoint format 4; a format-3 checkpoint has none and its signals that need them read 0."""

    cell_center: torch.Tensor  # h x w, median squared error of each cell on normal frames
    cell_spread: torch.Tensor  # h x w, upper quantile minus median (floored)
    feature_mean: torch.Tensor  # d
    feature_whitening: torch.Tensor  # d x k: projects centred features on k principal axes, unit variance each
    feature_center: torch.Tensor | None = None  # d, per-dimension mean of normal features (for the memory)
    feature_scale: torch.Tensor | None = None  # d, per-dimension standard deviation
    memory_features: torch.Tensor | None = None  # M x d standardised features of the memory's frames (a coreset)
    memory_cells: torch.Tensor | None = None  # M x h x w their heat-map cells
    disc_center: torch.Tensor | None = None  # h' x w', median of the discriminator's "not real" logit per position
    disc_spread: torch.Tensor | None = None  # h' x w', its upper quantile minus median (floored)
    patch_channel_center: torch.Tensor | None = None  # C, per-channel mean of the encoder's deepest feature map
    patch_channel_scale: torch.Tensor | None = None  # C, its per-channel standard deviation
    memory_patches: torch.Tensor | None = None  # M x C x h'' x w'' the memory frames' standardised feature maps
    patch_center: torch.Tensor | None = None  # h'' x w'', median patch distance per position on held-out frames
    patch_spread: torch.Tensor | None = None  # h'' x w'', its upper quantile minus median (floored)
    memory_image: torch.Tensor | None = None  # M x S x h x w the memory frames' own statistics per cell (`image`)
    image_floor: torch.Tensor | None = None  # S x h x w, the least spread each statistic's cell counts in
    # H/4 x W/4: what is taken off each cell of the defect finder's logits before their maximum; 0 from
    # calibration, raised by feedback (`anomaly.feedback`) where a confirmed-normal frame's cell was high
    defect_offset: torch.Tensor | None = None
    memory_defect: torch.Tensor | None = None  # M x H/4 x W/4 the memory frames' defect-finder logits (`defect_local`)
    defect_center: torch.Tensor | None = None  # H/4 x W/4, the median logit of each cell on normal frames
    thumbnail_mean: torch.Tensor | None = None  # D, the mean thumbnail of normal frames (`pca`)
    thumbnail_basis: torch.Tensor | None = None  # K x D, their leading principal axes (unit rows; zero rows unused)
    row_center: torch.Tensor | None = None  # H-1, the median change of luminance across each row boundary (`tear`)
    row_spread: torch.Tensor | None = None  # H-1, its upper quantile minus median (floored)

    FIELDS: ClassVar[tuple[str, ...]] = ("cell_center", "cell_spread", "feature_mean", "feature_whitening")

    HALF: ClassVar[tuple[str, ...]] = ("memory_patches",)  # stored in half precision: the bulk of the file

    @property
    def has_memory(self) -> bool:
        return self.memory_features is not None and self.memory_cells is not None

    @property
    def has_patch_memory(self) -> bool:
        return self.has_memory and self.memory_patches is not None and self.patch_channel_scale is not None

    @property
    def has_image_memory(self) -> bool:
        return self.has_rows(IMAGE_MEMORY)

    @property
    def has_defect_memory(self) -> bool:
        return self.has_rows(DEFECT_MEMORY)

    def has_rows(self, table: RowMemory) -> bool:
        """Whether the memory has this table, with its floor where it has one."""
        floor = table.floor is None or getattr(self, table.floor) is not None
        return self.has_memory and getattr(self, table.rows) is not None and floor

    @property
    def has_thumbnail_basis(self) -> bool:
        return self.thumbnail_mean is not None and self.thumbnail_basis is not None

    @property
    def has_row_range(self) -> bool:
        return self.row_center is not None and self.row_spread is not None

    @property
    def has_patch_range(self) -> bool:
        return self.has_patch_memory and self.patch_center is not None and self.patch_spread is not None

    def to_state(self) -> dict[str, torch.Tensor]:
        return {
            k: v.detach().cpu().half() if k in self.HALF else v.detach().cpu().float()
            for k, v in asdict(self).items()
            if v is not None
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> NormalStats:
        optional = [f.name for f in fields(cls) if f.name not in cls.FIELDS]
        return cls(
            **{k: state[k].float() for k in cls.FIELDS},
            **{k: state[k].float() for k in optional if k in state},
        )

    def to(self, device: torch.device) -> NormalStats:
        return NormalStats(**{k: None if v is None else v.to(device) for k, v in asdict(self).items()})


@dataclass
class Calibration:
    stats: NormalStats
    loc: dict[str, float]
    scale: dict[str, float]
    signals: tuple[str, ...]  # the signals whose z-scores make the score (stored as "combine")
    threshold: float
    target_false_alarm_rate: float
    n_frames: int
    score_quantiles: dict[str, float] = field(default_factory=dict)
    # false-alarm rate of each held-out source (or time block) at a threshold set without it
    holdout_false_alarms: dict[str, float] = field(default_factory=dict)
    combination: Combination = "max"  # how the z-scores make the score; "max" for profiles stored without it
    # the normal level of held-out frames like a frame's, taken off its score (`anomaly.scene_baseline`); None for a
    # camera profile, a model with one held-out source, or one calibrated before there was one
    scene: SceneBaseline | None = None

    def to_state(self) -> dict[str, Any]:
        scene = {} if self.scene is None else {"scene": tensors(self.scene.to_arrays())}
        return scene | {
            "stats": self.stats.to_state(),
            "loc": dict(self.loc),
            "scale": dict(self.scale),
            "combine": list(self.signals),
            "threshold": float(self.threshold),
            "target_false_alarm_rate": float(self.target_false_alarm_rate),
            "n_frames": int(self.n_frames),
            "score_quantiles": dict(self.score_quantiles),
            "holdout_false_alarms": dict(self.holdout_false_alarms),
            "combination": self.combination,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Calibration:
        return cls(
            stats=NormalStats.from_state(state["stats"]),
            loc={k: float(v) for k, v in state["loc"].items()},
            scale={k: float(v) for k, v in state["scale"].items()},
            signals=tuple(state["combine"]),
            threshold=float(state["threshold"]),
            target_false_alarm_rate=float(state["target_false_alarm_rate"]),
            n_frames=int(state["n_frames"]),
            score_quantiles={k: float(v) for k, v in state.get("score_quantiles", {}).items()},
            holdout_false_alarms={k: float(v) for k, v in state.get("holdout_false_alarms", {}).items()},
            combination=combination_of(state),
            scene=SceneBaseline.from_arrays(arrays(state["scene"])) if "scene" in state else None,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "target_false_alarm_rate": self.target_false_alarm_rate,
            "calibration_frames": self.n_frames,
            "signals": list(self.signals),
            "combination": self.combination,
            "score_quantiles": self.score_quantiles,
            "holdout_false_alarms": self.holdout_false_alarms,
            "scene_baseline": None if self.scene is None else {"frames": len(self.scene.scores), "k": self.scene.k},
        }


def tensors(named: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in named.items()}


def arrays(named: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in named.items()}


def fit_normal_stats(
    error_cells: torch.Tensor,
    features: torch.Tensor,
    *,
    cell_quantile: float = 0.99,
    spread_floor: float = 0.1,
    components: int = 8,
    disc_map: torch.Tensor | None = None,
    memory_size: int | None = None,
    patch_maps: torch.Tensor | None = None,
    image_cells: torch.Tensor | None = None,
    defect_map: torch.Tensor | None = None,
    thumbnails: torch.Tensor | None = None,
    row_changes: torch.Tensor | None = None,
    thumbnail_variance: float = 0.95,
    thumbnail_components: int = 64,
    seed: int = 0,
) -> NormalStats:
    """Per-cell error range and the principal axes of features, from normal frames.

    A cell's spread is its upper quantile minus its median rather than a standard deviation:
    roadside cells (trees, buildings passing by) have heavy-tailed errors, and a std would let
    their rare large errors dominate the heat map. The floor (a fraction of the median cell's
    spread) keeps a cell that always reconstructs perfectly (flat sky) from turning a tiny change
    into a huge score. The latent distance uses only the leading principal components: the
    trailing ones describe the training scenes rather than driving in general, and a full
    covariance made every new drive look anomalous.
    """
    if len(error_cells) < 2:
        raise ValueError("need at least two normal frames to fit statistics")
    cells = error_cells.double()
    center = cells.median(0).values
    spread = torch.quantile(cells.flatten(1), cell_quantile, dim=0).view_as(center) - center
    spread = torch.clamp(spread, min=spread_floor * float(spread.median()) + 1e-12)
    from sklearn.decomposition import PCA  # imported here: scoring needs the statistics, not their fitting

    feats = features.double().cpu().numpy()
    k = max(1, min(components, len(feats) - 1, feats.shape[1]))
    pca = PCA(n_components=k, whiten=True).fit(feats)
    whitening = pca.components_.T / np.sqrt(pca.explained_variance_ + 1e-12)
    stats = NormalStats(
        cell_center=center.float(),
        cell_spread=spread.float(),
        feature_mean=torch.from_numpy(pca.mean_).float(),
        feature_whitening=torch.from_numpy(whitening).float(),
    )
    if disc_map is not None:
        stats.disc_center, stats.disc_spread = position_stats(disc_map, cell_quantile, spread_floor)
    if row_changes is not None:
        stats.row_center, stats.row_spread = position_stats(row_changes, cell_quantile, spread_floor)
    if thumbnails is not None:
        stats.thumbnail_mean, stats.thumbnail_basis = thumbnail_axes(
            thumbnails, thumbnail_variance, thumbnail_components, seed
        )
    if memory_size is not None:
        stats.feature_center, stats.feature_scale = standardiser(features)
        standard = (features.float() - stats.feature_center) / stats.feature_scale
        keep = coreset_indices(standard, memory_size, seed=seed)
        stats.memory_features = standard[keep]
        if patch_maps is not None:
            # per-channel statistics in double precision, as the features': float sums over many
            # positions depend on the tensor's memory layout, and a sharded fit must match a single one
            maps = patch_maps.double()
            stats.patch_channel_center = maps.mean(dim=(0, 2, 3)).float()
            scale = maps.std(dim=(0, 2, 3)) if len(maps) > 1 else torch.ones(maps.shape[1], dtype=maps.dtype)
            stats.patch_channel_scale = torch.clamp(scale, min=1e-3 * float(scale.median()) + 1e-6).float()
            stats.memory_patches = stored_patches(standard_patches(patch_maps[keep], stats))
        per_frame = {"error_cells": error_cells, "image_cells": image_cells, "defect_map": defect_map}
        for table in ROW_MEMORIES:
            if (values := per_frame[table.raw]) is not None:
                setattr(stats, table.rows, values[keep].float())
                if table.floor is not None and table.fit_floor is not None:
                    setattr(stats, table.floor, table.fit_floor(values))
    return stats


def thumbnail_axes(
    thumbnails: torch.Tensor, variance: float, components: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of normal thumbnails (N x D) and their leading principal axes, as many as explain
    `variance` of their variance and at most `components`, as the rows of a `components` x D matrix
    (the rest zero: every profile's basis has one shape, which an exported graph needs).

    The rule of the PCA baseline (`evaluation.baselines.PCABaseline`): the trailing axes would describe the
    training scenes pixel by pixel, and a residual outside them would call every new drive anomalous.
    """
    from sklearn.decomposition import PCA  # imported here: scoring needs the axes, not their fitting

    x = thumbnails.float().cpu().numpy()
    k = max(1, min(components, len(x) - 1, x.shape[1]))
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(x)
    keep = min(k, int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), variance)) + 1)
    basis = torch.zeros(components, x.shape[1])
    basis[:keep] = torch.from_numpy(pca.components_[:keep]).float()
    return torch.from_numpy(pca.mean_).float(), basis


def defect_center(defect_map: torch.Tensor) -> torch.Tensor:
    """Each cell's median defect-finder logit over normal frames (N x h x w -> h x w): the least that
    `defect_local` measures a cell against. After training it comes from held-out frames (see
    `anomaly.calibrate.calibrate`): the finder was trained on the memory's frames and marks less on them
    than on frames it never saw (offline on the fleet, small objects 0.80 with the training frames'
    median against 0.84 with the held-out frames')."""
    return defect_map.float().median(0).values


def image_floor(image_cells: torch.Tensor) -> torch.Tensor:
    """Per statistic and cell, half the normal frames' own inter-decile half-range: the least spread a
    cell's value counts in, so that neighbours which happen to agree exactly (a flat sky) do not turn a
    tiny change into a huge `image` score."""
    flat = image_cells.double().flatten(1)
    upper, lower = torch.quantile(flat, 0.9, dim=0), torch.quantile(flat, 0.1, dim=0)
    return (0.25 * (upper - lower) + 1e-6).float().view_as(image_cells[0])


class RowMemory(NamedTuple):
    """One of the memory's tables with a row per memory frame, kept as the scorer gives it (no
    standardising, unlike the features and the patch maps): the `NormalStats` field of its rows, the
    `RawSignals` field they are taken from, and the statistic fitted beside them from all the normal
    frames (its floor), which goes with them when they are dropped. Fitting, merging a camera's frames
    with the fleet's (`anomaly.calibrate.with_fleet_memory`) and remembering confirmed-normal frames
    (`anomaly.feedback.remember`) walk this table, so every table keeps one row per memory frame."""

    rows: str
    raw: str
    floor: str | None = None
    fit_floor: Callable[[torch.Tensor], torch.Tensor] | None = None


CELL_MEMORY = RowMemory("memory_cells", "error_cells")
IMAGE_MEMORY = RowMemory("memory_image", "image_cells", "image_floor", image_floor)
DEFECT_MEMORY = RowMemory("memory_defect", "defect_map", "defect_center", defect_center)
ROW_MEMORIES = (CELL_MEMORY, IMAGE_MEMORY, DEFECT_MEMORY)


def refit_floors(stats: NormalStats, frames: RawSignals, rows: torch.Tensor | None = None) -> None:
    """Each table's floor from these normal frames (`rows` of them, or all), where `stats` has the table."""
    for table in ROW_MEMORIES:
        values = getattr(frames, table.raw)
        if table.floor is not None and table.fit_floor is not None and values is not None and stats.has_rows(table):
            setattr(stats, table.floor, table.fit_floor(values if rows is None else values[rows]))


def stored_patches(patches: torch.Tensor) -> torch.Tensor:
    """Patches rounded as the checkpoint stores them (half precision), so a saved model scores as the fitted one."""
    return patches.half().float()


def standard_patches(maps: torch.Tensor, stats: NormalStats) -> torch.Tensor:
    """Feature maps (N x C x h x w) with each channel standardised as the memory's are."""
    assert stats.patch_channel_center is not None and stats.patch_channel_scale is not None
    center = stats.patch_channel_center.to(maps.device).view(1, -1, 1, 1)
    scale = stats.patch_channel_scale.to(maps.device).view(1, -1, 1, 1)
    return ((maps.float() - center) / scale).contiguous()  # one memory layout: float sums depend on it


def position_stats(maps: torch.Tensor, quantile: float, spread_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position median and upper spread (quantile - median, floored) of N x h x w maps (or N x L rows)
    of normal frames."""
    m = maps.double()
    center = m.median(0).values
    spread = torch.quantile(m.flatten(1), quantile, dim=0).view_as(center) - center
    spread = torch.clamp(spread, min=spread_floor * float(spread.median()) + 1e-12)
    return center.float(), spread.float()


def fit_scaling(signals: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, float]]:
    """Median and upper-tail spread ((95th percentile - median) / 1.645) of each signal on normal frames.

    The score is a (smooth) maximum of several z-scores, so what must be comparable between signals is how
    far their normal frames reach *upwards*: scaled by the upper tail, each signal puts about as
    many normal frames above a given score. (For a Gaussian this is its standard deviation.) A scale
    from the central spread instead let a signal with a long normal tail dominate the combination.
    """
    loc, scale = {}, {}
    for name, values in signals.items():
        v = np.asarray(values, dtype=np.float64)
        q50, q95 = np.percentile(v, [50, 95])
        spread = (q95 - q50) / 1.645
        if spread <= 0:
            spread = float(v.std()) or 1e-6
        loc[name], scale[name] = float(q50), float(spread)
    return loc, scale


def score_quantiles(scores: np.ndarray) -> dict[str, float]:
    q = np.quantile(np.asarray(scores, dtype=np.float64), [0.5, 0.9, 0.99, 1.0])
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": float(q[3])}
