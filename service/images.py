"""Uploaded bytes -> BGR frame, with the limits checked before any pixel is decoded.

The width and height are read from the JPEG or PNG header first: a 100 kB file can declare a
40000x40000 image, and OpenCV would try to allocate it. Only then does `cv2.imdecode` run (the
same call `anomaly score` uses for image folders, so both see the same pixels). These functions
are blocking; the service calls them in a worker thread, never on the event loop.
"""

from __future__ import annotations

import base64
import struct

import cv2
import numpy as np

from anomaly.preprocess import Preprocessor
from footage.heatmap import heat_overlay
from service.errors import ServiceError
from service.settings import Limits

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length field


def not_an_image(detail: str = "the body is not a JPEG or PNG image") -> ServiceError:
    return ServiceError(415, "unsupported_image", detail)


def corrupt(detail: str) -> ServiceError:
    return ServiceError(400, "corrupt_image", detail)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first start-of-frame segment, walking the marker segments before it."""
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise corrupt("JPEG header is malformed (expected a marker)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            raise corrupt("JPEG has no frame header before its image data")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise corrupt("JPEG header is malformed (bad segment length)")
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise corrupt("JPEG is truncated before its frame header")


def png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise corrupt("PNG is truncated or its header is malformed")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def image_size(data: bytes) -> tuple[str, int, int]:
    """("jpeg" | "png", width, height) from the header alone."""
    if data.startswith(PNG_SIGNATURE):
        return ("png", *png_size(data))
    if data.startswith(JPEG_SOI):
        return ("jpeg", *jpeg_size(data))
    raise not_an_image()


def check_size(width: int, height: int, limits: Limits) -> None:
    if width == 0 or height == 0:
        raise corrupt(f"image header declares an empty image ({width}x{height})")
    if width > limits.max_width or height > limits.max_height:
        raise ServiceError(
            413,
            "image_too_large",
            f"image is {width}x{height}; the service accepts at most {limits.max_width}x{limits.max_height}",
        )


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """A JPEG or PNG upload -> HxWx3 uint8 BGR, or a ServiceError (4xx) saying what is wrong with it."""
    if not data:
        raise ServiceError(400, "empty_body", "no image data was sent")
    if len(data) > limits.max_body_bytes:
        raise ServiceError(413, "body_too_large", f"image is {len(data)} bytes; the limit is {limits.max_body_bytes}")
    kind, width, height = image_size(data)
    check_size(width, height, limits)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise corrupt(f"the {kind.upper()} image could not be decoded (truncated or corrupt)")
    return image


def heatmap_png_base64(frame_bgr: np.ndarray, heat: np.ndarray, threshold: float, preprocessor: Preprocessor) -> str:
    """The frame with its error heat map overlaid, as a base64 PNG (same colouring as annotated videos)."""
    overlay = heat_overlay(frame_bgr, heat, preprocessor, threshold)
    ok, png = cv2.imencode(".png", overlay)
    if not ok:  # pragma: no cover - encoding a valid uint8 image does not fail
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(png.tobytes()).decode("ascii")
