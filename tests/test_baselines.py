import numpy as np
import pytest
from factories import road_frames, with_square

from anomaly.baselines import PCABaseline


def test_pca_scores_unusual_frames_higher():
    frames = road_frames(60, seed=3)
    pca = PCABaseline(width=32, height=16).fit(frames[:40])
    clean = pca.score(frames[40:])
    changed = pca.score(np.stack([with_square(f, frac=0.4) for f in frames[40:]]))
    assert (changed > clean).all()
    assert pca.pca.n_components_ <= 39


def test_pca_must_be_fit_first():
    with pytest.raises(ValueError, match="fit"):
        PCABaseline().score(road_frames(2))
