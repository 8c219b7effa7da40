"""The review app over a real uvicorn server: events, clips (with ranges), verdicts, auth, and no way out of the run."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from review_helpers import make_run, reviewing

from review.settings import ReviewSettings
from service.auth import SESSION_COOKIE as COOKIE

TOKEN = "s3cret-review-token"


def settings(run: Path, **kw: object) -> ReviewSettings:
    return ReviewSettings(run=run, port=0, reviewer="tester", **kw)  # type: ignore[arg-type]


def test_events_clips_and_verdicts(tmp_path: Path) -> None:
    events = make_run(tmp_path)
    with reviewing(settings(tmp_path)) as app, httpx.Client(base_url=app.base) as http:
        listed = http.get("/api/events").json()
        assert {e["id"] for e in listed["events"]} == {e.id for e in events}
        assert listed["cameras"] == ["fleet", "front"]
        assert [d["camera"] for d in listed["drift"]] == ["front"]  # shown below the events
        first = next(e for e in listed["events"] if e["id"] == events[0].id)
        assert first["signal"] == "spatial" and first["verdict"] is None and first["clip_url"]
        clip = http.get(first["clip_url"])
        assert clip.status_code == 200 and clip.headers["content-type"] == "video/mp4"
        assert clip.content == (tmp_path / events[0].clip).read_bytes()  # type: ignore[operator]
        part = http.get(first["clip_url"], headers={"Range": "bytes=0-99"})  # what a <video> asks for
        assert part.status_code == 206 and len(part.content) == 100
        assert http.get(first["thumbnail_url"]).headers["content-type"] == "image/jpeg"
        third = next(e for e in listed["events"] if e["id"] == events[2].id)
        assert third["clip_url"] is None
        assert http.get(f"/api/events/{events[2].id}/clip").status_code == 404

        stored = http.post(f"/api/events/{events[0].id}/verdict", json={"verdict": "normal", "note": "bridge"})
        assert stored.status_code == 200 and stored.json()["reviewer"] == "tester"
        assert http.post(f"/api/events/{events[1].id}/verdict", json={"verdict": "maybe"}).status_code == 422
        assert http.post("/api/events/nope/verdict", json={"verdict": "normal"}).status_code == 404
        form = http.post(f"/api/events/{events[1].id}/verdict", data={"verdict": "normal"})
        assert form.status_code == 415  # a cross-site form post cannot store a verdict
        labels = http.get("/api/labels.csv")
        assert labels.text.splitlines() == ["source,start_frame,end_frame,kind", "drives/a.mp4,,,"]
    with reviewing(settings(tmp_path)) as app:  # a restart keeps the verdict
        again = httpx.get(f"{app.base}/api/events").json()["events"]
        assert next(e for e in again if e["id"] == events[0].id)["verdict"] == "normal"


def test_no_path_leads_out_of_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"private footage of another run")
    os.symlink(secret, tmp_path / "link.mp4")
    (run / "clips").mkdir(parents=True)
    os.symlink(secret, run / "clips" / "inside-link.mp4")
    events = make_run(run, clip_paths=("../secret.mp4", "clips/inside-link.mp4"))
    with reviewing(settings(run)) as app, httpx.Client(base_url=app.base) as http:
        for event in events[:2]:  # a path out of the run and a link inside it that points out
            assert http.get(f"/api/events/{event.id}/clip").status_code == 404
        for attempt in (
            "/api/events/..%2F..%2Fsecret.mp4/clip",
            "/api/events/../../secret.mp4",
            "/api/events/%2e%2e/clip",
            "/clips/../secret.mp4",
            "/review.sqlite",
            "/events.json",
        ):
            response = http.get(attempt)
            assert response.status_code == 404, attempt
            assert b"private footage" not in response.content


def test_token_guards_every_page_and_call(tmp_path: Path) -> None:
    events = make_run(tmp_path)
    guarded = settings(tmp_path, auth_token=SecretStr(TOKEN))
    with reviewing(guarded) as app:
        assert app.url.endswith(f"/?token={TOKEN}")
        with httpx.Client(base_url=app.base) as http:
            assert http.get("/").status_code == 401  # the login page, not the review page
            assert "Token needed" in http.get("/").text
            for path in ("/api/events", f"/api/events/{events[0].id}/clip", "/api/labels.csv", "/api/verdicts"):
                assert http.get(path).status_code == 401, path
            post = http.post(f"/api/events/{events[0].id}/verdict", json={"verdict": "normal"})
            assert post.status_code == 401
            assert http.get("/api/events", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert http.get("/api/events", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
            assert http.get("/", params={"token": "wrong"}).status_code == 401
            login = http.get("/", params={"token": TOKEN})
            assert login.status_code == 303 and login.headers["location"] == "/"
            cookie = login.headers["set-cookie"]
            assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and TOKEN not in cookie
        with httpx.Client(base_url=app.base, cookies={COOKIE: login.cookies[COOKIE]}) as browser:
            assert browser.get("/").status_code == 200
            assert browser.get("/api/events").status_code == 200
        with httpx.Client(base_url=app.base, cookies={COOKIE: "forged"}) as forged:
            assert forged.get("/api/events").status_code == 401


def test_only_loopback_without_a_token_and_no_foreign_host_names(tmp_path: Path) -> None:
    make_run(tmp_path)
    with pytest.raises(ValidationError, match="without a token"):
        ReviewSettings(run=tmp_path, host="0.0.0.0")
    ReviewSettings(run=tmp_path, host="0.0.0.0", auth_token=SecretStr(TOKEN))
    with reviewing(settings(tmp_path)) as app:
        # a page on another site that rebinds its name to 127.0.0.1 sends its own Host header
        assert httpx.get(f"{app.base}/api/events", headers={"Host": "evil.example"}).status_code == 400
        assert httpx.get(f"{app.base}/healthz").status_code == 200
