"""The heat map of a frame: from the error cells scoring measures to one value per model pixel.

Scoring hands out the heat map as its cells (per-cell z-scores, N x h x w, a few hundred values a
frame) and the per-pixel map is made here, in numpy, only when something draws it: an annotated
video, a clip, the service's overlay, the live view. A scores CSV needs no heat map, and making it
for every frame cost about a sixth of an exported model's time. numpy only, so that the scorer of
exported models (no torch) and the torch scorer share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anomaly.config import DetectorConfig


def cell_sizes(height: int, width: int, cell: int) -> tuple[int, int]:
    """Cells are squares of `cell` pixels, cut down to the frame when the frame is smaller."""
    return min(cell, height), min(cell, width)


@dataclass(frozen=True)
class HeatLayout:
    """Where the cells lie on the model's input: its size, the cell's side and the step between cells."""

    height: int
    width: int
    cell: int
    stride: int

    @classmethod
    def of(cls, config: DetectorConfig) -> HeatLayout:
        c = config.calibration
        return cls(config.preprocess.height, config.preprocess.width, c.error_pool, c.error_stride)

    @property
    def kernel(self) -> tuple[int, int]:
        return cell_sizes(self.height, self.width, self.cell)


def _running_max(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """The maximum of every window of `k` consecutive entries along `axis` (length n - k + 1)."""
    n = a.shape[axis] - k + 1
    out = a.take(range(0, n), axis=axis)
    for shift in range(1, k):
        out = np.maximum(out, a.take(range(shift, shift + n), axis=axis))
    return out


def cells_to_pixels(cells: np.ndarray, layout: HeatLayout) -> np.ndarray:
    """N x h x w cell values -> N x H x W float32: each pixel gets the largest value of the cells covering it.

    Cells overlap and are wider than their stride, so a plain resize of the grid would shift an
    object's heat towards the frame's edges by up to half a cell; this puts it where the object is.
    The pixels of one stride x stride block share their cells when the stride divides the cell, so
    the maximum is then taken per block; otherwise per pixel.
    """
    cells = np.asarray(cells, dtype=np.float32)
    (kh, kw), stride = layout.kernel, layout.stride
    if kh % stride == 0 and kw % stride == 0:
        # block (i, j) lies in cells i - kernel/stride + 1 .. i (and likewise for j)
        reach = (kh // stride - 1, kw // stride - 1)
        grid = np.pad(cells, ((0, 0), (reach[0],) * 2, (reach[1],) * 2), constant_values=-np.inf)
        grid = _running_max(_running_max(grid, reach[0] + 1, 1), reach[1] + 1, 2)
        pixels = grid.repeat(stride, axis=1).repeat(stride, axis=2)
    else:
        # cell (i, j) covers pixels [i*stride, i*stride + kernel): a max over the kernel - stride + 1 pixels before
        reach = (kh - stride, kw - stride)
        blocks = cells.repeat(stride, axis=1).repeat(stride, axis=2)
        blocks = np.pad(blocks, ((0, 0), (reach[0],) * 2, (reach[1],) * 2), constant_values=-np.inf)
        pixels = _running_max(_running_max(blocks, reach[0] + 1, 1), reach[1] + 1, 2)
    pixels = pixels[:, : layout.height, : layout.width]
    # the last stride - 1 rows and columns fall outside every cell when the stride does not divide evenly
    short = ((0, 0), (0, layout.height - pixels.shape[1]), (0, layout.width - pixels.shape[2]))
    return np.pad(pixels, short, mode="edge") if any(s[1] for s in short) else np.ascontiguousarray(pixels)
