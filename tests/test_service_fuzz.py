"""Property-based and schema-driven tests of the service (issue 13), bounded in time and deterministic.

- hypothesis: the image decoder, the multipart parser and the tag parsers only ever answer with a
  frame or a 4xx `ServiceError`, never another exception, and accepted tags keep every timestamp finite;
- schemathesis: requests generated from the app's own OpenAPI document, against a real server,
  with auth off and on: no 5xx, every status, content type, header and body as documented.

Every hypothesis run is derandomized (the same examples on every machine) and capped in examples.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import schemathesis
from factories import road_frames
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from servers import Model, Running, serving, settings_for

from anomaly.events import EventConfig, EventTracker
from service.app import create_app
from service.bodies import parse_multipart
from service.errors import ServiceError
from service.images import decode_image
from service.schemas import WebSocketFrameTag, parse_form_tag
from service.settings import MAX_FPS, MAX_FRAME_INDEX, MAX_TIMESTAMP_S, MIN_FPS, Limits, ServiceSettings
from service.streams import Stream

FUZZ = settings(derandomize=True, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits(max_body_bytes=64 * 1024, max_width=256, max_height=256)
FRAME = road_frames(1, seed=5)[0]
PNG = cv2.imencode(".png", FRAME)[1].tobytes()
JPEG = cv2.imencode(".jpg", FRAME)[1].tobytes()


# ---------------------------------------------------------------------------------------------
# the image decoder


@st.composite
def mangled_images(draw: st.DrawFn) -> bytes:
    """A real PNG or JPEG, then bit flips, a truncation, or a header claiming another size."""
    data = bytearray(draw(st.sampled_from([PNG, JPEG])))
    how = draw(st.sampled_from(["flip", "truncate", "size", "flip+truncate"]))
    if "flip" in how:
        for _ in range(draw(st.integers(1, 16))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    if "truncate" in how:
        data = data[: draw(st.integers(0, len(data)))]
    if how == "size":
        w, h = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
        if data.startswith(b"\x89PNG"):
            data[16:24] = struct.pack(">II", w, h)
            data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        else:
            sof = data.find(b"\xff\xc0")
            if sof > 0:
                data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _decoded_or_refused(data: bytes) -> None:
    try:
        image = decode_image(data, LIMITS)
    except ServiceError as exc:
        assert exc.status in (400, 413, 415), exc.status
        assert exc.detail and "\n" not in exc.detail
        return
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert 0 < image.shape[0] <= LIMITS.max_height and 0 < image.shape[1] <= LIMITS.max_width


@FUZZ
@given(st.one_of(st.binary(max_size=4096), st.binary(max_size=64).map(lambda b: b"\x89PNG\r\n\x1a\n" + b)))
def test_decoder_on_arbitrary_bytes_answers_an_image_or_a_4xx(data: bytes) -> None:
    _decoded_or_refused(data)


@FUZZ
@given(mangled_images())
def test_decoder_on_mangled_real_images_answers_an_image_or_a_4xx(data: bytes) -> None:
    _decoded_or_refused(data)


# ---------------------------------------------------------------------------------------------
# the multipart parser

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


@st.composite
def multipart_bodies(draw: st.DrawFn) -> bytes:
    """Well-formed parts with hostile names and sizes, then optionally cut or spliced with junk."""
    parts = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.text(max_size=20))
        filename = draw(st.none() | st.text(max_size=20))
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        header = draw(st.sampled_from(["Content-Disposition", "content-disposition", "X-Other"]))
        body = draw(st.binary(max_size=200))
        parts.append(f"--{BOUNDARY}\r\n{header}: {disposition}\r\n\r\n".encode("utf-8", "replace") + body + b"\r\n")
    data = b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if draw(st.booleans()) else b"")
    if draw(st.booleans()) and data:
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=50)) + data[cut:]
    return data


def _parsed_or_refused(content_type: str, body: bytes, max_parts: int) -> None:
    try:
        parts = parse_multipart(content_type, body, max_parts)
    except ServiceError as exc:
        assert exc.status in (400, 413), exc.status
        assert "\n" not in exc.detail
        return
    assert len(parts) <= max_parts
    assert all(isinstance(p.name, str) for p in parts)


@FUZZ
@given(multipart_bodies(), st.integers(1, 6))
def test_multipart_parser_answers_parts_or_a_4xx(body: bytes, max_parts: int) -> None:
    _parsed_or_refused(CONTENT_TYPE, body, max_parts)


@FUZZ
@given(st.text(st.characters(max_codepoint=255), max_size=80), st.binary(max_size=512))  # headers are latin-1
def test_multipart_parser_on_arbitrary_content_types_and_bytes(content_type: str, body: bytes) -> None:
    _parsed_or_refused(content_type, body, 4)


# ---------------------------------------------------------------------------------------------
# the tag parsers, and what the stream makes of accepted tags

numbers_as_text = st.one_of(
    st.text(max_size=30),
    st.integers().map(str),
    st.integers(min_value=10**18, max_value=10**500).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "0x10", " 7 ", "1_000", "١٢"]),
)


@FUZZ
@given(numbers_as_text, st.sampled_from(["frame_index", "timestamp_s"]))
def test_form_tags_are_in_range_or_a_422(raw: str, name: str) -> None:
    try:
        value = parse_form_tag(raw, name, 0)  # type: ignore[arg-type]
    except ServiceError as exc:
        assert (exc.status, exc.code) == (422, "invalid_tag")
        assert "\n" not in exc.detail and name in exc.detail
        return
    if name == "frame_index":
        assert isinstance(value, int) and 0 <= value <= MAX_FRAME_INDEX
    else:
        assert math.isfinite(value) and 0 <= value <= MAX_TIMESTAMP_S


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.text(max_size=10),
)


@FUZZ
@given(
    st.one_of(
        st.dictionaries(st.sampled_from(["frame_index", "timestamp_s", "other"]), json_values, max_size=3).map(
            lambda d: __import__("json").dumps(d)
        ),
        st.text(max_size=40),
        st.sampled_from(['{"frame_index": 1e999}', '{"timestamp_s": NaN}', '{"frame_index": ' + "9" * 400 + "}"]),
    )
)
def test_websocket_tags_are_in_range_or_refused(text: str) -> None:
    try:
        tag = WebSocketFrameTag.model_validate_json(text)
    except ValidationError:
        return
    assert tag.frame_index is None or 0 <= tag.frame_index <= MAX_FRAME_INDEX
    assert tag.timestamp_s is None or (math.isfinite(tag.timestamp_s) and 0 <= tag.timestamp_s <= MAX_TIMESTAMP_S)


@FUZZ
@given(
    st.lists(st.none() | st.integers(0, MAX_FRAME_INDEX), min_size=1, max_size=5),
    st.floats(MIN_FPS, MAX_FPS),
)
def test_accepted_tags_always_give_finite_timestamps(indices: list[int | None], fps: float) -> None:
    stream = Stream("s", EventTracker("s", 1.0, EventConfig()), last_seen=0.0)
    for index in indices:
        tag = stream.tag(index, None, fps)
        assert math.isfinite(tag.timestamp_s) and tag.timestamp_s >= 0


# ---------------------------------------------------------------------------------------------
# schemathesis against the app's OpenAPI, on a real server

TOKEN = "fuzz-token"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SCHEMA_RUN = settings(
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=list(HealthCheck),
)


def _openapi(auth: bool) -> dict:
    """The document the app serves at /openapi.json (built without loading a model)."""
    token = SecretStr(TOKEN) if auth else None
    return create_app(ServiceSettings(model_path=Path("unused.pt"), auth_token=token)).openapi()


OPEN = schemathesis.openapi.from_dict(_openapi(auth=False))
GUARDED = schemathesis.openapi.from_dict(_openapi(auth=True))


@schemathesis.serializer("image/jpeg", "image/png")
def _raw_bytes(ctx: object, value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture(scope="module")
def fuzz_model(tiny_trained) -> Model:  # noqa: ANN001 - a conftest fixture
    detector, path = tiny_trained.detector, tiny_trained.path
    return Model(detector, path)


@pytest.fixture(scope="module")
def open_server(fuzz_model: Model) -> Iterator[Running]:
    with serving(settings_for(fuzz_model)) as srv:
        yield srv


@pytest.fixture(scope="module")
def guarded_server(fuzz_model: Model) -> Iterator[Running]:
    with serving(settings_for(fuzz_model, auth_token=SecretStr(TOKEN))) as srv:
        yield srv


def test_the_schema_documents_auth_only_where_it_applies() -> None:
    open_doc, guarded_doc = _openapi(auth=False), _openapi(auth=True)
    assert "securitySchemes" not in open_doc.get("components", {})
    assert guarded_doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for doc, auth in ((open_doc, False), (guarded_doc, True)):
        for path, ops in doc["paths"].items():
            for op in ops.values():
                guarded = path not in ("/healthz", "/readyz")
                assert ("401" in op["responses"]) == (auth and guarded), (auth, path)
                assert bool(op.get("security")) == (auth and guarded), (auth, path)


@OPEN.parametrize()
@SCHEMA_RUN
def test_generated_requests_without_auth(case: schemathesis.Case, open_server: Running) -> None:
    case.call_and_validate(base_url=open_server.url, checks=CHECKS, timeout=30)


@GUARDED.parametrize()
@SCHEMA_RUN
def test_generated_requests_with_the_token(case: schemathesis.Case, guarded_server: Running) -> None:
    case.call_and_validate(
        base_url=guarded_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS, timeout=30
    )


@GUARDED.parametrize()
@settings(SCHEMA_RUN, max_examples=5)
def test_generated_requests_with_a_wrong_token(case: schemathesis.Case, guarded_server: Running) -> None:
    case.call_and_validate(
        base_url=guarded_server.url, headers={"Authorization": "Bearer wrong"}, checks=CHECKS, timeout=30
    )
