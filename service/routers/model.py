"""What model is serving, and the service's metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.dependencies import ServiceDep
from service.routers.common import error_responses
from service.schemas import ModelInfo

router = APIRouter()


@router.get(
    "/v1/model",
    response_model=ModelInfo,
    tags=["model"],
    summary="Model version, input size, threshold, calibration",
    responses=error_responses(503),
)
async def model_info(service: ServiceDep) -> ModelInfo:
    return service.model_info


@router.get(
    "/metrics",
    tags=["monitoring"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        **error_responses(503),
    },
)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
