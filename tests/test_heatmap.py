import cv2
import numpy as np

from anomaly.config import PreprocessConfig
from anomaly.preprocess import Preprocessor
from footage.heatmap import AnnotatedVideoWriter, draw_annotation, heat_overlay


def test_heat_overlay_colours_only_the_roi_and_marks_the_hot_cell():
    pre = Preprocessor(PreprocessConfig(width=32, height=16, roi=(0.0, 0.5, 1.0, 1.0)))
    frame = np.full((100, 200, 3), 128, np.uint8)
    heat = np.zeros((4, 8), np.float32)
    heat[2, 6] = 10.0
    out = heat_overlay(frame, heat, pre, threshold=2.5)
    assert (out[:50] == 128).all()  # above the ROI: untouched
    hot = out[50 + 25 + 6, 150 + 6].astype(int)  # inside the hot cell: red dominates
    assert hot[2] > hot[0]
    assert (frame == 128).all()  # input not modified


def test_draw_annotation_flags_and_writer_writes(tmp_path):
    pre = Preprocessor(PreprocessConfig(width=32, height=16))
    frame = np.full((90, 160, 3), 100, np.uint8)
    flagged = draw_annotation(frame, np.zeros((4, 8)), score=5.0, threshold=1.0, timestamp_s=1.0, preprocessor=pre)
    assert tuple(flagged[0, 80]) == (0, 0, 255)  # red border
    writer = AnnotatedVideoWriter(tmp_path / "v" / "out.mp4", fps=10)
    for _ in range(3):
        writer.write(flagged)
    writer.close()
    cap = cv2.VideoCapture(str(tmp_path / "v" / "out.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
