"""Pieces shared by the scoring routes: OpenAPI bodies and error responses, reading image uploads."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from service.bodies import Part, is_multipart, parse_multipart, read_body
from service.errors import bad_request
from service.schemas import ErrorResponse
from service.settings import Limits

_BINARY = {"type": "string", "format": "binary"}


def image_body(multipart_field: str, multipart_description: str) -> dict[str, Any]:
    """OpenAPI request body: a raw JPEG/PNG, or multipart with the image(s) as file parts."""
    return {
        "requestBody": {
            "required": True,
            "description": "the image as the raw body (any content type: the format is read from its bytes), "
            "or multipart/form-data",
            "content": {
                "image/jpeg": {"schema": _BINARY},
                "image/png": {"schema": _BINARY},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {multipart_field: {**_BINARY, "description": multipart_description}},
                        "required": [multipart_field],
                    }
                },
            },
        }
    }


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "empty, corrupt or truncated image; malformed multipart",
        401: "missing or wrong bearer token",
        404: "unknown stream",
        408: "the body did not arrive within the body timeout",
        409: "the stream is busy",
        413: "body, image dimensions or frame count over the limit",
        415: "not a JPEG or PNG image",
        422: "a path, query or form value out of range (frame index, timestamp, fps, stream id)",
        503: "queue full, too many requests or streams, starting, or shutting down; see Retry-After",
    }
    return {s: {"model": ErrorResponse, "description": described[s]} for s in statuses}


async def read_upload(
    request: Request, limits: Limits, max_parts: int, timeout_s: float
) -> tuple[bytes, list[Part] | None]:
    """The raw body, or (when multipart) the body and its parts."""
    body = await read_body(request, limits.max_body_bytes, timeout_s)
    if not is_multipart(request):
        return body, None
    return body, parse_multipart(request.headers["content-type"], body, max_parts)


def file_parts(parts: list[Part]) -> list[bytes]:
    files = [bytes(p.data) for p in parts if p.is_file]
    if not files:
        raise bad_request("the multipart body has no file part")
    return files
