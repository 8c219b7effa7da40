"""Folding an analyst's verdicts into a profile's normal statistics, without retraining the networks.

A stretch the analyst marked normal is, by definition, inside the camera's normal range. Each signal
of the score is given the smallest change to its normal statistics that takes those frames to a
margin below the threshold, and nothing else moves:

- `spatial` (and `disc_patch`, and `tear` per row boundary): a cell's normal range is its upper quantile
  minus its median on normal frames. Only the cells where a confirmed-normal frame went beyond the
  target are widened, just enough to cover it: a bridge's shadow in the upper left stops counting
  there, an object on the road ahead still counts in its own cells.
- `latent`: the Gaussian over the principal axes gains variance along the directions the confirmed
  frames lie in (in whitened coordinates, C = I + beta * Z'Z / n), beta the smallest that brings them
  to the target (found by bisection): the other directions keep their range.
- `defect`: the defect finder's cells are lowered (an offset per cell, taken off its logits) where a
  confirmed-normal frame went beyond the target, just enough: a sticker on the windscreen stops
  counting in its own cells, a smear elsewhere still counts.
- `pca`: the thumbnail's normal axes gain the leading directions of the confirmed frames' residuals,
  one at a time until those frames are at the target, in the basis's unused rows (a profile keeps at
  most `thumbnail_components` axes): the layout of an overpass stops counting, the other directions in
  which a frame can leave the normal layouts still count.
- the memory (`knn`, `local`, `patch`, `image`, `defect_local`): the frames join it, so frames like them
  find a close neighbour.

`recon` and `disc` are one number per frame against one range, so there is no local change to make:
they are left alone and reported. The threshold stays what calibration set.

Confirmed anomalies come first: a cell is never widened so far that the cell which lifted a
confirmed anomaly's stretch above the threshold falls below it (5% margin), and the latent
variance grows no more than keeps such a stretch above it. A false alarm that shares its cells
with a confirmed anomaly is then only partly folded, and says so. Every reviewed stretch is
rescored with the folded profile; the caller must not save one that would still miss a confirmed
anomaly (through a signal this cannot protect) without saying so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from anomaly.calibration import ROW_MEMORIES, Calibration, NormalStats, standard_patches, stored_patches
from anomaly.detector import Detector
from anomaly.frame_scores import lone_signal_level
from anomaly.memory import coreset_indices
from anomaly.profiles import FLEET
from anomaly.scoring import RawSignals, pca_signal, thumbnail_residual

WIDENED = ("spatial", "disc_patch", "tear", "latent", "defect", "pca")  # signals whose statistics feedback widens
REMEMBERED = ("knn", "local", "patch", "image", "defect_local")  # signals that read the memory the frames join
UNCHANGED = ("recon", "disc")  # one value per frame against one range: nothing local to change
# The signals read as the worst position of a map against a per-position range: the signal, its map in
# `RawSignals`, and the `NormalStats` fields of the range's centre and spread, which feedback widens.
POSITION_RANGES = (
    ("spatial", "error_cells", "cell_center", "cell_spread"),
    ("disc_patch", "disc_map", "disc_center", "disc_spread"),
    ("tear", "row_changes", "row_center", "row_spread"),
)
MAX_REMEMBERED = 500  # confirmed-normal frames added to the memory (a coreset of them beyond this)
PROTECT = 1.05  # a confirmed anomaly's strongest cell or frame is kept 5% above the threshold


@dataclass
class StretchOutcome:
    """One reviewed stretch before and after folding: is any of its frames above the threshold?"""

    index: int
    flagged_before: bool
    flagged_after: bool
    peak_before: float
    peak_after: float


@dataclass
class FeedbackResult:
    calibration: Calibration
    widened: dict[str, int]  # signal -> how many of its cells / axes / memory rows changed
    unchanged: list[str]  # signals of the score that feedback cannot change
    normal: list[StretchOutcome] = field(default_factory=list)
    anomalous: list[StretchOutcome] = field(default_factory=list)

    @property
    def false_alarms_before(self) -> int:
        return sum(s.flagged_before for s in self.normal)

    @property
    def false_alarms_after(self) -> int:
        return sum(s.flagged_after for s in self.normal)

    @property
    def caught_before(self) -> int:
        return sum(s.flagged_before for s in self.anomalous)

    @property
    def caught_after(self) -> int:
        return sum(s.flagged_after for s in self.anomalous)

    @property
    def newly_missed(self) -> list[StretchOutcome]:
        """Confirmed anomalies the old profile caught and the folded one would miss."""
        return [s for s in self.anomalous if s.flagged_before and not s.flagged_after]


def target_values(cal: Calibration, margin: float, lone: bool = False) -> dict[str, float]:
    """Per signal of the score, the raw value whose z-score is `margin` x the threshold: a frame whose
    every signal is at or below it scores at or below that (the score is never above the largest
    z-score). With `lone`, the value one signal alone must reach for the frame's score to reach that,
    however low the others read (`lone_signal_level`: higher under the log-mean-exp)."""
    z = margin * cal.threshold
    if lone:
        z = lone_signal_level(z, cal.combination, len(cal.signals))
    return {name: cal.loc[name] + cal.scale[name] * z for name in cal.signals}


def widen_ranges(
    values: torch.Tensor, center: torch.Tensor, spread: torch.Tensor, target: float, cap: torch.Tensor | None = None
) -> torch.Tensor:
    """Spreads at least as wide as `spread`, wide enough that (values - center) / spread <= target everywhere,
    but no wider than `cap` where that is set (a cell a confirmed anomaly needs; never narrower than before)."""
    if target <= 0:
        return spread
    widened = torch.maximum(spread, ((values - center) / target).amax(dim=0).to(spread.dtype))
    return widened if cap is None else torch.minimum(widened, torch.maximum(spread, cap))


def raise_offsets(
    values: torch.Tensor, offset: torch.Tensor, target: float, cap: torch.Tensor | None = None
) -> torch.Tensor:
    """Offsets at least `offset`, large enough that values - offset <= target in every cell, but no larger
    than `cap` where that is set (a cell a confirmed anomaly needs; never lower than before)."""
    raised = torch.maximum(offset, (values - target).amax(dim=0).to(offset.dtype))
    return raised if cap is None else torch.minimum(raised, torch.maximum(offset, cap))


def protected_offsets(
    anomalous: Sequence[torch.Tensor], offset: torch.Tensor, level: float, keep_at: float
) -> torch.Tensor:
    """Per cell, the largest offset that keeps each confirmed anomaly's strongest cell at `keep_at` (inf
    elsewhere); only stretches this signal lifted above `level` (the threshold's raw value) count."""
    cap = torch.full_like(offset, float("inf"))
    for values in anomalous:
        lowered = (values - offset).flatten(1)
        if len(lowered) == 0 or float(lowered.max()) <= level:
            continue
        frame, cell = divmod(int(lowered.argmax()), lowered.shape[1])
        flat = cap.view(-1)
        flat[cell] = min(float(flat[cell]), float(values[frame].flatten()[cell]) - keep_at)
    return cap


def protected_ranges(
    anomalous: Sequence[torch.Tensor], center: torch.Tensor, spread: torch.Tensor, level: float
) -> torch.Tensor:
    """Per cell, the widest spread that keeps each confirmed anomaly's strongest cell above `level` (inf elsewhere).

    A stretch counts as caught when one of its frames is above the threshold, so it is enough to keep
    the cell that lifted it most (over all its frames) where it is: the others may widen.
    """
    cap = torch.full_like(spread, float("inf"))
    for values in anomalous:
        z = ((values - center) / spread).flatten(1)
        if len(z) == 0 or float(z.max()) <= level:  # not caught by this signal: nothing of it to keep
            continue
        frame, cell = divmod(int(z.argmax()), z.shape[1])
        flat = cap.view(-1)
        keep = float((values[frame].flatten()[cell] - center.flatten()[cell]) / (level * PROTECT))
        flat[cell] = min(float(flat[cell]), keep)
    return cap


def widen_whitening(
    features: torch.Tensor,
    mean: torch.Tensor,
    whitening: torch.Tensor,
    target: float,
    protected: Sequence[torch.Tensor] = (),
    level: float = float("inf"),
) -> torch.Tensor:
    """A whitening under which every frame of `features` is at Mahalanobis distance <= `target` (if it can be),
    while each stretch of `protected` (confirmed anomalies) that reached `level` keeps a frame above it.

    In whitened coordinates z the normal frames have covariance I; the confirmed frames Z add
    beta * Z'Z / n to it. Every distance falls as beta grows, so bisection finds the smallest beta that is
    enough, and the largest each protected stretch allows; the smaller of the two is taken. W' = W C^(-1/2)
    then measures every frame under the new covariance.
    """
    z = ((features - mean) @ whitening).double()
    if target <= 0 or float(z.norm(dim=1).max()) <= target:
        return whitening
    scatter = z.T @ z / len(z)
    eye = torch.eye(z.shape[1], dtype=torch.float64)

    def farthest(points: torch.Tensor, beta: float) -> float:
        inverse = torch.linalg.inv(eye + beta * scatter)
        return float(torch.einsum("nd,de,ne->n", points, inverse, points).max().sqrt())

    beta = smallest_beta(lambda b: farthest(z, b) <= target)
    for stretch in protected:
        p = ((stretch - mean) @ whitening).double()
        if len(p) and farthest(p, 0.0) > level:
            beta = min(beta, largest_beta(lambda b, p=p: farthest(p, b) > level * PROTECT))
    values, vectors = torch.linalg.eigh(eye + beta * scatter)
    inverse_root = vectors @ torch.diag(values.rsqrt()) @ vectors.T
    return (whitening.double() @ inverse_root).to(whitening.dtype)


def widen_basis(
    thumbnails: torch.Tensor,
    mean: torch.Tensor,
    basis: torch.Tensor,
    target: float,
    protected: Sequence[torch.Tensor] = (),
    level: float = float("inf"),
) -> torch.Tensor:
    """`basis` (K x D, unit rows, zero rows unused) with unused rows given the leading directions of the
    residuals of `thumbnails` (N x D), one at a time until every frame's `pca` value is <= `target` or no
    row is free; never a direction that would take a stretch of `protected` (confirmed anomalies) that
    reached `level` below `level` x PROTECT. Added directions are orthogonal to the axes already there:
    the residuals lie outside them."""
    free = [i for i in range(len(basis)) if float(basis[i].norm()) == 0.0]
    out = basis.clone()
    if target <= 0 or not free or float(pca_signal(thumbnails, mean, out).max()) <= target:
        return out
    directions = torch.linalg.svd(thumbnail_residual(thumbnails, mean, out.double()), full_matrices=False).Vh
    caught = [p for p in protected if len(p) and float(pca_signal(p, mean, out).max()) > level]
    for row, direction in zip(free, directions, strict=False):
        trial = out.clone()
        trial[row] = direction.to(out.dtype)
        if any(float(pca_signal(p, mean, trial).max()) <= level * PROTECT for p in caught):
            break
        out = trial
        if float(pca_signal(thumbnails, mean, out).max()) <= target:
            break
    return out


def smallest_beta(enough: Callable[[float], bool]) -> float:
    """The smallest beta >= 0 for which `enough` holds (it holds for every larger one), by bisection."""
    if enough(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while not enough(high) and high < 1e12:
        low, high = high, high * 4
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def largest_beta(allowed: Callable[[float], bool]) -> float:
    """The largest beta >= 0 for which `allowed` holds (it holds for every smaller one), by bisection."""
    return max(0.0, smallest_beta(lambda b: not allowed(b)) * (1 - 1e-9) - 1e-12)


def remember(stats: NormalStats, raw: RawSignals, seed: int) -> int:
    """Add (a coreset of) the frames to the memory, standardised as its frames are. Returns rows added."""
    if not stats.has_memory:
        return 0
    assert stats.memory_features is not None and stats.memory_cells is not None  # for the type checker
    standard = (raw.features.float() - stats.feature_center) / stats.feature_scale
    tables = [t for t in ROW_MEMORIES if getattr(stats, t.rows) is not None]
    if any(getattr(raw, t.raw) is None for t in tables) or (stats.has_patch_memory and raw.patch_features is None):
        return 0  # every table's rows must match the memory's: frames that lack one are not remembered
    keep = coreset_indices(standard, MAX_REMEMBERED, seed=seed)
    if stats.has_patch_memory:
        assert stats.memory_patches is not None and raw.patch_features is not None
        patches = stored_patches(standard_patches(raw.patch_features[keep].float(), stats))
        stats.memory_patches = torch.cat([stats.memory_patches.float(), patches.float()])
    for table in tables:
        setattr(stats, table.rows, torch.cat([getattr(stats, table.rows), getattr(raw, table.raw)[keep].float()]))
    stats.memory_features = torch.cat([stats.memory_features, standard[keep]])
    return len(keep)


def folded_stats(
    cal: Calibration, raw: RawSignals, anomalous: Sequence[RawSignals], margin: float, seed: int
) -> tuple[NormalStats, dict[str, int]]:
    """The profile's statistics with the confirmed-normal frames of `raw` folded in (see the module's doc),
    never so far that a confirmed anomaly (`anomalous`, one per stretch) this signal caught would drop below it."""
    stats = NormalStats(**{k: None if v is None else v.detach().cpu().clone() for k, v in vars(cal.stats).items()})
    targets = target_values(cal, margin)
    levels = target_values(cal, 1.0, lone=True)  # what one signal alone lifts a frame above the threshold with
    changed: dict[str, int] = {}
    for name, raw_field, center, spread in POSITION_RANGES:
        values = getattr(raw, raw_field)
        if name not in targets or values is None or getattr(stats, center) is None:
            continue
        before = getattr(stats, spread)
        caught = [getattr(a, raw_field).float() for a in anomalous if getattr(a, raw_field) is not None]
        cap = protected_ranges(caught, getattr(stats, center), before, levels[name])
        setattr(stats, spread, widen_ranges(values.float(), getattr(stats, center), before, targets[name], cap))
        changed[name] = int((getattr(stats, spread) != before).sum())
    if "latent" in targets:
        before = stats.feature_whitening.clone()
        stats.feature_whitening = widen_whitening(
            raw.features.float(),
            stats.feature_mean,
            before,
            targets["latent"],
            [a.features.float() for a in anomalous],
            levels["latent"],
        )
        changed["latent"] = int(not torch.equal(stats.feature_whitening, before))
    if "defect" in targets and raw.defect_map is not None and stats.defect_offset is not None:
        before = stats.defect_offset.clone()
        maps = [a.defect_map.float() for a in anomalous if a.defect_map is not None]
        keep_at = target_values(cal, PROTECT, lone=True)["defect"]
        cap = protected_offsets(maps, before, levels["defect"], keep_at)
        stats.defect_offset = raise_offsets(raw.defect_map.float(), before, targets["defect"], cap)
        changed["defect"] = int((stats.defect_offset != before).sum())
    if "pca" in targets and raw.thumbnail is not None and stats.has_thumbnail_basis:
        assert stats.thumbnail_mean is not None and stats.thumbnail_basis is not None  # for the type checker
        before = stats.thumbnail_basis
        stats.thumbnail_basis = widen_basis(
            raw.thumbnail.float(),
            stats.thumbnail_mean,
            before,
            targets["pca"],
            [a.thumbnail.float() for a in anomalous if a.thumbnail is not None],
            levels["pca"],
        )
        changed["pca"] = int((stats.thumbnail_basis != before).any(dim=1).sum())
    rows = remember(stats, raw, seed)
    changed.update({name: rows for name in REMEMBERED if name in targets})
    return stats, changed


def stretch_outcomes(
    before: Detector, after: Detector, stretches: Sequence[np.ndarray], batch_size: int = 64
) -> list[StretchOutcome]:
    out = []
    for i, frames in enumerate(stretches):
        peaks = []
        for detector in (before, after):
            starts = range(0, len(frames), batch_size)
            scores = [detector.score_prepared(frames[j : j + batch_size]).score for j in starts]
            peaks.append(float(np.concatenate(scores).max()))
        out.append(StretchOutcome(i, peaks[0] > before.threshold, peaks[1] > after.threshold, peaks[0], peaks[1]))
    return out


def fold_feedback(
    detector: Detector,
    normal: Sequence[np.ndarray],
    anomalous: Sequence[np.ndarray] = (),
    *,
    margin: float = 0.8,
) -> FeedbackResult:
    """The profile `detector` scores with, with the confirmed-normal stretches `normal` (prepared frames,
    one array per stretch) folded in; every stretch rescored before and after.

    `margin`: the confirmed frames are brought to this fraction of the threshold (in z units), so
    frames like them, not only these exact ones, stop raising the alarm.
    """
    if not 0 < margin <= 1:
        raise ValueError(f"margin {margin}: must be in (0, 1]")
    if not normal or not sum(len(s) for s in normal):
        raise ValueError("no stretch marked normal: nothing to fold into the profile")
    from anomaly.calibrate import collect_raw  # calibrate imports this package's scoring as well

    cal = detector.calibrated
    raw = collect_raw(detector, np.concatenate(list(normal)))
    confirmed = [collect_raw(detector, frames) for frames in anomalous if len(frames)]
    stats, widened = folded_stats(cal, raw, confirmed, margin, detector.config.train.seed)
    folded = dataclasses.replace(cal, stats=stats)
    after = (
        detector.with_calibration(folded)
        if detector.profile == FLEET
        else detector.with_profile(detector.profile, folded).for_camera(detector.profile)
    )
    return FeedbackResult(
        calibration=folded,
        widened=widened,
        unchanged=[name for name in cal.signals if name in UNCHANGED],
        normal=stretch_outcomes(detector, after, normal),
        anomalous=stretch_outcomes(detector, after, anomalous),
    )
