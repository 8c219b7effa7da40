"""The one place frames are turned into model input: region of interest, resize, normalise.

Split in two steps on purpose. `prepare` (crop + resize, uint8) is cheap per-frame numpy work that
ingestion runs in its decode thread, so it overlaps with the model; `to_tensor` (normalise, batch)
runs next to the model. Both read the settings stored in the checkpoint. An exported model
(`anomaly.export`) carries `normalise` inside its graph, so only `prepare` runs outside it, and this
module imports torch only when a tensor is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from anomaly.config import PreprocessConfig

if TYPE_CHECKING:
    import torch


def resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Anti-aliased downscale that is cheap at any ratio.

    OpenCV's area filter is fast only for integer ratios (960x540 -> 128x72 takes 1.5 ms, as long as
    decoding the frame). Bilinear to twice the target, then a 2x area step, takes 0.1 ms and differs
    from the pure area filter by under one grey level on average.
    """
    ih, iw = image.shape[:2]
    if ih > 2 * height and iw > 2 * width:
        image = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    shrinking = ih >= height and iw >= width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


class Preprocessor:
    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of prepared frames."""
        return self.config.height, self.config.width

    def crop(self, bgr: np.ndarray) -> np.ndarray:
        """The ROI of a source frame, at source resolution (also used to place heat maps)."""
        if self.config.roi is None:
            return bgr
        h, w = bgr.shape[:2]
        x0, y0, x1, y1 = self.config.roi
        c0, r0 = int(round(x0 * w)), int(round(y0 * h))
        c1, r1 = max(c0 + 1, int(round(x1 * w))), max(r0 + 1, int(round(y1 * h)))
        return bgr[r0:r1, c0:c1]

    def prepare(self, bgr: np.ndarray) -> np.ndarray:
        """Source BGR frame of any size -> RGB uint8 at the model's input size."""
        if bgr.dtype != np.uint8 or bgr.ndim not in (2, 3) or (bgr.ndim == 3 and bgr.shape[2] != 3) or bgr.size == 0:
            raise ValueError(f"expected an HxWx3 uint8 BGR frame, got shape {bgr.shape} dtype {bgr.dtype}")
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        roi = self.crop(bgr)
        h, w = self.size
        if roi.shape[:2] != (h, w):
            roi = resize_to(roi, w, h)
        return cv2.cvtColor(roi, cv2.COLOR_BGR2RGB)

    def to_tensor(
        self, prepared: Sequence[np.ndarray] | np.ndarray, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Prepared RGB uint8 frames -> normalised float NCHW batch on `device`."""
        batch = np.ascontiguousarray(np.stack(prepared) if not isinstance(prepared, np.ndarray) else prepared)
        if batch.shape[1:] != (*self.size, 3):
            raise ValueError(f"prepared frames must be {self.size[1]}x{self.size[0]} RGB, got {batch.shape[1:]}")
        if batch.dtype != np.uint8:
            raise ValueError(f"prepared frames must be uint8 (0..255), got {batch.dtype}")
        import torch

        return normalise(torch.from_numpy(batch).to(device, non_blocking=True), self.config)

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """Inverse of `to_tensor` (for previews of reconstructions): NCHW float -> NHWC RGB uint8."""
        import torch

        mean = torch.tensor(self.config.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std, device=x.device).view(1, 3, 1, 1)
        img = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
        return img.permute(0, 2, 3, 1).cpu().numpy()


def normalise(frames: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Prepared frames (N x H x W x 3 uint8 RGB, a tensor) -> the normalised float NCHW batch the model takes."""
    import torch

    # contiguous NCHW, not a channels-last view of the NHWC frames: every float tensor made from it would
    # inherit that layout, and torch's CPU kernels copy 3-channel channels-last tensors back slowly (the
    # heat map's blur took 0.99 ms a frame on such a batch, 0.25 on a contiguous one)
    x = frames.permute(0, 3, 1, 2).contiguous()
    # uint8 -> 0..1 -> (x - mean) / std, in the same float operations torchvision's to_dtype/normalize use
    x = x.to(torch.float32).mul(1.0 / 255)
    mean = torch.as_tensor(config.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(config.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub(mean).div(std)
