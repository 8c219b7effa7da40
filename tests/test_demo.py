"""`anomaly demo` end to end on a tiny generated sample set: it trains, scores and reports real figures."""

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from evaluation.demo import format_report
from synthetic.sample_set import generate_sample_set


@pytest.fixture(scope="module")
def tiny_samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    generate_sample_set(out, seed=2, n_train=2, n_test=1, train_seconds=6, test_seconds=24, width=320, height=180)
    return out


@pytest.mark.slow
def test_demo_trains_scores_and_reports(tiny_samples, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--samples",
            str(tiny_samples),
            "--out",
            str(out),
            "--steps",
            "25",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("model.pt", "scores.csv", "events.json", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    labels = list((tiny_samples).glob("test_*.labels.csv"))[0].read_text().splitlines()[1:]
    assert metrics["frames"] == len(labels)
    assert metrics["anomalous_frames"] == sum(row.split(",")[3] == "1" for row in labels)
    assert 0.0 <= metrics["auroc"] <= 1.0 and 0.0 <= metrics["false_alarm_rate"] <= 1.0
    every_signal = {"recon", "disc", "spatial", "latent", "knn", "local", "disc_patch", "patch", "image", "defect"}
    assert set(metrics["signals"]) == every_signal | {"defect_local", "pca", "tear"}
    assert f"AUROC (all kinds): {metrics['auroc']:.3f}" in result.output
    assert "false-alarm rate" in result.output


def test_report_prints_a_zero_auroc_as_zero_not_missing():
    metrics = {
        "frames": 4,
        "normal_frames": 2,
        "anomalous_frames": 2,
        "auroc": 0.5,
        "average_precision": 0.5,
        "threshold": 1.0,
        "false_alarm_rate": 0.0,
        "target_false_alarm_rate": 0.01,
        "detection_rate": 0.5,
        "auroc_per_kind": {"fog": 1.0},
        "signals": {"recon": {"auroc": 0.5, "auroc_per_kind": {"fog": 0.0}}},
    }
    row = next(line for line in format_report(metrics).splitlines() if line.startswith("fog"))
    assert row.split() == ["fog", "1.000", "0.000"]
