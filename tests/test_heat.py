"""The heat map from its cells: each pixel's worst covering cell, made only when something draws it."""

import numpy as np
import pytest
import torch

from anomaly.frame_scores import frame_scores
from anomaly.heat import HeatLayout, cells_to_pixels
from anomaly.scoring import pool_errors

GEOMETRIES = [
    ((24, 32), 4, 2),
    ((72, 128), 20, 4),
    ((70, 127), 20, 4),
    ((24, 32), 5, 2),
    ((30, 41), 7, 3),
    ((16, 40), 20, 4),
]


@pytest.mark.parametrize(("size", "cell", "stride"), GEOMETRIES)
def test_cells_to_pixels_gives_each_pixel_its_worst_covering_cell(size, cell, stride):
    gen = torch.Generator().manual_seed(0)
    cells = pool_errors(torch.rand(2, *size, generator=gen), cell, stride).numpy()
    pixels = cells_to_pixels(cells, HeatLayout(*size, cell, stride))
    expected = np.full((2, *size), -1.0, np.float32)
    for i in range(cells.shape[1]):
        for j in range(cells.shape[2]):
            block = expected[:, i * stride : i * stride + cell, j * stride : j * stride + cell]
            block[:] = np.maximum(block, cells[:, i, j, None, None])
    last_y, last_x = (cells.shape[1] - 1) * stride + cell, (cells.shape[2] - 1) * stride + cell
    expected[:, last_y:] = expected[:, last_y - 1 : last_y]  # rows and columns past the last cell copy its edge
    expected[:, :, last_x:] = expected[:, :, last_x - 1 : last_x]
    assert pixels.dtype == np.float32 and pixels.shape == (2, *size)
    np.testing.assert_array_equal(pixels, expected)


def test_batch_heat_map_is_made_on_first_use_and_rows_match_it():
    cells = np.random.default_rng(0).normal(size=(3, 11, 15)).astype(np.float32)
    layout = HeatLayout(24, 32, 4, 2)
    signals = {"spatial": cells.reshape(3, -1).max(1), "latent": np.zeros(3)}
    scores = frame_scores(
        signals, cells, layout, loc={"spatial": 0.0}, scale={"spatial": 1.0}, names=["spatial"], threshold=1.0,
        profile="fleet",
    )  # fmt: skip
    assert "heatmap" not in vars(scores)  # scoring alone makes no pixels
    pixels = scores.heatmap
    assert pixels.shape == (3, 24, 32) and scores.heatmap is pixels  # made once
    for i, row in enumerate(scores.rows()):
        np.testing.assert_array_equal(row.heatmap, pixels[i])
        assert row.heatmap.max() == pytest.approx(float(cells[i].max()))
    assert scores.disc_score is None and scores.rows()[0].disc_score is None  # a signal not computed
