"""Optional bearer-token auth. When a token is configured, every endpoint but the health checks needs it.

Both tokens are hashed before `hmac.compare_digest`, so the comparison takes the same time
whatever the given token is, its length included.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.requests import HTTPConnection

from service.errors import ServiceError
from service.settings import ServiceSettings

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="`Authorization: Bearer <token>`, required when the service was started with a token",
)


def token_matches(given: str, expected: SecretStr) -> bool:
    a = hashlib.sha256(given.encode("utf-8")).digest()
    b = hashlib.sha256(expected.get_secret_value().encode("utf-8")).digest()
    return hmac.compare_digest(a, b)


def unauthorized(detail: str) -> ServiceError:
    return ServiceError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def check_authorization(header: str | None, settings: ServiceSettings) -> None:
    """Raise a 401 unless auth is off or `header` is `Bearer <the token>`."""
    if settings.auth_token is None:
        return
    if not header:
        raise unauthorized("this service needs an Authorization: Bearer <token> header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token_matches(token.strip(), settings.auth_token):
        raise unauthorized("the bearer token is wrong")


async def require_token(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Router dependency (the `bearer` argument only documents the scheme in OpenAPI)."""
    check_authorization(request.headers.get("authorization"), request.app.state.settings)


def websocket_auth_error(conn: HTTPConnection) -> ServiceError | None:
    """The same check for a WebSocket handshake, returned rather than raised (it is answered as a denial)."""
    try:
        check_authorization(conn.headers.get("authorization"), conn.app.state.settings)
    except ServiceError as exc:
        return exc
    return None
