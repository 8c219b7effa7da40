"""Request bodies read with a hard size limit, and multipart split into in-memory parts.

The limit is enforced while reading, not only from Content-Length, so a chunked upload cannot
grow past it. The body is already in memory when multipart is parsed, so parts stay in memory
too (no temporary files, no per-chunk thread hops).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from service.errors import ClientClosed, ServiceError, bad_request


def too_large(limit: int) -> ServiceError:
    return ServiceError(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")


def body_timeout(timeout_s: float) -> ServiceError:
    # Connection: close, because the rest of the body may still be on its way
    detail = f"the request body did not arrive within {timeout_s:g} s"
    return ServiceError(408, "body_timeout", detail, headers={"Connection": "close"})


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, within `limit` bytes and `timeout_s` seconds; a client that leaves mid-body is
    `ClientClosed` (its own outcome, not a server error)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_limited(request, limit)
    except TimeoutError:
        raise body_timeout(timeout_s) from None
    except ClientDisconnect:
        raise ClientClosed from None


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large(limit)
        except ValueError:
            raise bad_request("Content-Length is not a number") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


@dataclass
class Part:
    name: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)

    @property
    def is_file(self) -> bool:
        return self.filename is not None


def parse_multipart(content_type: str, body: bytes, max_parts: int) -> list[Part]:
    """The parts of a multipart/form-data body, in order. Malformed bodies are a 400."""
    try:
        _, params = parse_options_header(content_type)
    except (UnicodeError, ValueError):
        raise bad_request("the multipart Content-Type header is malformed") from None
    boundary = params.get(b"boundary")
    if not boundary:
        raise bad_request("multipart body without a boundary")
    parts: list[Part] = []
    headers: dict[bytes, bytes] = {}
    name_buf, value_buf = bytearray(), bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        name_buf.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value_buf.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(name_buf).lower()] = bytes(value_buf)
        name_buf.clear()
        value_buf.clear()

    def on_headers_finished() -> None:
        _, opts = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in opts:
            raise bad_request('a multipart part has no Content-Disposition "name"')
        if len(parts) >= max_parts:
            raise ServiceError(413, "too_many_parts", f"multipart body has more than {max_parts} parts")
        filename = opts.get(b"filename")
        name = opts[b"name"].decode("utf-8", "replace")
        parts.append(Part(name, None if filename is None else filename.decode("utf-8", "replace")))
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise bad_request(f"malformed multipart body: {exc}") from None
    return parts
