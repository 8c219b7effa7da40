"""Where a frame's anomaly score is computed. Batch scripts and the HTTP service both call this.

Per frame, one pass through the networks (and the frame's own statistics) gives these raw signals:

- `recon`   mean squared reconstruction error over the frame.
- `spatial` the worst cell of the (lightly blurred) error map, in units of that cell's normal range (its 99th
            percentile minus its median on normal frames). The camera is fixed to the car, so the
            road ahead normally reconstructs well and an object on it stands out even when it
            covers 1% of the frame.
- `latent`  Mahalanobis distance of the encoder's summary features from normal frames', along
            their leading principal axes. Catches global changes (fog, night, glare, a smeared
            lens) that can *lower* the error.
- `disc`    the discriminator's belief that the frame is not a real normal frame, 0..1.
- `disc_patch` the discriminator's most "not real" patch, in units of that position's normal range.
- `knn`     mean distance of the standardised summary features to the nearest frames of the memory
            of normal frames (`anomaly.memory`): normal driving is many clusters, not one Gaussian.
- `local`   the worst cell of the error map against the same cell of the frame's nearest memory
            frames, rather than against every normal frame of every camera.
- `patch`   the encoder's deepest feature map, patch by patch, against the same patches (or one
            step beside) of the frame's nearest memory frames, in units of that position's normal
            range: an object the autoencoder reconstructs well but no similar normal frame showed.
- `image`   the frame's own statistics per heat-map cell (mean colour, contrast, edge energy: no
            network), against the same cells of its nearest memory frames, above or below their
            mean in units of their spread: a smear dulls a region's edges, glare brightens it and
            flattens its contrast, an object or a torn block puts edges where similar normal frames
            had none, whatever the autoencoder makes of them.
- `defect`  the defect finder's most defective cell (its largest logit): a network trained apart from
            the pair, only to find generic synthetic defects pasted into normal frames (foreign
            content under noise-shaped masks, `anomaly.training.defects`), so it marks what does
            not belong in a frame, a soft brown smear as much as a pasted block, whatever the
            autoencoder makes of it.
- `defect_local` the finder's cells against the same cells of the frame's nearest memory frames: how far
            a cell lies above what similar normal frames showed there (their upper quantile, or the
            cell's median over normal frames where that is higher). A car ahead looks "put there" to
            the finder, but so does the car in similar normal frames; debris on an empty lane does not.
- `pca`     the frame as a thumbnail (64 x 36 block means of the input: its layout, not its texture), and
            what of it the leading principal components of normal thumbnails cannot explain (the mean
            squared residual): the PCA baseline's own score, no network. A camera rolled or tipped in
            its mount, glare or a torn frame moves the whole layout in a way no mix of normal frames does,
            while the networks' features, made to be alike for alike content, see the same road.
- `tear`    the change of luminance from each row of the frame to the next (its mean over the row), against
            the normal range of that row boundary (median, 99th percentile on normal frames); the worst
            boundary. A frame torn by a decoding error (a band of rows shifted sideways, a slice of
            macroblocks lost or smeared) has a boundary across its whole width that no normal frame has
            there. Whole rows rather than cells: a tear runs the width of the frame, and the mean over a
            row keeps its normal range narrow where a 20-pixel cell's takes in every car and shadow.

Each signal becomes a z-score against held-out normal frames, and the anomaly score combines the
z-scores of the signals the calibration selected (`anomaly.frame_scores.combine`: their log-mean-exp,
a smooth maximum, or for profiles calibrated so their maximum); where the profile has a scene baseline
(`anomaly.scene_baseline`), less the normal level of the held-out frames that look like the frame
(`scene_level`). `is_anomaly` is score > threshold.

`patch` costs about as much as the networks' pass, the discriminator (`disc`, `disc_patch`) a fifth
of it, the defect finder (`defect`) about as much, `local` a tenth and `image` about half as much as
`patch`; scoring computes them (`COSTLY_SIGNALS`) only when the score uses them or the detector was
asked for every signal
(`Detector.with_all_signals`: `anomaly score --all-signals`, `anomaly evaluate`, the demo), and
otherwise leaves their columns empty.

The heat map leaves scoring as cells (`FrameScores.heat_cells`); the per-pixel map is made from them
(`anomaly.heat.cells_to_pixels`) only when something draws it, which a CSV does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.calibration import NormalStats, standard_patches
from anomaly.config import (
    COSTLY_SIGNALS,
    DISCRIMINATOR_SIGNALS,
    FINDER_SIGNALS,
    CalibrationConfig,
    costly_signals_computed,
)
from anomaly.detector import Detector
from anomaly.frame_scores import FrameScores, frame_scores
from anomaly.heat import HeatLayout, cell_sizes
from anomaly.memory import (
    mean_distance,
    nearest,
    neighbour_cell_scores,
    neighbour_deviations,
    patch_distances,
    upper_quantile,
)
from anomaly.model import AutoencoderGAN


@dataclass
class RawSignals:
    recon: torch.Tensor  # N
    error_cells: torch.Tensor  # N x h x w, mean squared error per cell
    features: torch.Tensor  # N x d
    disc: torch.Tensor | None = None  # N (None: the discriminator was not run)
    disc_map: torch.Tensor | None = None  # N x h' x w': the discriminator's "not real" logit per patch
    patch_features: torch.Tensor | None = None  # N x C x h'' x w'': the encoder's deepest feature map
    image_cells: torch.Tensor | None = None  # N x S x h x w: the frame's own statistics per heat-map cell
    defect_map: torch.Tensor | None = None  # N x H/4 x W/4: the defect finder's logit per cell (None: not run)
    thumbnail: torch.Tensor | None = None  # N x D: the frame averaged over blocks of pixels (`pca`), flattened
    row_changes: torch.Tensor | None = None  # N x (H-1): mean change of luminance from each row to the next (`tear`)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> RawSignals:
        """`fn` applied to every field the batch has; a signal that was not computed stays None."""
        return RawSignals(**{f.name: None if (v := getattr(self, f.name)) is None else fn(v) for f in fields(self)})


# The statistics of `image_cells`, in their order (of the normalised frame, whose channels are RGB).
IMAGE_STATISTICS = ("red", "green", "blue", "contrast", "edges")
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B


def box_mean(t: torch.Tensor, kernel: tuple[int, int], stride: int) -> torch.Tensor:
    """N x C x H x W -> N x C x h x w: the mean over each kh x kw cell, cells `stride` apart.

    A box average is separable (rows, then columns: 2k sums, not k^2), and written as two
    convolutions with a constant kernel because torch's CPU `avg_pool2d` took five times as long
    (5.3 against 1.0 ms for a batch of 16 three-channel 128x72 frames); ONNX exports it as `Conv`.
    """
    (kh, kw), (n, c, h, w) = kernel, t.shape
    rows = F.conv2d(t.reshape(n * c, 1, h, w), t.new_full((1, 1, kh, 1), 1.0 / kh), stride=(stride, 1))
    cells = F.conv2d(rows, t.new_full((1, 1, 1, kw), 1.0 / kw), stride=(1, stride))
    return cells.reshape(n, c, cells.shape[-2], cells.shape[-1])


def pool_errors(error_map: torch.Tensor, cell: int, stride: int) -> torch.Tensor:
    """N x H x W squared error -> N x h x w mean over overlapping cells."""
    return box_mean(error_map.unsqueeze(1), cell_sizes(*error_map.shape[-2:], cell), stride).squeeze(1)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W normalised frames (RGB) -> N x 1 x H x W luminance (`LUMINANCE` weights)."""
    weights = torch.tensor(LUMINANCE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def image_cell_statistics(x: torch.Tensor, cell: int, stride: int) -> torch.Tensor:
    """N x 3 x H x W normalised frames -> N x 5 x h x w: per heat-map cell (the error cells' grid), the
    mean of each channel, the standard deviation of luminance and the mean absolute Laplacian of it."""
    kernel = cell_sizes(*x.shape[-2:], cell)
    grey = luminance(x)
    laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device)
    edges = F.conv2d(F.pad(grey, [1, 1, 1, 1], mode="replicate"), laplacian.view(1, 1, 3, 3)).abs()
    mean_luminance = box_mean(grey, kernel, stride)
    contrast = (box_mean(grey.pow(2), kernel, stride) - mean_luminance.pow(2)).clamp_min(0).sqrt()
    return torch.cat([box_mean(x, kernel, stride), contrast, box_mean(edges, kernel, stride)], dim=1)


def thumbnail(x: torch.Tensor, width: int) -> torch.Tensor:
    """N x C x H x W normalised frames -> N x (C h w): each frame averaged over square blocks of pixels, about
    `width` blocks across (64 x 36 of a 128 x 72 input), flattened: the frame's layout, without its texture."""
    pool = max(1, x.shape[-1] // width)
    return box_mean(x, (pool, pool), pool).flatten(1)


def row_changes(x: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W normalised frames -> N x (H-1): per boundary between two rows, the mean absolute change
    of luminance across it."""
    grey = luminance(x)[:, 0]
    return (grey[:, 1:] - grey[:, :-1]).abs().mean(dim=2)


def summary_features(stage_features: Sequence[torch.Tensor], latent: torch.Tensor) -> torch.Tensor:
    """Encoder activations summarised per frame: channel means and spreads, and a coarse latent grid."""
    means = [f.mean(dim=(2, 3)) for f in stage_features]
    # spread as sqrt(E[x^2] - E[x]^2): two means are much faster than torch.std on channels-last tensors
    spreads = [
        (f.pow(2).mean(dim=(2, 3)) - m.pow(2)).clamp_min(0).sqrt() for f, m in zip(stage_features, means, strict=True)
    ]
    parts = means + spreads
    parts.append(F.adaptive_avg_pool2d(latent, (3, 4)).flatten(1))
    return torch.cat(parts, dim=1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of an N x C x H x W batch (reflect-padded, kernel 2*ceil(2*sigma)+1 pixels wide).

    Keeps the shapes an anomaly is made of, drops pixel-level texture and noise. The kernel is
    built as torchvision builds it, so scores match those of models calibrated with its blur.
    """
    if sigma <= 0:
        return x
    size = 2 * math.ceil(2 * sigma) + 1
    lim = (size - 1) / (2.0 * math.sqrt(2.0))
    line = torch.linspace(-lim, lim, steps=size, dtype=x.dtype, device=x.device)
    kernel1d = torch.softmax(line.div(sigma).pow(2).neg(), dim=0)
    channels = x.shape[1]
    kernel = (kernel1d.unsqueeze(-1) * kernel1d).expand(channels, 1, size, size)
    padded = F.pad(x.contiguous(), [size // 2] * 4, mode="reflect")
    return F.conv2d(padded, kernel, groups=channels)


@torch.inference_mode()
def raw_signals(
    model: AutoencoderGAN,
    x: torch.Tensor,
    config: CalibrationConfig,
    discriminate: bool = True,
    image: bool = True,
    find_defects: bool = True,
) -> RawSignals:
    """One pass through the networks (the discriminator's only with `discriminate`, the defect finder's
    only with `find_defects`), and the frames' own cell statistics (only with `image`); the heat map
    compares frame and reconstruction after a light blur.

    The autoencoder never reproduces foliage texture, sensor noise or the exact sub-pixel edge of a
    lane marking, and those pixel-level misses dominate the raw error of normal frames. Blurring
    both images by about a pixel first leaves the errors an object, a smear or a torn block makes.
    """
    out = model(x, discriminate=discriminate, find_defects=find_defects)
    difference = x - out.recon
    error_map = difference.pow(2).mean(dim=1)
    # blurring is linear: blur(x) - blur(recon) is blur(x - recon), at half the cost
    heat_error = (
        gaussian_blur(difference, config.error_blur_sigma).pow(2).mean(1) if config.error_blur_sigma > 0 else error_map
    )
    return RawSignals(
        recon=error_map.mean(dim=(1, 2)),
        error_cells=pool_errors(heat_error, config.error_pool, config.error_stride),
        features=summary_features(out.stage_features, out.latent),
        disc=None if out.disc_logits is None else 1.0 - torch.sigmoid(out.disc_logits).mean(dim=(1, 2, 3)),
        disc_map=None if out.disc_logits is None else -out.disc_logits[:, 0],
        patch_features=out.stage_features[-1],
        image_cells=image_cell_statistics(x, config.error_pool, config.error_stride) if image else None,
        defect_map=None if out.defect_logits is None else out.defect_logits[:, 0],
        thumbnail=thumbnail(x, config.thumbnail_width),
        row_changes=row_changes(x),
    )


def patch_distance_maps(
    raw: RawSignals, stats: NormalStats, config: CalibrationConfig, neighbours: torch.Tensor | None = None
) -> torch.Tensor | None:
    """N x h'' x w'': each patch's distance to the nearest patch of the frame's nearest memory frames.

    `neighbours`: the frames' nearest memory frames, nearest first, when already found (at least
    `config.patch_neighbours` of them, or all the memory holds). None when the statistics hold no
    patch memory (a model calibrated before the `patch` signal).
    """
    if not stats.has_patch_memory or raw.patch_features is None or raw.features.shape[0] == 0:
        return None
    assert stats.memory_features is not None and stats.memory_patches is not None  # for the type checker
    if neighbours is None:
        standard = (raw.features - stats.feature_center) / stats.feature_scale
        _, neighbours = nearest(standard, stats.memory_features, config.patch_neighbours)
    neighbours = neighbours[:, : config.patch_neighbours]
    query = standard_patches(raw.patch_features, stats)
    bank = stats.memory_patches.to(query.device)
    return patch_distances(query, bank[neighbours].float(), config.patch_shift)


def patch_signal(maps: torch.Tensor, stats: NormalStats) -> torch.Tensor:
    """The worst position of patch distance maps, in units of that position's normal range."""
    assert stats.patch_center is not None and stats.patch_spread is not None
    return ((maps - stats.patch_center) / stats.patch_spread).flatten(1).amax(dim=1)


def image_signal(
    cells: torch.Tensor, neighbour_cells: torch.Tensor, floor: torch.Tensor, shift: int = 0
) -> torch.Tensor:
    """The worst cell and statistic of `image_cells` (N x S x h x w) against the same of the frame's
    nearest memory frames (N x K x S x h x w), or those `shift` cells beside, above or below them
    (`neighbour_deviations`)."""
    return neighbour_deviations(cells, neighbour_cells, floor, shift).flatten(1).amax(dim=1)


def defect_signal(maps: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """The defect finder's largest logit, each cell lowered by its offset (none: as calibrated)."""
    return (maps if offset is None else maps - offset).flatten(1).amax(dim=1)


def defect_local_signal(
    maps: torch.Tensor,
    offset: torch.Tensor | None,
    neighbour_maps: torch.Tensor,
    center: torch.Tensor,
    quantile: float,
) -> torch.Tensor:
    """The defect finder's cells (N x h x w, each lowered by its offset) above the same cells of the
    frame's nearest memory frames (N x K x h x w): above their `quantile`, or above the cell's median
    over normal frames (`center`, h x w) where that is higher; the largest excess.

    In logits, not in units of a spread: the finder's logit is already a calibrated log-odds, and a
    spread of neighbours that agree (an empty lane) would turn its noise into huge scores. The floor at
    the median keeps neighbours that happen to be unusually clean there from doing the same. Offline on
    the fleet benchmark's networks (README): the plain maximum finds a small object on the road at
    0.70, this at 0.84, in units of the neighbours' spread at 0.51.
    """
    theirs = neighbour_maps.float()
    reference = torch.maximum(upper_quantile(theirs, quantile, dim=1), center.to(theirs.dtype))
    own = maps.float() if offset is None else maps.float() - offset
    return (own - reference).flatten(1).amax(dim=1)


def thumbnail_residual(thumbnails: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """What of thumbnails (N x D) lies outside the principal components of normal ones (`basis`, K x D
    orthonormal rows, zero rows unused), in the precision of `basis`."""
    centred = thumbnails.to(basis.dtype) - mean.to(basis.dtype)
    return centred - (centred @ basis.T) @ basis


def pca_signal(thumbnails: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The mean squared residual of thumbnails outside the normal axes (`thumbnail_residual`): what no mix
    of the ways normal frames vary explains."""
    return thumbnail_residual(thumbnails, mean, basis).pow(2).mean(dim=1)


def signal_values(
    raw: RawSignals,
    stats: NormalStats,
    config: CalibrationConfig | None = None,
    skip: frozenset[str] = frozenset(),
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The per-frame signals, and the heat map (per-cell z-scores) they were taken from.

    The heat map is the `local` one (cells against the frame's nearest memory frames) when the
    statistics hold a memory and `local` is computed, else the pooled one (what `spatial` reads).
    Signals whose statistics or network are missing (a checkpoint of format 3; `defect` of a model
    without a defect finder, format 4; `defect_local` of a model calibrated before it, format 5; `pca`
    and `tear` of a model calibrated before them) read 0; signals in `skip` (of `COSTLY_SIGNALS`), and the
    discriminator's when it was not run, are left out. The memory's nearest frames are found once, for
    the largest neighbour count among the signals computed, and each signal takes its share of them.
    """
    config = config or CalibrationConfig()
    heat = (raw.error_cells - stats.cell_center) / stats.cell_spread
    mahalanobis = ((raw.features - stats.feature_mean) @ stats.feature_whitening).norm(dim=1)
    zero = torch.zeros_like(raw.recon)
    signals = {
        "spatial": heat.flatten(1).amax(dim=1),
        "latent": mahalanobis,
        "recon": raw.recon,
        "disc": zero if raw.disc is None else raw.disc,
        "knn": zero,
        "local": zero,
        "disc_patch": zero,
        "patch": zero,
        "image": zero,
        "defect": zero if raw.defect_map is None else defect_signal(raw.defect_map, stats.defect_offset),
        "defect_local": zero,
        "pca": zero,
        "tear": zero,
    }
    if stats.has_row_range and raw.row_changes is not None:
        assert stats.row_center is not None and stats.row_spread is not None  # for the type checker
        signals["tear"] = ((raw.row_changes - stats.row_center) / stats.row_spread).amax(dim=1)
    if stats.has_thumbnail_basis and raw.thumbnail is not None:
        assert stats.thumbnail_mean is not None and stats.thumbnail_basis is not None  # for the type checker
        signals["pca"] = pca_signal(raw.thumbnail, stats.thumbnail_mean, stats.thumbnail_basis)
    if raw.disc is None:
        skip = skip | DISCRIMINATOR_SIGNALS
    if raw.disc_map is not None and stats.disc_center is not None and stats.disc_spread is not None:
        signals["disc_patch"] = ((raw.disc_map - stats.disc_center) / stats.disc_spread).flatten(1).amax(dim=1)
    if stats.has_memory and raw.features.shape[0] > 0:
        assert stats.memory_features is not None and stats.memory_cells is not None  # for the type checker
        standard = (raw.features - stats.feature_center) / stats.feature_scale
        wanted = {
            "local": config.local_neighbours,
            "patch": config.patch_neighbours,
            "image": config.local_neighbours,
            "defect_local": config.local_neighbours,
        }
        most = max([config.knn_k, *(k for name, k in wanted.items() if name not in skip)])
        distances, neighbours = nearest(standard, stats.memory_features, most)
        signals["knn"] = mean_distance(distances[:, : config.knn_k], standard.shape[1])
        if "local" not in skip:
            heat = neighbour_cell_scores(
                raw.error_cells,
                stats.memory_cells[neighbours[:, : config.local_neighbours]],
                quantile=config.local_quantile,
                spread_floor=config.local_floor * stats.cell_spread,
            )
            signals["local"] = heat.flatten(1).amax(dim=1)
        if "image" not in skip and stats.has_image_memory and raw.image_cells is not None:
            assert stats.memory_image is not None and stats.image_floor is not None  # for the type checker
            theirs = stats.memory_image[neighbours[:, : config.local_neighbours]]
            signals["image"] = image_signal(raw.image_cells, theirs, stats.image_floor, config.image_shift)
        if "defect_local" not in skip and stats.has_defect_memory and raw.defect_map is not None:
            assert stats.memory_defect is not None and stats.defect_center is not None  # for the type checker
            signals["defect_local"] = defect_local_signal(
                raw.defect_map,
                stats.defect_offset,
                stats.memory_defect[neighbours[:, : config.local_neighbours]],
                stats.defect_center,
                config.local_quantile,
            )
    else:
        neighbours = None
    for name in skip:
        signals.pop(name, None)
    if "patch" not in skip and stats.has_patch_range:
        maps = patch_distance_maps(raw, stats, config, neighbours)
        if maps is not None:
            signals["patch"] = patch_signal(maps, stats)
    return signals, heat


def frame_signals(
    model: AutoencoderGAN,
    x: torch.Tensor,
    stats: NormalStats,
    config: CalibrationConfig,
    skip: frozenset[str] = frozenset(),
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Every signal of a normalised batch but those in `skip`, its heat-map cells and its summary features
    (what the scene baseline finds similar frames by): all that scoring computes with torch (what
    `anomaly.export` puts in an exported model's graph). The discriminator
    runs only when one of its signals is wanted, the defect finder only for one of its two."""
    raw = raw_signals(
        model,
        x,
        config,
        discriminate=not skip >= DISCRIMINATOR_SIGNALS,
        image="image" not in skip,
        find_defects=not skip >= FINDER_SIGNALS,
    )
    signals, heat = signal_values(raw, stats, config, skip)
    return signals, heat, raw.features


def score_prepared(detector: Detector, prepared: Sequence[np.ndarray] | np.ndarray) -> FrameScores:
    """Score frames already passed through `detector.preprocessor.prepare` (RGB, model size)."""
    cal = detector.calibrated
    x = detector.preprocessor.to_tensor(prepared, detector.device)
    skip = COSTLY_SIGNALS - costly_signals_computed(cal.signals, detector.all_signals)
    config = detector.config
    signals, heat, features = frame_signals(detector.net, x, detector.normal_stats, config.calibration, skip)
    return frame_scores(
        {k: v.float().cpu().numpy() for k, v in signals.items()},
        heat.float().cpu().numpy(),
        HeatLayout.of(config),
        loc=cal.loc,
        scale=cal.scale,
        names=cal.signals,
        threshold=cal.threshold,
        profile=detector.profile,
        rule=cal.combination,
        scene=cal.scene,
        features=features.float().cpu().numpy(),
    )


def score_frames(detector: Detector, frames: Sequence[np.ndarray]) -> FrameScores:
    """Score source frames (BGR uint8, any size): preprocessing and scoring in one call."""
    return score_prepared(detector, [detector.preprocessor.prepare(f) for f in frames])
