import numpy as np
import pytest
import torch
from factories import TINY, road_frames, with_square

from anomaly.checkpoint import load_detector
from anomaly.preprocess import Preprocessor
from anomaly.training.train import TrainingData
from evaluation.baselines import AE_ONLY_SIGNALS, AutoencoderOnlyBaseline, PCABaseline, ae_only_config


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


def test_ae_only_config_switches_off_the_adversarial_part_only():
    config = ae_only_config(TINY, steps=7)
    assert config.train.loss.adversarial == 0.0
    assert config.train.steps == 7
    assert config.calibration.signals == AE_ONLY_SIGNALS
    assert (config.preprocess, config.model, config.train.seed) == (TINY.preprocess, TINY.model, TINY.train.seed)
    assert ae_only_config(TINY).train.steps == TINY.train.steps


@pytest.mark.slow
def test_ae_only_scores_unusual_frames_higher(tmp_path):
    pre = Preprocessor(TINY.preprocess)
    normal = np.stack([pre.prepare(f) for f in road_frames(60, seed=1)])
    baseline = AutoencoderOnlyBaseline(TINY, steps=30).fit(
        TrainingData.split([normal], 0.3), tmp_path / "ae.pt", log=lambda _: None
    )
    test = road_frames(12, seed=2)
    clean = baseline.score(np.stack([pre.prepare(f) for f in test]), batch_size=5)
    changed = baseline.score(np.stack([pre.prepare(with_square(f, frac=0.4)) for f in test]), batch_size=5)
    assert set(clean) == {"score", "recon", "spatial"} and len(clean["score"]) == 12
    assert (changed["recon"] > clean["recon"]).all()
    assert changed["score"].mean() > clean["score"].mean()
    saved = load_detector(tmp_path / "ae.pt", torch.device("cpu"))  # a complete detector, adversarial weight 0
    assert saved.config.train.loss.adversarial == 0.0
    assert saved.calibrated.signals == AE_ONLY_SIGNALS


def test_ae_only_must_be_fit_first():
    with pytest.raises(ValueError, match="fit"):
        AutoencoderOnlyBaseline(TINY).score(np.zeros((1, 24, 32, 3), np.uint8))
