"""The review app: `create_review_app(settings)` serves one run's events, clips and verdicts.

Same style as the scoring service (settings on `app.state`, JSON errors `{"detail", "code"}`, the
service's bearer-token check and browser session, `service.auth`). The page is opened once with
`?token=...` (the URL `anomaly review` prints, as Jupyter does): the app answers with the session
cookie and redirects to a clean URL. Files are served by event id only, from paths inside the run
folder: no URL names a path.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from anomaly import __version__
from review.run import ReviewEvent, ReviewRun, load_run
from review.settings import ReviewSettings
from review.store import ReviewStore, Verdict, VerdictRecord, labels_csv
from service.auth import PRIVATE, browser_authorized, browser_page
from service.errors import ServiceError, service_error_handler, validation_error_handler


async def require_reviewer(request: Request) -> None:
    if not browser_authorized(request):
        raise ServiceError(
            401,
            "unauthorized",
            "open the URL `anomaly review` printed (it carries ?token=...) or send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def json_only(request: Request) -> None:
    """Writes take JSON only: a cross-site form cannot send it without a CORS preflight, never granted here."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise ServiceError(415, "unsupported_media_type", "send the verdict as application/json")


class VerdictBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    verdict: Verdict
    note: str = Field("", max_length=2000)
    reviewer: str = Field("", max_length=200)


def get_run(request: Request) -> ReviewRun:
    return request.app.state.run


def get_store(request: Request) -> ReviewStore:
    return request.app.state.store


def get_event(event_id: str, run: Annotated[ReviewRun, Depends(get_run)]) -> ReviewEvent:
    event = run.events.get(event_id)
    if event is None:
        raise ServiceError(404, "not_found", f"no event {event_id!r} in this run")
    return event


RunDep = Annotated[ReviewRun, Depends(get_run)]
StoreDep = Annotated[ReviewStore, Depends(get_store)]
EventDep = Annotated[ReviewEvent, Depends(get_event)]


def event_view(event: ReviewEvent, verdict: VerdictRecord | None) -> dict[str, Any]:
    """What the page shows of an event: its JSON, where its files are served, and its current verdict."""
    d = event.data
    return {
        **{k: v for k, v in d.items() if k not in ("clip", "thumbnail")},
        "source_name": Path(str(d["source"])).name,
        "clip_url": f"api/events/{event.id}/clip" if event.clip else None,
        "thumbnail_url": f"api/events/{event.id}/thumbnail" if event.thumbnail else None,
        "verdict": verdict.verdict if verdict else None,
        "note": verdict.note if verdict else "",
        "reviewer": verdict.reviewer if verdict else "",
        "verdict_at": verdict.created_at if verdict else None,
    }


def create_review_app(settings: ReviewSettings, run: ReviewRun | None = None) -> FastAPI:
    """The app for `settings.run`; `run`: already loaded (the CLI loads it first to report errors in one line)."""
    run = run or load_run(settings.run)
    app = FastAPI(title="anomaly review", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.run = run
    app.state.store = ReviewStore(run.db_path)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    guarded = [Depends(require_reviewer)]
    page = files("review").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def index(request: Request, token: str | None = None) -> Response:
        return browser_page(request, token, page, here="/", title="anomaly review")

    @app.get("/api/events", dependencies=guarded)
    async def list_events(run: RunDep, store: StoreDep) -> JSONResponse:
        verdicts = store.latest()
        events = [event_view(e, verdicts.get(e.id)) for e in run.events.values()]
        cameras = sorted({str(e.get("camera") or "fleet") for e in events})
        payload = {"run": run.root.name, "events": events, "drift": run.drift, "cameras": cameras}
        return JSONResponse(payload, headers=PRIVATE)

    @app.get("/api/events/{event_id}/clip", dependencies=guarded)
    async def clip(event: EventDep) -> FileResponse:
        if event.clip is None:
            raise ServiceError(404, "not_found", f"event {event.id} has no clip")
        return FileResponse(event.clip, media_type="video/mp4", headers=PRIVATE)

    @app.get("/api/events/{event_id}/thumbnail", dependencies=guarded)
    async def thumbnail(event: EventDep) -> FileResponse:
        if event.thumbnail is None:
            raise ServiceError(404, "not_found", f"event {event.id} has no thumbnail")
        return FileResponse(event.thumbnail, media_type="image/jpeg", headers=PRIVATE)

    @app.post("/api/events/{event_id}/verdict", dependencies=[*guarded, Depends(json_only)])
    async def give_verdict(event: EventDep, body: VerdictBody, store: StoreDep) -> JSONResponse:
        reviewer = body.reviewer or settings.reviewer
        record = VerdictRecord.of_event(event.data, body.verdict, note=body.note, reviewer=reviewer)
        return JSONResponse(store.add(record).model_dump(), headers=PRIVATE)

    @app.get("/api/verdicts", dependencies=guarded)
    async def verdict_history(store: StoreDep) -> JSONResponse:
        return JSONResponse([v.model_dump() for v in store.history()], headers=PRIVATE)

    @app.get("/api/labels.csv", dependencies=guarded)
    async def labels(run: RunDep, store: StoreDep) -> Response:
        text = labels_csv(store.history())
        disposition = {"Content-Disposition": f'attachment; filename="{run.root.name}.labels.csv"'}
        return Response(text, media_type="text/csv", headers={**PRIVATE, **disposition})

    return app
