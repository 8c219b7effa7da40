"""`anomaly evaluate`: its parts on constructed inputs, then the whole command on a tiny model and a short clip."""

import base64
import json
import shutil
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
import torch
from factories import road_frames, with_square, write_video
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from anomaly.checkpoint import load_detector
from anomaly.metrics import labeled_stretches
from anomaly.thresholds import best_f1, sweep
from cli.main import app
from evaluation.config import EvaluationConfig
from evaluation.inputs import LabeledScores, label_paths, read_scores
from evaluation.measures import stretch_ids, top_rows
from footage.labels import LabelError, labels_path_for
from footage.scores_csv import read_scores_csv

runner = CliRunner()


# --- parts ------------------------------------------------------------------------------------


def scored_table(sources, timestamps, scores, labels=None):
    n = len(scores)
    cols = {
        "source": np.array(sources, dtype=object),
        "frame_index": np.arange(n),
        "timestamp_s": np.array(timestamps, dtype=float),
        "score": np.array(scores, dtype=float),
    }
    labels = np.zeros(n, bool) if labels is None else np.array(labels, bool)
    return LabeledScores(cols=cols, labels=labels, kinds=[""] * n)


def test_top_rows_keeps_one_frame_per_second_of_a_clip():
    s = scored_table(["a"] * 4 + ["b"], [0.0, 0.5, 1.2, 3.0, 0.1], [9, 8, 7, 1, 8.5])
    assert top_rows(s, 3) == [0, 4, 2]  # row 1 is within 1 s of row 0; b's frame is another clip
    assert top_rows(s, 10) == [0, 4, 2, 3]
    assert top_rows(s, 2, among=np.array([False, True, True, True, False])) == [1, 3]
    assert top_rows(s, 0) == []


def test_top_rows_shows_each_labeled_stretch_once():
    s = scored_table(["a"] * 5, [0.0, 1.5, 3.0, 4.5, 6.0], [9, 8, 7, 6, 5], labels=[1, 1, 0, 1, 1])
    stretches = labeled_stretches(s.cols["source"], s.cols["frame_index"], s.cols["timestamp_s"], s.labels, s.kinds)
    groups = stretch_ids(s, stretches)
    assert groups.tolist() == [0, 0, -1, 1, 1]
    assert top_rows(s, 3, groups=groups) == [0, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either clips to score"),
        ({"sources": ("a.mp4",), "scores_csv": "s.csv", "model_path": "m.pt"}, "either clips to score"),
        ({"sources": ("a.mp4",)}, "needs --model"),
        ({"scores_csv": "s.csv", "write_model": "w.pt", "threshold": "1"}, "needs --model and --threshold"),
        ({"scores_csv": "s.csv", "model_path": "m.pt", "write_model": "m.pt", "threshold": "1"}, "new file"),
        ({"scores_csv": "s.csv", "threshold": "most"}, "best-f1"),
        ({"scores_csv": "s.csv", "report_far": 1.0}, "report_far"),
    ],
)
def test_evaluation_config_rejects_contradictions(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvaluationConfig(out_dir=tmp_path, **kwargs)


def test_read_scores_errors(tmp_path):
    with pytest.raises(OSError, match="not found"):
        read_scores(tmp_path / "none.csv")
    (tmp_path / "x.csv").write_text("source,frame_index,score\na,0,1\n")
    with pytest.raises(ValueError, match="not a scores CSV.*missing timestamp_s"):
        read_scores(tmp_path / "x.csv")
    header = "source,frame_index,timestamp_s,score,recon_error,disc_score,spatial_score,latent_score,is_anomaly\n"
    (tmp_path / "e.csv").write_text(header)
    with pytest.raises(ValueError, match="no scored frames"):
        read_scores(tmp_path / "e.csv")


def test_label_paths_default_to_files_beside_the_clips(tmp_path):
    clip = tmp_path / "c.mp4"
    config = EvaluationConfig(out_dir=tmp_path, scores_csv=tmp_path / "s.csv")
    with pytest.raises(LabelError, match="no labels"):
        label_paths(config, [str(clip)])
    labels_path_for(clip).write_text("source,frame_index,label\n")
    assert label_paths(config, [str(clip)]) == [tmp_path / "c.labels.csv"]
    given = EvaluationConfig(out_dir=tmp_path, scores_csv=tmp_path / "s.csv", labels=(tmp_path / "l.csv",))
    assert label_paths(given, [str(clip)]) == [tmp_path / "l.csv"]


# --- the whole command ------------------------------------------------------------------------

OBSTACLE, DEBRIS = range(10, 16), range(25, 30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_trained):
    d = tmp_path_factory.mktemp("evaluate")
    model = tiny_trained.path
    normal = write_video(d / "normal.mp4", road_frames(60, seed=5))
    frames = road_frames(40, seed=3)
    frames[10:16] = [with_square(f) for f in frames[10:16]]
    frames[25:30] = [with_square(f, colour=(255, 255, 0), frac=0.3) for f in frames[25:30]]
    clip = write_video(d / "clip.mp4", frames)
    labels_path_for(clip).write_text(
        "source,start_frame,end_frame,kind\nclip.mp4,10,15,obstacle\nclip.mp4,25,29,debris\n"
    )
    return {"dir": d, "model": model, "clip": clip, "normal": normal}


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def decoded_images(html_text):
    parser = Images()
    parser.feed(html_text)
    out = []
    for src in parser.sources:
        header, payload = src.split(",", 1)
        assert header in ("data:image/png;base64", "data:image/jpeg;base64")
        out.append(cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR))
    return out


@pytest.mark.slow
def test_evaluate_clips_with_baselines_and_write_the_chosen_threshold(setup, tmp_path):
    out, chosen = tmp_path / "eval", tmp_path / "chosen.pt"
    args = ["evaluate", str(setup["clip"]), "-m", str(setup["model"]), "-o", str(out)]
    args += ["--baseline-train", str(setup["normal"]), "--baseline-steps", "5", "--threshold", "best-f1"]
    args += ["--write-model", str(chosen), "--smooth", "2", "--top-k", "4", "--device", "cpu", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output

    for name in ("metrics.json", "sweep.csv", "events.json", "scores.csv", "report.html", "roc.png", "pr.png"):
        assert (out / name).is_file(), name
    assert (out / "histogram.png").is_file() and (out / "timelines" / "01_clip.png").is_file()
    assert len(list((out / "top_frames").glob("*.jpg"))) == 4
    assert (out / "baselines" / "ae_only.pt").is_file()

    # every figure and frame is embedded in the one HTML file, and decodes
    html_text = (out / "report.html").read_text()
    images = decoded_images(html_text)
    assert len(images) >= 3 + 1 + 4
    assert all(img is not None and img.size > 0 for img in images)
    assert "PCA AUROC" in html_text and "AE only AUROC" in html_text

    # the figures follow from the scores CSV and the labels
    m = json.loads((out / "metrics.json").read_text())
    cols = read_scores_csv(out / "scores.csv")
    truth = np.isin(cols["frame_index"], [*OBSTACLE, *DEBRIS])
    assert m["frames"] == {"total": 40, "normal": 29, "anomalous": 11, "sources": 1}
    assert m["frame_metrics"]["auroc"] == pytest.approx(roc_auc_score(truth, cols["score"]))
    assert m["frame_metrics"]["average_precision"] == pytest.approx(average_precision_score(truth, cols["score"]))
    assert set(m["frame_metrics"]["per_kind"]) == {"obstacle", "debris"}
    assert set(m["baselines"]) == {"pca", "ae_only"}
    assert set(m["baselines"]["pca"]["per_kind"]) == {"obstacle", "debris"}
    best = best_f1(sweep(truth, cols["score"]))
    assert m["thresholds"]["best_f1"]["threshold"] == pytest.approx(best.threshold)
    assert m["thresholds"]["operating"]["threshold"] == pytest.approx(best.threshold)
    assert m["thresholds"]["calibrated"]["source"] == "model"
    assert m["events"]["labeled_events"] == 2
    assert m["events"]["config"]["window"] == 2
    sweep_lines = (out / "sweep.csv").read_text().splitlines()
    assert sweep_lines[0] == "threshold,tp,fp,fn,tn,precision,recall,false_positive_rate,f1"
    assert len(sweep_lines) - 1 == len(np.unique(cols["score"]))

    # the copy of the model carries the chosen threshold; the original is unchanged
    original = load_detector(setup["model"], torch.device("cpu"))
    copy = load_detector(chosen, torch.device("cpu"))
    assert copy.threshold == pytest.approx(best.threshold)
    assert original.threshold == pytest.approx(m["thresholds"]["calibrated"]["threshold"])
    assert "best F1" in result.output and "obstacle" in result.output


@pytest.mark.slow
def test_evaluate_a_scores_csv_without_model_or_pixels(setup, tmp_path):
    clip = str(shutil.copy(setup["clip"], tmp_path / "clip.mp4"))
    scores = tmp_path / "scores.csv"
    scored = runner.invoke(app, ["score", clip, "-m", str(setup["model"]), "-o", str(scores), "--no-progress"])
    assert scored.exit_code == 0, scored.output
    truth = np.isin(np.arange(40), [*OBSTACLE, *DEBRIS]).astype(int)
    labels = tmp_path / "frames.csv"  # per-frame format this time
    labels.write_text("source,frame_index,label\n" + "".join(f"clip.mp4,{i},{t}\n" for i, t in enumerate(truth)))
    (tmp_path / "clip.mp4").unlink()  # no pixels: baselines and frame strips cannot run

    out = tmp_path / "eval"
    args = ["evaluate", "--scores", str(scores), "--labels", str(labels), "-o", str(out), "--no-progress"]
    result = runner.invoke(app, [*args, "--baseline-train", str(setup["normal"])])
    assert result.exit_code == 0, result.output
    assert "baselines skipped" in result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["baselines"] == {}
    assert m["inputs"]["model"] is None
    cols = read_scores_csv(scores)
    recovered = m["thresholds"]["calibrated"]["threshold"]
    assert ((cols["score"] > recovered) == cols["is_anomaly"]).all()
    assert m["thresholds"]["calibrated"]["tp"] == int((cols["is_anomaly"] & truth.astype(bool)).sum())
    assert len(decoded_images((out / "report.html").read_text())) == 3 + 1  # curves, histogram, one timeline


@pytest.mark.slow
@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("source,start_s,end_s\nclip.mp4,1,2\nother.mp4,0,1\n", "not being evaluated: other.mp4"),
        ("source,start_frame,end_frame\nclip.mp4,30,45\n", "past the end of clip.mp4"),
        ("source,start_s,end_s\nclip.mp4,3.5,4.5\n", "past the end of clip.mp4"),
        ("source,when\nclip.mp4,1\n", "not a label format"),
    ],
)
def test_bad_labels_stop_the_command_with_a_clear_error(setup, tmp_path, labels, message):
    path = tmp_path / "l.csv"
    path.write_text(labels)
    args = ["evaluate", str(setup["clip"]), "-m", str(setup["model"]), "--labels", str(path), "-o", str(tmp_path)]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 2
    assert message in result.output and "error:" in result.output


def test_option_mistakes_are_clear_errors(setup, tmp_path):
    model = str(setup["model"])
    args = ["evaluate", "--scores", "s.csv", "-o", str(tmp_path), "-m", model, "--write-model", "w.pt"]
    no_threshold = runner.invoke(app, args)
    assert no_threshold.exit_code == 2 and "--threshold" in no_threshold.output
    bad_glob = runner.invoke(
        app, ["evaluate", "--scores", "s.csv", "-o", str(tmp_path), "--baseline-train", str(tmp_path / "n*.mp4")]
    )
    assert bad_glob.exit_code == 2 and "matches no file" in bad_glob.output
