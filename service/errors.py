"""Errors a client can cause or must react to, and how they look on the wire.

Every one becomes a JSON body `{"detail": ..., "code": ...}` with a 4xx or 503 status, so a bad
upload never surfaces as a 500 and a client can branch on `code` without parsing messages.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse


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
