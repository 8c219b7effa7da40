"""Typed configuration. One object per concern, built by the CLI or HTTP layer and passed down.

The preprocessing and model sections travel inside every checkpoint, so a model is always
scored with exactly the settings it was trained with.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Device = Literal["auto", "cpu", "cuda"]
# How a frame's calibrated z-scores make its score (`anomaly.frame_scores.combine`).
Combination = Literal["max", "logmeanexp"]
# The raw signals one pass through the networks gives (see anomaly.scoring); each has a score field.
SIGNAL_NAMES = (
    "spatial",
    "latent",
    "recon",
    "disc",
    "knn",
    "local",
    "disc_patch",
    "patch",
    "image",
    "defect",
    "defect_local",
    "pca",
    "tear",
)
# Signals too costly to compute for every frame when the score does not use them (see anomaly.scoring):
# `patch` costs about as much as the networks' pass, the discriminator's two a fifth of it, `local` a tenth,
# `image` nearly as much as `patch` (in torch on one thread: 1.3 and 1.4 ms a frame, `local` 0.2), `defect`
# (the defect finder's pass) about as much as the discriminator's, `defect_local` (its cells against the
# memory's, once the finder has run) about as much as `local`.
COSTLY_SIGNALS = frozenset({"patch", "local", "disc", "disc_patch", "image", "defect", "defect_local"})
# The signals that need the discriminator's pass, and those that need the defect finder's.
DISCRIMINATOR_SIGNALS = frozenset({"disc", "disc_patch"})
FINDER_SIGNALS = frozenset({"defect", "defect_local"})


def costly_signals_computed(signals: tuple[str, ...] | list[str], all_signals: bool) -> frozenset[str]:
    """The costly signals a scorer computes: those the score uses, or all of them when asked for every
    signal. The discriminator's two come together: once it runs for one, the other costs nothing."""
    if all_signals:
        return COSTLY_SIGNALS
    chosen = COSTLY_SIGNALS & frozenset(signals)
    return chosen | DISCRIMINATOR_SIGNALS if chosen & DISCRIMINATOR_SIGNALS else chosen


# The default score's signals, and those of a model trained without a defect finder (`disc_patch`,
# the discriminator's patch map, where the finder's two would be): see the README's fleet figures.
# `recon` and `knn` cost nothing (every scorer computes them) and speak for what is frame-wide: a torn or
# washed-out frame raises the error everywhere a little, a frame unlike every normal one sits far from
# its nearest memory frames. In the log-mean-exp they add +0.003 to +0.006 over all kinds on each of eleven
# fleet runs (none lower), and a camera tipped down at the road is found on every seed (README, *Two free
# signals*). `pca` (the PCA baseline's residual of the frame's thumbnail) costs next to nothing too and
# sees the frame's layout, which the networks' features pool away: a rolled camera and glare rise on every
# seed, no kind lower by more than 0.001 (README, *The PCA residual as a signal*). `tear` (each row boundary's
# change of luminance against its normal range, no network) finds the seam of a torn frame: torn frames
# +0.031 to +0.040 on every seed, other kinds within 0.003 (README, *A torn frame's seam*).
DEFAULT_SIGNALS = ("spatial", "latent", "knn", "recon", "patch", "image", "defect_local", "pca", "tear")
SIGNALS_WITHOUT_FINDER = ("spatial", "latent", "patch", "disc_patch", "image")


def default_signals(finder: bool) -> tuple[str, ...]:
    return DEFAULT_SIGNALS if finder else SIGNALS_WITHOUT_FINDER


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PreprocessConfig(_Frozen):
    """Geometry and normalisation applied to every frame before the model sees it."""

    width: int = Field(128, ge=16, le=1024, description="model input width (multiple of 8)")
    height: int = Field(72, ge=16, le=1024, description="model input height (multiple of 8)")
    roi: tuple[float, float, float, float] | None = Field(
        None, description="region of interest as fractions (x0, y0, x1, y1) of the source frame"
    )
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    @model_validator(mode="after")
    def _check(self) -> PreprocessConfig:
        if self.width % 8 or self.height % 8:
            raise ValueError(f"input size {self.width}x{self.height}: width and height must be multiples of 8")
        if self.roi is not None:
            x0, y0, x1, y1 = self.roi
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise ValueError(f"roi {self.roi}: need 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        if min(self.std) <= 0:
            raise ValueError("std must be positive")
        return self


class ModelConfig(_Frozen):
    """Network widths. Small by default: training takes minutes on a laptop CPU."""

    widths: tuple[int, int, int] = (16, 32, 64)
    latent_channels: int = Field(8, ge=1, le=512)
    disc_widths: tuple[int, int, int] = (16, 32, 64)
    finder_widths: tuple[int, int, int] | None = Field(
        (16, 32, 64),
        description="widths of the defect finder (anomaly.model.DefectFinder); None: no finder (models of "
        "checkpoint format 4 and older, which had none)",
    )
    finder_count: int = Field(
        3,
        ge=1,
        le=8,
        description="defect finders trained apart and averaged (anomaly.model.DefectFinders); three by default, "
        "as a weak training run's finders are what the averaging evens out; models of checkpoint format 5 "
        "and older have one",
    )


class LossConfig(_Frozen):
    """Weights of the generator's loss terms (reconstruction is weighted 1)."""

    adversarial: float = Field(0.02, ge=0.0)
    l1: float = Field(1.0, ge=0.0, description="weight of L1 next to the squared error")
    defect: float = Field(
        1.0, ge=0.0, description="weight of the discriminator loss on synthetic defects (anomaly.training.defects)"
    )


class TrainConfig(_Frozen):
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    disc_lr: float = Field(2e-4, gt=0)
    seed: int = 0
    holdout_fraction: float = Field(
        0.25, gt=0.0, lt=0.9, description="tail (in time) of each source kept out of training for calibration"
    )
    max_train_frames: int = Field(20000, ge=8)
    shift_pixels: int = Field(
        4, ge=0, le=32, description="random translation of training frames, so the autoencoder cannot memorise them"
    )
    checkpoint_every: int = Field(250, ge=1, description="steps between resumable training-state saves")
    defect_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of each batch given generic synthetic defects: the discriminator learns to find them "
        "(and with restore_defects the autoencoder to restore them)",
    )
    restore_defects: bool = Field(
        True,
        description="train the autoencoder to restore the synthetic defects (DRAEM); False: it sees only clean "
        "frames and only the discriminator learns the defects",
    )
    finder_defect_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of each batch the defect finder sees with generic synthetic defects (the rest clean)",
    )
    finder_updates: int = Field(
        1,
        ge=1,
        le=8,
        description="updates of the defect finder per training step, each on the step's frames with other "
        "synthetic defects (the pair's randomness does not depend on it)",
    )
    finder_lr: float = Field(1e-3, gt=0, description="learning rate of the defect finder")
    device: Device = "auto"
    loss: LossConfig = LossConfig()


class CalibrationConfig(_Frozen):
    """How raw signals become one calibrated score and a threshold."""

    target_false_alarm_rate: float = Field(0.01, gt=0.0, lt=0.5)
    error_pool: int = Field(20, ge=1, description="side (model pixels) of the cells the error map is averaged over")
    # Cells every 2 model pixels, not 4 (models calibrated before keep their 4): a small object (5-9 pixels
    # at 128x72) then fills more of its best-placed cell, in the error map and the frame's own statistics.
    # On the fleet benchmark, the same networks recalibrated: all kinds 0.913/0.887/0.880/0.850 -> 0.923/
    # 0.893/0.888/0.845 over four seeds, small objects +0.010-0.025; 1.6-2.5 ms a frame more in PyTorch (README).
    error_stride: int = Field(2, ge=1, description="step (model pixels) between neighbouring cells")
    error_blur_sigma: float = Field(
        1.0, ge=0.0, le=8.0, description="Gaussian blur (model pixels) of frame and reconstruction before the heat map"
    )
    max_stat_frames: int = Field(3000, ge=10, description="training frames used to fit normal statistics")
    cell_quantile: float = Field(
        0.99, gt=0.5, lt=1.0, description="cell errors count in units of (this quantile - median) on normal frames"
    )
    spread_floor: float = Field(
        0.1, ge=0.0, lt=1.0, description="per-cell spread floor, as a fraction of the median cell's spread"
    )
    latent_components: int = Field(8, ge=1, le=256, description="principal components of the latent distance")
    signals: tuple[str, ...] = Field(
        DEFAULT_SIGNALS,
        min_length=1,
        description="signals whose calibrated z-scores are combined",
    )
    combination: Combination = Field(
        "logmeanexp",
        description="how the signals' z-scores make the score: their log-mean-exp (a smooth maximum: several "
        "raised signals add up) or their maximum (the rule of every model calibrated before there was a choice)",
    )
    memory_size: int = Field(
        1000, ge=1, le=100_000, description="normal frames kept in the memory (a greedy k-centre coreset)"
    )
    knn_k: int = Field(5, ge=1, le=100, description="nearest memory frames whose mean distance is the knn signal")
    thumbnail_width: int = Field(
        64, ge=4, le=1024, description="about how many pixels wide the frame's thumbnail is (the pca signal)"
    )
    thumbnail_variance: float = Field(
        0.95, gt=0.0, le=1.0, description="share of normal thumbnails' variance the pca signal's components explain"
    )
    thumbnail_components: int = Field(
        64, ge=1, le=512, description="most principal components of normal thumbnails the pca signal keeps"
    )
    local_neighbours: int = Field(
        30, ge=2, le=1000, description="nearest memory frames whose cells give each cell's normal range (local)"
    )
    local_quantile: float = Field(
        0.9, gt=0.5, lt=1.0, description="local cell errors count in units of (this quantile - median) of neighbours"
    )
    local_floor: float = Field(
        0.5, ge=0.0, le=1.0, description="local cell spread floor, as a fraction of that cell's pooled spread"
    )
    image_shift: int = Field(
        1, ge=0, le=4, description="cells (grid steps) up, down, left or right of its own a cell's statistics may match"
    )
    patch_neighbours: int = Field(
        10, ge=1, le=1000, description="nearest memory frames whose feature patches a frame's are measured against"
    )
    patch_shift: int = Field(
        1, ge=0, le=4, description="positions beside its own (in the deepest feature map) a patch may be matched at"
    )
    patch_quantile: float = Field(
        0.9, gt=0.5, lt=1.0, description="patch distances count in units of (this quantile - median) per position"
    )
    patch_floor: float = Field(
        0.5, ge=0.0, le=1.0, description="per-position patch spread floor, as a fraction of the median position's"
    )
    camera_blocks: int = Field(
        4, ge=2, le=50, description="time blocks per source for cross-fitted camera calibration (anomaly calibrate)"
    )
    scene_baseline: bool = Field(
        True,
        description="measure the fleet profile's score from the normal level of the held-out frames that look "
        "like the frame (anomaly.scene_baseline; needs two or more held-out sources)",
    )

    @model_validator(mode="after")
    def _check(self) -> CalibrationConfig:
        if self.error_stride > self.error_pool:
            raise ValueError(f"error_stride {self.error_stride} > error_pool {self.error_pool}: cells would leave gaps")
        unknown = set(self.signals) - set(SIGNAL_NAMES)
        if unknown:
            raise ValueError(f"unknown signals {sorted(unknown)}: choose from {', '.join(SIGNAL_NAMES)}")
        return self


class DetectorConfig(_Frozen):
    """Everything that defines a trained detector; stored whole in its checkpoint."""

    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    calibration: CalibrationConfig = CalibrationConfig()

    @model_validator(mode="after")
    def _check_shift_fits(self) -> DetectorConfig:
        # random_shift reflect-pads by shift_pixels, which needs a frame larger than the shift
        smallest = min(self.preprocess.width, self.preprocess.height)
        if self.train.shift_pixels >= smallest // 2:
            raise ValueError(
                f"train.shift_pixels={self.train.shift_pixels} is too large for a "
                f"{self.preprocess.width}x{self.preprocess.height} input: use less than {smallest // 2}"
            )
        return self
