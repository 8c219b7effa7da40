"""Baselines the model has to beat to earn its keep.

`PCABaseline` is the classic linear latent-variable model: project a small copy of the frame onto
the principal components of normal frames and score it by what the projection cannot explain.
It is cheap, has no training loop and is surprisingly strong on global changes, so the report
puts its AUROC next to the model's.
"""

from __future__ import annotations

import cv2
import numpy as np
from sklearn.decomposition import PCA


class PCABaseline:
    def __init__(self, width: int = 64, height: int = 36, variance: float = 0.95, max_components: int = 64) -> None:
        self.size = (width, height)
        self.variance = variance
        self.max_components = max_components
        self.pca: PCA | None = None

    def vectors(self, frames: np.ndarray) -> np.ndarray:
        """Frames (N x H x W x 3 uint8, any size) -> N x (w*h*3) floats in 0..1."""
        small = [cv2.resize(f, self.size, interpolation=cv2.INTER_AREA) for f in frames]
        return np.stack(small).reshape(len(frames), -1).astype(np.float32) / 255.0

    def fit(self, frames: np.ndarray) -> PCABaseline:
        x = self.vectors(frames)
        probe = PCA(
            n_components=min(self.max_components, len(x) - 1, x.shape[1]), svd_solver="randomized", random_state=0
        )
        probe.fit(x)
        keep = int(np.searchsorted(np.cumsum(probe.explained_variance_ratio_), self.variance) + 1)
        self.pca = PCA(n_components=min(keep, probe.n_components_), svd_solver="randomized", random_state=0).fit(x)
        return self

    def score(self, frames: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error per frame (higher = more unusual)."""
        if self.pca is None:
            raise ValueError("fit the baseline on normal frames first")
        x = self.vectors(frames)
        recon = self.pca.inverse_transform(self.pca.transform(x))
        return ((x - recon) ** 2).mean(axis=1)
