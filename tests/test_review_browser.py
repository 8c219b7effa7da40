"""The analyst's loop in a real headless Chromium (from the machine's packages, never downloaded):

a scored clip's events listed, a clip playing, a verdict by key that survives a restart of the app,
the verdicts exported as labels that `anomaly evaluate` reads, and `anomaly calibrate --feedback`
taking the reviewed false alarm away on a rescan while the confirmed anomaly stays caught.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from factories import road_frames, write_video
from pydantic import SecretStr
from review_helpers import reviewing
from typer.testing import CliRunner

from anomaly.checkpoint import load_detector
from anomaly.events import EventConfig
from batch.local import score_sources
from cli.main import app as cli
from footage.scores_csv import read_scores_csv
from review.settings import ReviewSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs chromium and chromedriver from the system's packages (apt-get install chromium chromium-driver)",
    ),
]
TOKEN = "browser-test-token"
EVENTS = EventConfig(min_duration_s=0.5)  # blips of normal noise are not events
CAMERA = "dash"


def drive(path: Path) -> Path:
    """A drive for the tiny model: normal road, a roadside sign (a false alarm), normal, night (an anomaly), normal."""
    frames = road_frames(80, seed=3)
    frames[20:35, 2:16, 2:26] = 255  # the sign, in the sky at the left
    frames[50:65] //= 4
    return write_video(path, frames, fps=10.0)


def score_run(model: Path, clip: Path, run: Path) -> Path:
    detector = load_detector(model, "cpu").for_camera(CAMERA)  # type: ignore[arg-type]
    scores = run / "scores.csv"
    score_sources(
        detector,
        [str(clip)],
        scores,
        camera=CAMERA,
        events_path=run / "events.json",
        event_config=EVENTS,
        clips_dir=run / "clips",
        progress=False,
    )
    return scores


def browser():  # noqa: ANN201 - selenium is imported here, so collection does not need it
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio"):
        options.add_argument(arg)
    options.add_argument("--autoplay-policy=no-user-gesture-required")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(condition, timeout: float = 20.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "the page did not get there in time"
        time.sleep(0.05)


def rows(driver) -> list:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#events tbody tr.event")


def test_review_loop_in_a_real_browser(tiny_trained, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    # the camera's own profile first (its encoder's artefacts are its normal), as a fleet user does
    normal = write_video(tmp_path / "normal.mp4", road_frames(120, seed=4))
    model = tmp_path / "model.pt"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["calibrate", str(tiny_trained.path), str(normal), "--camera", CAMERA, "--out", str(model)]
    )
    assert result.exit_code == 0, result.output
    clip = drive(tmp_path / "drive.mp4")
    run = tmp_path / "run"
    scores = score_run(model, clip, run)
    events = json.loads((run / "events.json").read_text())["events"]
    assert len(events) >= 2, f"the sign and the night must both be events, got {events}"
    sign = next(e for e in events if e["start_frame"] <= 27 <= e["end_frame"])
    night = next(e for e in events if e["start_frame"] <= 57 <= e["end_frame"])
    settings = ReviewSettings(run=run, port=0, auth_token=SecretStr(TOKEN), reviewer="tester")

    driver = browser()
    try:
        with reviewing(settings) as app:
            driver.get(app.url)  # the printed URL: its token becomes the session cookie
            wait_for(lambda: len(rows(driver)) == len(events))
            assert "token" not in driver.current_url
            video = driver.find_element(By.ID, "clip")
            duration = wait_for(lambda: driver.execute_script("return arguments[0].duration", video))
            assert duration > 0.5  # the first event's clip (an H.264 MP4) loaded and has a length
            # the sign first: sort by start and pick its row, then judge it with the keyboard
            driver.find_element(By.CSS_SELECTOR, f'#events tr[data-id="{sign["id"]}"]').click()
            body = driver.find_element(By.TAG_NAME, "body")
            body.send_keys("n")
            wait_for(lambda: "stored: normal" in driver.find_element(By.ID, "status").text)
            driver.find_element(By.CSS_SELECTOR, f'#events tr[data-id="{night["id"]}"]').click()
            driver.find_element(By.ID, "note").send_keys("night drive")
            body.send_keys("a")
            wait_for(lambda: "stored: anomaly" in driver.find_element(By.ID, "status").text)
        with reviewing(settings) as app:  # a restarted app shows the verdicts
            driver.get(app.url)
            wait_for(lambda: len(rows(driver)) == len(events))
            verdict = driver.find_element(By.CSS_SELECTOR, f'#events tr[data-id="{sign["id"]}"] td:last-child')
            assert verdict.text == "normal"
            stored = httpx.get(f"{app.base}/api/verdicts", headers={"Authorization": f"Bearer {TOKEN}"}).json()
            assert [v["verdict"] for v in stored] == ["normal", "anomaly"]
    finally:
        driver.quit()

    labels = tmp_path / "labels.csv"
    result = runner.invoke(cli, ["review", str(run), "--export-labels", str(labels)])
    assert result.exit_code == 0, result.output
    evaluated = ["evaluate", "--scores", str(scores), "--labels", str(labels), "--out", str(tmp_path / "ev")]
    result = runner.invoke(cli, evaluated)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["frames"]["anomalous"] == night["end_frame"] - night["start_frame"] + 1
    assert set(metrics["frame_metrics"]["per_kind"]) == {"night drive"}  # the note became the kind

    folded = tmp_path / "folded.pt"
    feedback = ["calibrate", str(model), "--feedback", str(run / "review.sqlite"), "--out", str(folded)]
    result = runner.invoke(cli, feedback)
    assert result.exit_code == 0, result.output
    assert f"profile {CAMERA!r}: folded 1 stretch(es)" in result.output
    assert "reviewed false alarms still raised: 0 of 1" in result.output
    rescan = tmp_path / "rescan"
    score_run(folded, clip, rescan)
    before, after = read_scores_csv(scores), read_scores_csv(rescan / "scores.csv")
    in_sign = (before["frame_index"] >= sign["start_frame"]) & (before["frame_index"] <= sign["end_frame"])
    in_night = (before["frame_index"] >= night["start_frame"]) & (before["frame_index"] <= night["end_frame"])
    assert np.sum(after["is_anomaly"][in_sign]) < np.sum(before["is_anomaly"][in_sign])
    assert np.sum(after["is_anomaly"]) < np.sum(before["is_anomaly"])  # fewer false alarms on the clip
    assert np.any(after["is_anomaly"][in_night])  # the confirmed anomaly is still caught
