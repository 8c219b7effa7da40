"""Liveness and readiness: no auth, so orchestrators can probe them."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.dependencies import current_service
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    response_model_exclude_none=True,
    summary="The model is loaded and frames are accepted",
    responses={
        503: {
            "model": Health,
            "description": "starting, draining before shutdown, or the queue full for longer than --unready-after",
        }
    },
)
async def readyz(request: Request) -> Health | JSONResponse:
    service = current_service(request)
    reason = "the model is loading" if service is None else service.not_ready_reason()
    if service is not None and reason is None:
        return Health(status="ready", model_version=service.model_info.version)
    detail = reason
    return JSONResponse(Health(status="not_ready", detail=detail).model_dump(exclude_none=True), status_code=503)
