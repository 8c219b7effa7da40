"""FastAPI dependencies: the settings and the running service, both held by the app (no module globals)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from service.engine import ScoringService
from service.errors import unavailable
from service.settings import ServiceSettings


def get_settings(conn: HTTPConnection) -> ServiceSettings:
    return conn.app.state.settings


def current_service(conn: HTTPConnection) -> ScoringService | None:
    """The service once the app has started (None before startup completes)."""
    return getattr(conn.app.state, "service", None)


def get_service(conn: HTTPConnection) -> ScoringService:
    service = current_service(conn)
    if service is None:
        raise unavailable("not_ready", "the model is still loading", get_settings(conn).batching.retry_after_s)
    return service


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
ServiceDep = Annotated[ScoringService, Depends(get_service)]
