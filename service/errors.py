"""Errors a client can cause or must react to, and how they look on the wire.

Every one becomes a JSON body `{"detail": ..., "code": ...}` with a 4xx or 503 status, so a bad
upload never surfaces as a 500 and a client can branch on `code` without parsing messages.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

log = logging.getLogger("anomaly.service")

# nginx's code for "the client closed the connection before the answer": what the metrics count it as
CLIENT_CLOSED = 499


class ServiceError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers

    def to_dict(self) -> dict[str, str | int]:
        return {"status": self.status, "code": self.code, "detail": self.detail}


def bad_request(detail: str) -> ServiceError:
    return ServiceError(400, "bad_request", detail)


def unavailable(code: str, detail: str, retry_after_s: int) -> ServiceError:
    """503 that tells the client when to come back."""
    return ServiceError(503, code, detail, headers={"Retry-After": str(retry_after_s)})


async def service_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status, headers=exc.headers)


class ClientClosed(Exception):
    """The client went away mid-request (its body unfinished): its own outcome, not a server error."""


async def client_closed_handler(request: Request, _: Exception) -> Response:
    log.debug("client closed the connection during %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED)


def describe_validation_error(exc: RequestValidationError) -> str:
    """FastAPI's list of complaints as one line: 'query frame_index: Input should be ...'."""
    errors = exc.errors()
    if not errors:
        return "the request is invalid"
    first = errors[0]
    where = " ".join(str(x) for x in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


async def validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": describe_validation_error(exc), "code": "invalid_request"}, status_code=422)
