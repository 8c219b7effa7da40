"""Optional bearer-token auth. When a token is configured, every endpoint but the health checks needs it.

Both tokens are hashed before `hmac.compare_digest`, so the comparison takes the same time
whatever the given token is, its length included.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
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


SESSION_COOKIE = "anomaly_session"


def session_value(token: SecretStr) -> str:
    """A browser session's cookie value: a keyed hash of the token, so the token itself is never stored there.

    A browser cannot put a bearer header on a `<video>`, `<img>` or `EventSource` request, so a page is
    opened once with `?token=...` and answered with this value in an HttpOnly, SameSite=Strict cookie.
    """
    return hmac.new(token.get_secret_value().encode(), b"anomaly-browser-session", hashlib.sha256).hexdigest()


def session_matches(cookie: str | None, expected: SecretStr | None) -> bool:
    return (
        expected is not None
        and cookie is not None
        and hmac.compare_digest(cookie.encode(), session_value(expected).encode())
    )


def unauthorized(detail: str) -> ServiceError:
    return ServiceError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def authorization_problem(header: str | None, expected: SecretStr | None) -> str | None:
    """Why `header` is not `Bearer <expected>`; None when it is, or when no token is expected."""
    if expected is None:
        return None
    if not header:
        return "this service needs an Authorization: Bearer <token> header"
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token_matches(token.strip(), expected):
        return "the bearer token is wrong"
    return None


def check_authorization(header: str | None, settings: ServiceSettings) -> None:
    """Raise a 401 unless auth is off or `header` is `Bearer <the token>`."""
    problem = authorization_problem(header, settings.auth_token)
    if problem is not None:
        raise unauthorized(problem)


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


def browser_authorized(conn: HTTPConnection) -> bool:
    """Auth is off, or the request carries the bearer token or the browser session cookie (the live view's
    `<img>` and `EventSource` requests cannot send a header)."""
    expected = conn.app.state.settings.auth_token
    if authorization_problem(conn.headers.get("authorization"), expected) is None:
        return True
    return session_matches(conn.cookies.get(SESSION_COOKIE), expected)


async def require_browser_session(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Router dependency of the live view: the bearer token or the session cookie, else a 401."""
    if not browser_authorized(request):
        raise unauthorized("open /live?token=<token> once in the browser, or send Authorization: Bearer <token>")


PRIVATE = {"Cache-Control": "private, no-store"}  # pages and footage: never kept by a shared cache

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: token needed</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 4em auto">
<h1>Token needed</h1>
<p>This page is guarded by a token. Open the URL with <code>?token=...</code> once, or enter the token:</p>
<form method="get" action="{action}"><input name="token" type="password" autofocus> <button>Open</button></form>
</body></html>
"""


def browser_page(request: Request, token: str | None, page: str, *, here: str, title: str) -> Response:
    """A page for a browser: `?token=` (the right one) is traded for the session cookie and a redirect to
    `here` (the URL without the token); without access a small login page (401); else `page`."""
    expected = request.app.state.settings.auth_token
    if token is not None and expected is not None and token_matches(token, expected):
        response = RedirectResponse(here, status_code=303, headers=PRIVATE)
        response.set_cookie(SESSION_COOKIE, session_value(expected), httponly=True, samesite="strict", path="/")
        return response
    if not browser_authorized(request):
        return HTMLResponse(LOGIN_PAGE.format(title=title, action=here), status_code=401, headers=PRIVATE)
    return HTMLResponse(page, headers=PRIVATE)
