import cv2
import numpy as np
import pytest
from factories import TINY, road_frames

from anomaly.events import EventConfig, find_events
from anomaly.metrics import Stretch
from anomaly.preprocess import Preprocessor
from evaluation.plots import (
    frame_pair,
    histogram_figure,
    kind_colours,
    pr_figure,
    roc_figure,
    save_png,
    timeline_figure,
)

LABELS = np.array([0, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def legend_texts(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_save_png_writes_a_decodable_image_of_the_figure_size(tmp_path):
    path = save_png(roc_figure({"model": (LABELS, SCORES)}), tmp_path / "sub" / "roc.png")
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (450, 550, 3)  # 5.5 x 4.5 inches at 100 dpi


def test_roc_figure_names_each_scorer_with_its_auroc():
    fig = roc_figure({"model": (LABELS, SCORES), "PCA": (LABELS, -SCORES)}, {"operating threshold": (0.5, 0.5)})
    texts = legend_texts(fig)
    assert "model (AUROC 0.750)" in texts and "PCA (AUROC 0.250)" in texts
    assert "operating threshold (FPR 0.500, TPR 0.500)" in texts
    model_line = fig.axes[0].get_lines()[0]
    assert model_line.get_xydata()[-1].tolist() == [1.0, 1.0]


def test_roc_figure_skips_a_scorer_with_one_class():
    fig = roc_figure({"model": (np.array([0, 0]), np.array([0.1, 0.2]))})
    assert legend_texts(fig) == ["chance"]


def test_pr_figure_names_each_scorer_with_its_average_precision():
    texts = legend_texts(pr_figure({"model": (LABELS, SCORES)}, {"operating threshold": (0.5, 1.0)}))
    assert "model (AP 0.833)" in texts  # (1/1 + 2/3) / 2
    assert "chance (0.50)" in texts


def test_timeline_shades_labeled_stretches_and_draws_events_and_threshold():
    ts = np.arange(20) / 10.0
    scores = np.r_[np.zeros(5), np.full(5, 3.0), np.zeros(10)]
    events = list(find_events("a.mp4", zip(range(20), ts, scores, strict=True), 1.0, EventConfig()))
    stretches = [Stretch("a.mp4", 5, 9, 0.5, 0.9, "fog", 5), Stretch("a.mp4", 15, 16, 1.5, 1.6, "fog+obstacle", 2)]
    colours = kind_colours(["fog", "obstacle"])
    fig = timeline_figure("clips/a.mp4", ts, scores, scores, 1.0, stretches, events, colours)
    ax = fig.axes[0]
    spans = [p for p in ax.patches if p.get_alpha() == 0.25]
    assert len(spans) == 2
    assert spans[0].get_facecolor()[:3] == pytest.approx(
        tuple(int(colours["fog"][i : i + 2], 16) / 255 for i in (1, 3, 5))
    )
    assert any(line.get_ydata()[0] == 1.0 and line.get_linestyle() == "--" for line in ax.get_lines())
    (bars,) = ax.collections
    assert len(bars.get_paths()) == len(events) == 1
    assert ax.get_title() == "a.mp4"
    assert "labeled: obstacle" in legend_texts(fig)
    assert "smoothed" not in legend_texts(fig)  # identical to the raw scores: drawn once
    fig2 = timeline_figure("a.mp4", ts, scores, scores / 2, 1.0, stretches, events, colours)
    assert "smoothed" in legend_texts(fig2)


def test_histogram_draws_both_classes_and_named_thresholds():
    fig = histogram_figure(np.r_[np.zeros(30), np.ones(10)], np.r_[np.zeros(30), np.ones(10)], {"calibrated": 0.5})
    texts = legend_texts(fig)
    assert "normal (30)" in texts and "anomalous (10)" in texts and "calibrated 0.5" in texts
    assert [line.get_xdata()[0] for line in fig.axes[0].get_lines()] == [0.5]


def test_kind_colours_are_stable_and_split_combined_kinds():
    a = kind_colours(["obstacle", "fog+glare", ""])
    assert list(a) == ["fog", "glare", "obstacle"]
    assert kind_colours(["glare", "fog", "obstacle"]) == a


def test_frame_pair_puts_the_heat_map_beside_the_frame():
    frame = road_frames(1, size=(160, 90))[0]
    pre = Preprocessor(TINY.preprocess)
    alone = frame_pair(frame, width=80)
    assert alone.shape == (45, 80, 3)
    heat = np.zeros((5, 7), np.float32)
    heat[3, 3] = 5.0
    pair = frame_pair(frame, heat, preprocessor=pre, threshold=1.0, width=80)
    assert pair.shape == (45, 164, 3)
    assert np.array_equal(pair[:, :80], alone)
    assert not np.array_equal(pair[:, 84:], alone)  # the overlay changed the right half
    with pytest.raises(ValueError, match="preprocessor"):
        frame_pair(frame, heat)
