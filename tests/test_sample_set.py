"""The bundled sample set in sample_videos/ is what its manifest says, and `anomaly generate-samples` remakes it."""

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from cli.main import app
from synthetic.sample_set import GENERATOR, LABEL_HEADER

SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
MANIFEST = json.loads((SAMPLES / "manifest.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_clip_of_the_manifest_is_there_with_its_size_rate_and_frame_count():
    assert MANIFEST["generator"] == GENERATOR
    listed = {c["file"] for c in MANIFEST["clips"]} | {c["labels"] for c in MANIFEST["clips"] if c["labels"]}
    on_disk = {p.name for p in SAMPLES.iterdir() if p.suffix in (".mp4", ".csv")}
    assert on_disk == listed
    for clip in MANIFEST["clips"]:
        cap = cv2.VideoCapture(str(SAMPLES / clip["file"]))
        try:
            assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == clip["n_frames"], clip["file"]
            assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(MANIFEST["fps"])
            assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (
                MANIFEST["width"],
                MANIFEST["height"],
            )
        finally:
            cap.release()


def test_labels_agree_with_the_manifests_events_and_totals():
    by_kind: Counter[str] = Counter()
    normal = 0
    for clip in (c for c in MANIFEST["clips"] if c["split"] == "test"):
        with (SAMPLES / clip["labels"]).open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert tuple(rows[0]) == LABEL_HEADER
        assert [int(r["frame_index"]) for r in rows] == list(range(clip["n_frames"]))
        anomalous = [r for r in rows if r["label"] == "1"]
        assert len(anomalous) == clip["anomalous_frames"]
        for event in clip["events"]:  # end_frame exclusive: the frames an injected anomaly covers
            kinds = {rows[i]["kind"] for i in range(event["start_frame"], event["end_frame"])}
            assert all(event["kind"] in k.split("+") for k in kinds), (clip["file"], event)
        by_kind.update(k for r in anomalous for k in r["kind"].split("+"))
        normal += clip["n_frames"] - len(anomalous)
    totals = MANIFEST["totals"]
    assert dict(by_kind) == {k: v for k, v in totals["test_anomalous_frames_by_kind"].items() if v}
    assert normal == totals["test_normal_frames"]
    assert totals["test_frames"] == totals["test_normal_frames"] + totals["test_anomalous_frames"]


@pytest.mark.slow
def test_generate_samples_remakes_the_bundled_set_byte_for_byte(tmp_path):
    result = CliRunner().invoke(app, ["generate-samples", "--out", str(tmp_path), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "train frames 2100, test frames 2040" in result.output
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in SAMPLES.iterdir() if p.name != "README.md")
    for name in made:
        assert sha256(tmp_path / name) == sha256(SAMPLES / name), name
