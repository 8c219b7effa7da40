"""A memory of normal frames, and scores that measure a frame against the normal frames it resembles.

Normal driving in a fleet is many clusters (cameras, roads, light), not one. Statistics pooled over
all of it are wide enough to swallow an anomaly in one cluster, and a single Gaussian can place a
new kind of picture (a camera pointing at the asphalt) closer to the pooled mean than normal
frames are. So besides the pooled statistics of `anomaly.calibration`, a detector keeps a bank of
normal frames, each as

- its summary features (standardised per dimension over the normal frames), and
- its heat-map cells (the blurred reconstruction error per cell).

Three scores come from the bank:

- `knn`:   mean distance of the frame's standardised summary features to its `k` nearest bank
           frames: "is this frame like *some* normal frame", whichever cluster that is.
- `local`: the worst heat-map cell measured against the same cells of the frame's nearest bank
           frames (median and upper spread over those neighbours), so that a cell that is often
           noisy on one camera does not widen the normal range on another. The camera is fixed
           to the car, so the same cell of similar frames shows the same part of the scene.
- `patch`: per position of the encoder's deepest feature map, the distance of the frame's patch to
           the nearest patch at that position (or one step beside it) of its nearest bank frames,
           as PatchCore does but position-aware and among similar frames only. It asks "has any
           normal frame like this one shown this here", which a reconstruction error cannot: the
           autoencoder reconstructs a new object it has never seen about as well as a car.

The bank is a coreset (greedy k-centre selection): it keeps frames that cover the feature space
rather than a random subset, so its size can be bounded (hours of footage) without dropping the
rare kinds of normal picture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def coreset_indices(x: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of at most `size` rows of `x` (N x d) chosen by greedy k-centre (farthest-point) selection.

    Starts from a seeded random row and repeatedly adds the row farthest from every row chosen so
    far, so every row of `x` lies within the final covering radius of a chosen one. Deterministic
    for a given seed; all rows (in order) when `size >= N`.
    """
    n = len(x)
    if size < 1:
        raise ValueError(f"coreset size must be at least 1, got {size}")
    if size >= n:
        return torch.arange(n)
    x = x.float()
    start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = start
    nearest = (x - x[start]).pow(2).sum(1)
    for i in range(1, size):
        nxt = int(nearest.argmax())
        chosen[i] = nxt
        nearest = torch.minimum(nearest, (x - x[nxt]).pow(2).sum(1))
    return chosen


def standardiser(features: torch.Tensor, floor: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of normal features (std floored against constant dims)."""
    f = features.double()
    mean = f.mean(0)
    std = f.std(0) if len(f) > 1 else torch.ones_like(mean)
    std = torch.clamp(std, min=floor * float(std.median()) + 1e-12)
    return mean.float(), std.float()


def nearest(query: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (N x k, ascending) and indices of the `k` nearest bank rows of each query row."""
    k = max(1, min(k, bank.shape[0]))  # shape, not len(): a symbolic size when exported (anomaly.export)
    dist, idx = euclidean_distances(query.float(), bank.float()).topk(k, dim=1, largest=False)
    return dist, idx


def euclidean_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """N x M distances between the rows of `a` and of `b`, by |a|^2 + |b|^2 - 2 a.b (one matrix product).

    What `torch.cdist` computes for banks of more than 25 rows, written out because cdist chooses its
    method by size at run time, which an exported graph (`anomaly.export`) cannot.
    """
    squared = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * (a @ b.T)
    return squared.clamp_min(0).sqrt()


def mean_distance(distances: torch.Tensor, dims: int) -> torch.Tensor:
    """The `knn` signal of N x k nearest distances in a `dims`-dimensional space: their mean per
    dimension, so that its size does not grow with the number of feature dimensions."""
    return distances.mean(1) / dims**0.5


def neighbour_cell_scores(
    cells: torch.Tensor,
    neighbour_cells: torch.Tensor,
    *,
    quantile: float,
    spread_floor: torch.Tensor,
) -> torch.Tensor:
    """Per-cell z-scores of `cells` (N x h x w) against their neighbours' cells (N x K x h x w).

    Centre: the neighbours' median per cell; spread: their `quantile` minus that median, floored
    per cell by `spread_floor` (h x w, from the pooled statistics) so that a cell the neighbours
    happen to agree on exactly does not turn a tiny change into a huge score.
    """
    # the neighbours last, so that each cell's values are contiguous for the sort (3x faster in ONNX Runtime)
    ordered = neighbour_cells.float().permute(0, 2, 3, 1).sort(dim=-1).values
    center = sorted_quantile(ordered, 0.5, lower=True)
    upper = sorted_quantile(ordered, quantile)
    spread = torch.maximum(upper - center, spread_floor.to(ordered.dtype))
    return (cells.float() - center) / spread


def neighbour_deviations(
    cells: torch.Tensor, neighbour_cells: torch.Tensor, spread_floor: torch.Tensor, shift: int = 0
) -> torch.Tensor:
    """How far each of `cells` (N x h x w) lies from its neighbours' mean (N x K x h x w), either way,
    in units of their standard deviation floored per cell by `spread_floor` (h x w); with `shift`, the
    least of that and the same against the neighbours' cells `shift` steps up, down, left or right.

    The shift: similar frames are never quite aligned (the car pitches, the lane drifts), and a lane
    marking or a kerb 2 pixels from where the neighbours had it reads as a deviation at its edge. An
    object none of them showed deviates from their cells beside it as much as from its own.

    Either way: a smear lowers a cell's contrast, a glare raises its brightness. Mean and standard
    deviation rather than `neighbour_cell_scores`' median and quantile, which need a sort of the K
    values of every cell: in the offline fleet probe (`benchmarks/cell_statistics_probe.py`, floor
    and scale fitted on held-out frames) both gave the same AUROC beside the score (0.829), and the
    sort of five statistics per cell cost more than the networks' pass.
    """
    theirs = neighbour_cells.float()
    center = theirs.mean(dim=1, keepdim=True)
    # the unbiased standard deviation in two explicit passes: torch.std over the K dimension of
    # this layout took 0.5-0.7 ms a frame, this 0.1 (equal to 1e-7)
    std = ((theirs - center).pow(2).sum(dim=1) / max(theirs.shape[1] - 1, 1)).sqrt()
    floor = spread_floor.to(theirs.dtype)
    own, center = cells.float(), center[:, 0]
    deviation = (own - center).abs() / torch.maximum(std, floor)
    for dy, dx in ((shift, 0), (-shift, 0), (0, shift), (0, -shift)) if shift else ():
        # the neighbours' cell `shift` steps beside: their mean and spread moved, not the K cells
        beside = (own - shifted(center, dy, dx, 0.0)).abs() / torch.maximum(shifted(std, dy, dx, 0.0), floor)
        inside = shifted(torch.ones_like(std[:1]), dy, dx, 0.0) > 0
        deviation = torch.minimum(deviation, torch.where(inside, beside, deviation))
    return deviation


def sorted_quantile(ordered: torch.Tensor, q: float, lower: bool = False) -> torch.Tensor:
    """The `q` quantile along the last dim of values already sorted along it: `torch.quantile`'s
    linear rule, or with `lower` the lower of the two middle values (`torch.median`'s rule).

    Written with a sort and indexing, which ONNX exports (`anomaly.export`); `torch.quantile` and
    `torch.median` along a dimension do not export.
    """
    position = q * (ordered.shape[-1] - 1)
    below = int(position)
    if lower or below == position:
        return ordered[..., below]
    return torch.lerp(ordered[..., below], ordered[..., below + 1], position - below)


def upper_quantile(values: torch.Tensor, q: float, dim: int) -> torch.Tensor:
    """The `q` quantile along `dim` (`torch.quantile`'s linear rule) from the largest values only: for an
    upper quantile `topk` of the few values at or above it costs far less than sorting them all (the 0.9
    quantile of 30 needs the largest 4), and exports to ONNX, which `torch.quantile` does not."""
    position = q * (values.shape[dim] - 1)
    below = int(position)
    top = values.topk(values.shape[dim] - below, dim=dim).values  # descending: its last is sorted[below]
    at = top.select(dim, top.shape[dim] - 1)
    if below == position:
        return at
    return torch.lerp(at, top.select(dim, top.shape[dim] - 2), position - below)


def shifted(x: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """`x[..., y + dy, x + dx]` at each (y, x) of the last two dims, `fill` where that falls outside."""
    h, w = x.shape[-2], x.shape[-1]
    padded = F.pad(x, (max(-dx, 0), max(dx, 0), max(-dy, 0), max(dy, 0)), value=fill)
    y0, x0 = max(dy, 0), max(dx, 0)
    return padded[..., y0 : y0 + h, x0 : x0 + w]


def patch_distances(query: torch.Tensor, neighbour_maps: torch.Tensor, shift: int) -> torch.Tensor:
    """Per position, the squared distance of each query patch to the nearest neighbour patch within `shift`.

    `query` N x C x h x w, `neighbour_maps` N x K x C x h x w (each query's own neighbours); returns
    N x h x w. Patches one step beside the position count too (the car pitches and the lane drifts);
    beyond the map's edge there is nothing to compare with.

    Written for speed, as this is the costliest part of scoring: the *query* (K times smaller than
    its neighbours' maps) is moved onto each shift instead of the maps, and each distance is
    |q - r|^2 + |m - r|^2 - 2 (q - r).(m - r), with the dot products of a position's K neighbours
    and every shift in one batched matrix product, so the maps are read once and never copied. `r`, the
    neighbours' mean patch at the position, keeps the expansion exact to float precision: without
    it, near-copies of a patch lost their distance to cancellation.
    """
    n, k, c, h, w = neighbour_maps.shape
    bank = neighbour_maps.float().permute(0, 3, 4, 1, 2).reshape(-1, k, c)  # per position: its K patches
    mean = bank.mean(1, keepdim=True)  # (N h w) x 1 x C
    bank = bank - mean
    mean_map = mean.view(n, h, w, c)
    query = query.float()
    offsets = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
    # for each shift, the query patch that the neighbours' patch at each position is compared with
    moved = torch.stack([shifted(query, -dy, -dx, 0.0).permute(0, 2, 3, 1) - mean_map for dy, dx in offsets], -1)
    moved = moved.reshape(-1, c, len(offsets))  # (N h w) x C x shifts
    dot = torch.bmm(bank, moved)  # (N h w) x K x shifts, every shift in one product
    d = bank.pow(2).sum(-1, keepdim=True) + moved.pow(2).sum(1, keepdim=True) - 2.0 * dot
    d = d.amin(1).view(n, h, w, len(offsets))  # the nearest of the K neighbours, on the neighbours' grid
    best: torch.Tensor | None = None
    for i, (dy, dx) in enumerate(offsets):
        # back at the query's own position p; a neighbour position whose p falls off the map (where
        # `moved` holds padding) never comes back, and p + (dy, dx) off the map counts as no patch
        back = shifted(d[..., i], dy, dx, float("inf"))
        best = back if best is None else torch.minimum(best, back)
    assert best is not None
    return best.clamp_min(0.0)
