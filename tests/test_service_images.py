"""Decoding uploads: header sizes, limits before decoding, clear 4xx errors, the same pixels as `anomaly score`."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from anomaly.config import PreprocessConfig
from anomaly.preprocess import Preprocessor
from footage.heatmap import heat_overlay
from service.errors import ServiceError
from service.images import decode_image, heatmap_png_base64, image_size
from service.settings import Limits

FRAME = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8), (9, 9), 3)
LIMITS = Limits(max_width=320, max_height=200)


def encode(ext: str, image: np.ndarray = FRAME, *params: int) -> bytes:
    return cv2.imencode(ext, image, list(params))[1].tobytes()


def code_of(data: bytes, limits: Limits = LIMITS) -> tuple[int, str]:
    with pytest.raises(ServiceError) as err:
        decode_image(data, limits)
    return err.value.status, err.value.code


def test_sizes_come_from_the_headers() -> None:
    assert image_size(encode(".png")) == ("png", 160, 90)
    assert image_size(encode(".jpg")) == ("jpeg", 160, 90)
    assert image_size(encode(".jpg", FRAME, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)) == ("jpeg", 160, 90)


def test_decoded_pixels_are_what_imdecode_gives_the_batch_scorer() -> None:
    for ext in (".png", ".jpg"):
        data = encode(ext)
        np.testing.assert_array_equal(decode_image(data, LIMITS), cv2.imdecode(np.frombuffer(data, np.uint8), 1))
    grey = encode(".png", cv2.cvtColor(FRAME, cv2.COLOR_BGR2GRAY))
    assert decode_image(grey, LIMITS).shape == (90, 160, 3)


def test_bad_uploads_are_4xx_with_a_code() -> None:
    jpg, png = encode(".jpg"), encode(".png")
    assert code_of(b"") == (400, "empty_body")
    assert code_of(b"GIF89a......") == (415, "unsupported_image")
    assert code_of(encode(".bmp")) == (415, "unsupported_image")
    assert code_of(jpg[: len(jpg) // 2]) == (400, "corrupt_image")
    assert code_of(jpg[:-2]) == (400, "corrupt_image")  # only the end-of-image marker missing
    assert code_of(jpg[:40]) == (400, "corrupt_image")  # cut inside the headers
    assert code_of(png[: len(png) // 2]) == (400, "corrupt_image")
    assert code_of(png[:20]) == (400, "corrupt_image")
    scrambled = bytearray(png)
    scrambled[60:200] = bytes(140)
    assert code_of(bytes(scrambled)) == (400, "corrupt_image")


def test_limits_are_checked_before_decoding() -> None:
    wide = encode(".png", np.zeros((10, 400, 3), np.uint8))
    assert code_of(wide) == (413, "image_too_large")
    # a header that declares a huge image is refused without allocating it
    bomb = bytearray(encode(".png"))
    bomb[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")
    assert code_of(bytes(bomb)) == (413, "image_too_large")
    assert code_of(encode(".png"), Limits(max_body_bytes=1024)) == (413, "body_too_large")


def test_heatmap_png_is_the_annotated_video_overlay_losslessly() -> None:
    heat = np.zeros((5, 9), np.float32)
    heat[2, 4] = 10.0
    pre = Preprocessor(PreprocessConfig(width=32, height=24))
    data = base64.b64decode(heatmap_png_base64(FRAME, heat, 2.0, pre))
    overlay = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(overlay, heat_overlay(FRAME, heat, pre, threshold=2.0))
    hot = np.abs(overlay[40:50, 75:85].astype(int) - FRAME[40:50, 75:85]).mean()
    cold = np.abs(overlay[:10, :10].astype(int) - FRAME[:10, :10]).mean()
    assert hot > 2 * cold
