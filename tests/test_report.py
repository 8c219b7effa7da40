import base64
import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from evaluation.report import Picture, data_uri, fmt, write_report


def point(threshold, tp, fp, fn, tn, **extra):
    precision = tp / (tp + fp) if tp + fp else None
    return {
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": tp / (tp + fn),
        "false_positive_rate": fp / (fp + tn),
        "f1": 2 * tp / (2 * tp + fp + fn),
        **extra,
    }


def delays(median):
    return {"mean": median, "median": median, "max": median}


def metrics():
    """The parts of metrics.json the report reads."""
    return {
        "inputs": {"scores_csv": "out/scores.csv", "model": "m.pt", "labels": ["a.labels.csv"], "sources": ["a.mp4"]},
        "frames": {"total": 100, "normal": 80, "anomalous": 20, "sources": 1},
        "frame_metrics": {
            "auroc": 0.9,
            "average_precision": 0.8,
            "per_kind": {
                "fog": {"frames": 12, "auroc": 0.95, "average_precision": 0.9, "recall": 0.5},
                "<b>odd</b>": {"frames": 8, "auroc": None, "average_precision": None, "recall": 0.25},
            },
        },
        "thresholds": {
            "calibrated": point(3.0, 10, 2, 10, 78, source="model"),
            "best_f1": point(2.0, 16, 6, 4, 74),
            "report_far": point(2.5, 14, 1, 6, 79, target=0.0125),
            "operating": point(3.0, 10, 2, 10, 78, choice="calibrated"),
        },
        "events": {
            "threshold": 3.0,
            "config": {"window": 3, "hysteresis": 0.5, "min_duration_s": 0.2, "merge_gap_s": 1.0},
            "labeled_events": 4,
            "detected_events": 3,
            "event_recall": 0.75,
            "predicted_events": 5,
            "false_alarms": 2,
            "normal_hours": 0.5,
            "false_alarms_per_hour": 4.0,
            "delay_s": delays(0.4),
            "per_kind": {"fog": {"labeled": 2, "detected": 2, "recall": 1.0, "delay_s": delays(0.3)}},
        },
        "baselines": {
            "pca": {"label": "PCA", "description": "linear", "auroc": 0.97, "per_kind": {"fog": {"auroc": 0.6}}},
            "ae_only": {"label": "AE only", "description": "no GAN", "auroc": 0.7, "per_kind": {}},
        },
    }


STRETCHES = [
    {"source": "clips/a.mp4", "kind": "fog", "start_s": 1.0, "end_s": 2.5, "detected": True, "delay_s": 0.3},
    {"source": "clips/a.mp4", "kind": "", "start_s": 4.0, "end_s": 4.5, "detected": False, "delay_s": None},
]


class Collect(HTMLParser):
    """Tables as lists of rows of cell texts, image sources, and any link to another resource."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.external = [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def png(tmp_path, name, value):
    path = tmp_path / name
    cv2.imwrite(str(path), np.full((10, 20, 3), value, np.uint8))
    return path


@pytest.fixture
def page(tmp_path):
    figures = [Picture(png(tmp_path, "roc.png", 10), "ROC")]
    timelines = [Picture(png(tmp_path, "t.png", 20), "a.mp4 over time")]
    strip = [Picture(png(tmp_path, "f.jpg", 30), "a.mp4 frame 3")]
    normal = [Picture(png(tmp_path, "n.jpg", 40), "a.mp4 frame 9")]
    path = write_report(
        tmp_path / "out" / "report.html",
        metrics=metrics(),
        stretches=STRETCHES,
        figures=figures,
        timelines=timelines,
        strip=strip,
        normal_strip=normal,
        notes=["baselines <skipped>"],
    )
    parser = Collect()
    text = path.read_text(encoding="utf-8")
    parser.feed(text)
    return text, parser


def test_report_is_self_contained_and_its_images_decode(page):
    _, parser = page
    assert parser.external == []
    assert len(parser.images) == 4
    values = []
    for src in parser.images:
        header, payload = src.split(",", 1)
        assert header.startswith("data:image/") and header.endswith(";base64")
        image = cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (10, 20, 3)
        values.append(int(image[0, 0, 0]))
    assert values == [10, 20, 30, 40]  # figures, timelines, strip, normal strip, in that order


def test_headline_table(page):
    _, parser = page
    headline = {row[0]: row[1] for row in parser.tables[0][1:]}
    assert headline["AUROC (all kinds)"] == "0.900"
    assert headline["Labeled events detected"] == "3 of 4 (75.0%)"
    assert headline["False alarms"] == "2 in 30.0 min of normal driving (4.000 per hour)"
    assert headline["Detection delay (median / max)"] == "0.40 s / 0.40 s"


def test_per_kind_table_puts_baselines_beside_the_model(page):
    text, parser = page
    header, fog, odd, total = parser.tables[1]
    assert header[:5] == ["kind", "frames", "model AUROC", "PCA AUROC", "AE only AUROC"]
    assert fog[:5] == ["fog", "12", "0.950", "0.600", "n/a"]
    assert fog[6:] == ["50.0%", "2 / 2", "0.30 s"]
    assert odd[0] == "<b>odd</b>"  # escaped, shown as text
    assert total[:5] == ["all kinds", "20", "0.900", "0.970", "0.700"]
    assert "<b>0.970</b>" in text and "<b>0.950</b>" in text  # the best of each row stands out


def test_thresholds_table(page):
    _, parser = page
    rows = parser.tables[2]
    assert [r[0] for r in rows[1:]] == [
        "calibrated (model)",
        "best F1",
        "false-positive rate ≤ 1.2%",
        "operating: calibrated",
    ]
    assert rows[2][1:] == ["2.000", "72.7%", "80.0%", "7.5%", "0.762", "16 / 6 / 4 / 74"]  # F1 32 / 42


def test_events_and_notes(page):
    text, parser = page
    stretches = parser.tables[3]
    assert stretches[1] == ["a.mp4", "fog", "1.00 - 2.50 s", "yes", "0.30 s"]
    assert stretches[2] == ["a.mp4", "anomaly", "4.00 - 4.50 s", "missed", "n/a"]
    assert "averaged over 3 frame(s)" in text and "minus 0.5" in text
    assert "baselines &lt;skipped&gt;" in text
    assert re.search(r"<h2>Highest-scoring normal frames</h2>", text)


def test_format_helpers(tmp_path):
    assert fmt(None) == "n/a" and fmt(0.25, "pct") == "25.0%" and fmt(3.0, "int") == "3" and fmt(1.234, "s") == "1.23 s"
    assert fmt("<x>") == "&lt;x&gt;"
    assert data_uri(png(tmp_path, "x.png", 0)).startswith("data:image/png;base64,iVBOR")
