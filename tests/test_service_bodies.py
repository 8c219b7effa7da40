"""Multipart bodies split in memory, with the part limit and clear errors."""

from __future__ import annotations

import httpx
import pytest

from service.bodies import parse_multipart
from service.errors import ServiceError


def multipart(files: list[tuple[str, tuple[str, bytes]]], data: dict | None = None) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.headers["content-type"], request.read()


def test_parts_in_order_with_fields_and_files() -> None:
    ctype, body = multipart(
        [("frames", ("a.jpg", b"\xff\xd8A")), ("frames", ("b.jpg", b"B" * 5000))], {"frame_index": "3"}
    )
    parts = parse_multipart(ctype, body, max_parts=5)
    assert [(p.name, p.is_file) for p in parts] == [("frame_index", False), ("frames", True), ("frames", True)]
    assert [bytes(p.data) for p in parts] == [b"3", b"\xff\xd8A", b"B" * 5000]


def test_limits_and_malformed_bodies() -> None:
    ctype, body = multipart([("frames", (f"{i}.jpg", b"x")) for i in range(4)])
    with pytest.raises(ServiceError) as many:
        parse_multipart(ctype, body, max_parts=3)
    assert (many.value.status, many.value.code) == (413, "too_many_parts")
    with pytest.raises(ServiceError) as no_boundary:
        parse_multipart("multipart/form-data", body, max_parts=10)
    assert no_boundary.value.status == 400
    with pytest.raises(ServiceError) as garbled:
        parse_multipart("multipart/form-data; boundary=zz", b"--zz\r\nno headers end", max_parts=10)
    assert garbled.value.status == 400
