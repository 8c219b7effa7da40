import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from anomaly.config import PreprocessConfig
from anomaly.preprocess import Preprocessor, resize_to

CFG = PreprocessConfig(width=32, height=24)


def constant_bgr(h: int, w: int, bgr: tuple[int, int, int]) -> np.ndarray:
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = bgr
    return frame


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", [(30, 24), (32, 20), (33, 33)])
def test_size_must_be_a_multiple_of_8(width, height):
    with pytest.raises(ValidationError, match="multiples of 8"):
        PreprocessConfig(width=width, height=height)


@pytest.mark.parametrize(
    "roi",
    [
        (0.5, 0.0, 0.5, 1.0),  # empty width
        (0.0, 0.6, 1.0, 0.4),  # y1 < y0
        (-0.1, 0.0, 1.0, 1.0),  # outside the frame
        (0.0, 0.0, 1.0, 1.2),
    ],
)
def test_bad_roi_is_rejected(roi):
    with pytest.raises(ValidationError, match="roi"):
        PreprocessConfig(width=32, height=24, roi=roi)


def test_non_positive_std_is_rejected():
    with pytest.raises(ValidationError, match="std"):
        PreprocessConfig(width=32, height=24, std=(0.25, 0.0, 0.25))


def test_config_errors_are_value_errors():
    # callers (CLI, HTTP) catch ValueError; pydantic's ValidationError is one
    with pytest.raises(ValueError):
        PreprocessConfig(width=30, height=24)


# --- crop / prepare ------------------------------------------------------------------------------


def test_crop_takes_the_roi_fractions_of_the_source():
    pre = Preprocessor(PreprocessConfig(width=32, height=24, roi=(0.25, 0.5, 0.75, 1.0)))
    frame = np.arange(48 * 64 * 3, dtype=np.int64).reshape(48, 64, 3).astype(np.uint8)
    np.testing.assert_array_equal(pre.crop(frame), frame[24:48, 16:48])


def test_crop_without_roi_is_the_whole_frame():
    frame = np.zeros((48, 64, 3), np.uint8)
    assert Preprocessor(CFG).crop(frame) is frame


def test_prepare_keeps_only_the_roi():
    # left half blue, right half red (BGR); the ROI is the right half
    frame = constant_bgr(48, 64, (255, 0, 0))
    frame[:, 32:] = (0, 0, 255)
    pre = Preprocessor(PreprocessConfig(width=32, height=24, roi=(0.5, 0.0, 1.0, 1.0)))
    out = pre.prepare(frame)
    assert out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out[..., 0], 255)  # RGB: red everywhere
    np.testing.assert_array_equal(out[..., 2], 0)


@pytest.mark.parametrize("h,w", [(24, 32), (48, 64), (150, 200), (12, 16), (100, 40)])
def test_prepare_resizes_to_model_size(h, w):
    out = Preprocessor(CFG).prepare(constant_bgr(h, w, (10, 120, 230)))
    assert out.shape == (24, 32, 3)
    assert out.dtype == np.uint8
    # a flat frame stays flat at any scale
    np.testing.assert_array_equal(out.reshape(-1, 3), np.tile([230, 120, 10], (24 * 32, 1)))


def test_resize_to_downscale_is_close_to_the_area_filter():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (540, 960, 3), dtype=np.uint8), (0, 0), 3)
    fast = resize_to(image, 128, 72).astype(np.float64)
    area = cv2.resize(image, (128, 72), interpolation=cv2.INTER_AREA).astype(np.float64)
    assert fast.shape == (72, 128, 3)
    assert np.abs(fast - area).mean() < 1.0


def test_prepare_converts_bgr_to_rgb():
    out = Preprocessor(CFG).prepare(constant_bgr(48, 64, (10, 20, 30)))
    np.testing.assert_array_equal(out[0, 0], [30, 20, 10])


def test_prepare_accepts_grayscale():
    out = Preprocessor(CFG).prepare(np.full((48, 64), 77, np.uint8))
    assert out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, 77)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((48, 64, 3), np.float32),
        np.zeros((48, 64, 3), np.uint16),
        np.zeros((48, 64, 4), np.uint8),  # BGRA
        np.zeros((48, 64, 1), np.uint8),
        np.zeros((2, 48, 64, 3), np.uint8),  # a batch is not a frame
        np.zeros((48, 64), np.float32),  # grayscale of the wrong dtype
        np.zeros(64, np.uint8),
    ],
    ids=["float32", "uint16", "bgra", "one-channel", "batch", "gray-float32", "1d"],
)
def test_prepare_rejects_bad_frames(frame):
    with pytest.raises(ValueError, match="uint8 BGR"):
        Preprocessor(CFG).prepare(frame)


@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_prepare_rejects_grayscale_of_unsupported_dtype_with_value_error(dtype):
    with pytest.raises(ValueError):
        Preprocessor(CFG).prepare(np.zeros((48, 64), dtype))


def test_prepare_rejects_empty_frame_with_value_error():
    with pytest.raises(ValueError):
        Preprocessor(CFG).prepare(np.zeros((0, 64, 3), np.uint8))


# --- to_tensor / to_uint8 ------------------------------------------------------------------------


def test_to_tensor_shape_dtype_and_normalisation():
    pre = Preprocessor(CFG)
    frames = [np.full((24, 32, 3), v, np.uint8) for v in (0, 255, 115)]
    x = pre.to_tensor(frames)
    assert x.shape == (3, 3, 24, 32)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.full((3, 24, 32), (0.0 - 0.45) / 0.25))
    torch.testing.assert_close(x[1], torch.full((3, 24, 32), (1.0 - 0.45) / 0.25))
    torch.testing.assert_close(x[2], torch.full((3, 24, 32), (115 / 255 - 0.45) / 0.25))
    # NCHW in memory too, not a channels-last view of the frames: scoring's tensors inherit the layout
    assert x.is_contiguous()


def test_to_tensor_uses_per_channel_mean_and_std_in_rgb_order():
    pre = Preprocessor(PreprocessConfig(width=32, height=24, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125)))
    frame = np.zeros((24, 32, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 255, 0, 51  # R, G, B
    x = pre.to_tensor(frame[None])
    expected = [(1.0 - 0.1) / 0.5, (0.0 - 0.2) / 0.25, (0.2 - 0.3) / 0.125]
    for c in range(3):
        torch.testing.assert_close(x[0, c], torch.full((24, 32), expected[c]))


def test_to_tensor_accepts_a_list_or_a_batch_array():
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)
    pre = Preprocessor(CFG)
    torch.testing.assert_close(pre.to_tensor(batch), pre.to_tensor(list(batch)), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 32, 24, 3), (2, 24, 32, 1), (24, 32, 3)])
def test_to_tensor_rejects_frames_of_the_wrong_size(shape):
    with pytest.raises(ValueError, match="prepared frames"):
        Preprocessor(CFG).to_tensor(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_tensor_rejects_frames_that_are_not_uint8(dtype):
    with pytest.raises(ValueError):
        Preprocessor(CFG).to_tensor(np.full((1, 24, 32, 3), 255, dtype))


@pytest.mark.parametrize(
    "cfg", [CFG, PreprocessConfig(width=32, height=24, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))]
)
def test_to_uint8_inverts_to_tensor(cfg):
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (5, 24, 32, 3), dtype=np.uint8)
    pre = Preprocessor(cfg)
    back = pre.to_uint8(pre.to_tensor(frames))
    assert back.shape == frames.shape
    assert back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.astype(int)).max() <= 1


def test_prepare_then_to_tensor_end_to_end():
    pre = Preprocessor(CFG)
    x = pre.to_tensor([pre.prepare(constant_bgr(720, 1280, (0, 0, 255)))])
    assert x.shape == (1, 3, 24, 32)
    torch.testing.assert_close(x[0, 0], torch.full((24, 32), (1.0 - 0.45) / 0.25))  # red channel first
    torch.testing.assert_close(x[0, 2], torch.full((24, 32), (0.0 - 0.45) / 0.25))


def test_to_tensor_equals_torchvisions_normalisation_bit_for_bit():
    tv = pytest.importorskip("torchvision.transforms.v2.functional")
    pre = Preprocessor(PreprocessConfig(width=32, height=24))
    frames = np.random.default_rng(0).integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    expected = tv.normalize(tv.to_dtype(x, torch.float32, scale=True), list(pre.config.mean), list(pre.config.std))
    assert torch.equal(pre.to_tensor(frames), expected)
