"""Baselines the model has to beat to earn its keep.

`PCABaseline` is the classic linear latent-variable model: project a small copy of the frame onto
the principal components of normal frames and score it by what the projection cannot explain.
It is cheap, has no training loop and is surprisingly strong on global changes, so the report
puts its AUROC next to the model's.

`AutoencoderOnlyBaseline` is the same autoencoder trained without the adversarial term and scored
by its reconstruction error alone (the frame's mean error and its worst cell): what the GAN
discriminator and the latent distance add shows as the gap between it and the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.decomposition import PCA

from anomaly.config import DetectorConfig
from anomaly.detector import Detector
from anomaly.metrics import auroc, average_precision, kind_metrics
from anomaly.preprocess import Preprocessor
from anomaly.scoring import score_prepared
from anomaly.training.train import TrainingData, train_detector
from evaluation.config import EvaluationConfig
from evaluation.inputs import LabeledScores
from footage.ingest import expand_sources
from footage.sampling import SamplingConfig
from footage.training_frames import load_prepared_frames


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


AE_ONLY_SIGNALS = ("spatial", "recon")


def ae_only_config(config: DetectorConfig, steps: int | None = None) -> DetectorConfig:
    """`config` with the adversarial loss weight 0 and a score from reconstruction signals only."""
    train = config.train.model_copy(
        update={
            "loss": config.train.loss.model_copy(update={"adversarial": 0.0}),
            **({"steps": steps} if steps is not None else {}),
        }
    )
    calibration = config.calibration.model_copy(update={"signals": AE_ONLY_SIGNALS})
    return DetectorConfig.model_validate(
        {**config.model_dump(), "train": train.model_dump(), "calibration": calibration.model_dump()}
    )


class AutoencoderOnlyBaseline:
    """The detector's autoencoder without the adversarial part, trained and calibrated the same way."""

    def __init__(self, config: DetectorConfig, steps: int | None = None) -> None:
        self.config = ae_only_config(config, steps)
        self.detector: Detector | None = None

    def fit(
        self,
        data: TrainingData,
        out: Path,
        *,
        progress: bool = False,
        log: Callable[[str], None] = print,
    ) -> AutoencoderOnlyBaseline:
        """Train on normal prepared frames; the model file goes to `out` (it is a usable detector)."""
        self.detector = train_detector(self.config, data, out, progress=progress, log=log)
        return self

    def score(self, prepared: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Per prepared frame: the combined reconstruction score and its two signals."""
        if self.detector is None:
            raise ValueError("fit the baseline on normal frames first")
        parts: dict[str, list[np.ndarray]] = {"score": [], "recon": [], "spatial": []}
        for i in range(0, len(prepared), batch_size):
            s = score_prepared(self.detector, prepared[i : i + batch_size])
            parts["score"].append(s.score)
            parts["recon"].append(s.recon_error)
            parts["spatial"].append(s.spatial_score)
        return {k: np.concatenate(v) if v else np.array([]) for k, v in parts.items()}


def run_baselines(
    scored: LabeledScores,
    prepared: np.ndarray,
    base_config: DetectorConfig,
    config: EvaluationConfig,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """PCA and AE-only baselines trained on the normal clips and scored on the evaluated frames."""
    train_sources = expand_sources(list(config.baseline_train))
    pre = Preprocessor(base_config.preprocess)
    log(f"baselines: reading {len(train_sources)} normal clip(s) ...")
    per_source = load_prepared_frames(
        train_sources,
        SamplingConfig(),
        pre,
        base_config.train.max_train_frames,
        lambda src, err: log(f"warning: skipped {src}: {err}"),
    )
    labels, kinds = scored.labels, scored.kinds
    out: dict[str, Any] = {}

    log("baselines: PCA ...")
    pca = PCABaseline().fit(np.concatenate(per_source))
    pca_scores = pca.score(prepared)
    out["pca"] = {
        "label": "PCA",
        "description": f"reconstruction error of a {pca.pca.n_components_}-component PCA of 64x36 frames",
        "components": int(pca.pca.n_components_),
        "scores": pca_scores,
    }

    ae = AutoencoderOnlyBaseline(base_config, steps=config.baseline_steps)
    log(f"baselines: autoencoder without the adversarial part ({ae.config.train.steps} steps) ...")
    model_file = config.out_dir / "baselines" / "ae_only.pt"
    ae.fit(
        TrainingData.split(per_source, ae.config.train.holdout_fraction),
        model_file,
        progress=config.progress,
        log=log,
    )
    ae_scores = ae.score(prepared, batch_size=max(config.batch_size, 32))
    out["ae_only"] = {
        "label": "AE only",
        "description": "the same autoencoder trained without the adversarial loss, scored by its mean and worst-cell "
        "reconstruction error",
        "steps": ae.config.train.steps,
        "model_file": str(model_file),
        "scores": ae_scores["score"],
        "signals": {
            name: {
                "auroc": auroc(labels, ae_scores[name]),
                "auroc_per_kind": {k: v["auroc"] for k, v in kind_metrics(labels, kinds, ae_scores[name]).items()},
            }
            for name in ("recon", "spatial")
        },
    }
    for entry in out.values():
        s = entry["scores"]
        entry.update(
            auroc=auroc(labels, s),
            average_precision=average_precision(labels, s),
            per_kind=kind_metrics(labels, kinds, s),
        )
    return out
