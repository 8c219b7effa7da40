"""Stateless scoring of one image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.dependencies import ServiceDep
from service.errors import bad_request
from service.routers.common import error_responses, file_parts, image_body, read_upload
from service.schemas import ScoreResponse, Scores

router = APIRouter(tags=["scoring"])


@router.post(
    "/v1/score",
    response_model=ScoreResponse,
    response_model_exclude_none=True,
    summary="Score one image",
    description="One JPEG or PNG frame in, its anomaly scores out. Frames from concurrent requests are scored "
    "together in micro-batches.",
    responses=error_responses(400, 408, 413, 415, 422, 503),
    openapi_extra=image_body("image", "the frame (JPEG or PNG)"),
)
async def score_image(
    request: Request,
    service: ServiceDep,
    heatmap: Annotated[bool, Query(description="add the error heat map over the frame as a base64 PNG")] = False,
) -> ScoreResponse:
    body, parts = await read_upload(request, service.settings.limits, 4, service.settings.connections.body_timeout_s)
    if parts is not None:
        files = file_parts(parts)
        if len(files) != 1:
            raise bad_request(f"send one image to /v1/score (got {len(files)}); use a stream for several")
        body = files[0]
    scored, png = await service.score_image(body, heatmap)
    return ScoreResponse(**Scores.fields_of(scored, service.model_info.version), heatmap_png=png)
