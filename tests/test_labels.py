import pytest

from pipelines.labels import FrameLabels, LabelError, labels_path_for


def write(path, text):
    path.write_text(text)
    return path


def test_per_frame_labels_join_by_file_name(tmp_path):
    p = write(tmp_path / "c.labels.csv", "source,frame_index,label,kind\nc.mp4,0,0,\nc.mp4,1,1,fog\nc.mp4,2,0,\n")
    labels, kinds = FrameLabels.read([p]).join(["/data/c.mp4", "/data/c.mp4"], [1, 2])
    assert labels.tolist() == [True, False]
    assert kinds == ["fog", ""]


def test_kind_column_is_optional(tmp_path):
    p = write(tmp_path / "l.csv", "source,frame_index,label\nc.mp4,0,1\n")
    labels, kinds = FrameLabels.read([p]).join(["c.mp4"], [0])
    assert labels.tolist() == [True] and kinds == [""]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(LabelError, match="missing column"):
        FrameLabels.read([write(tmp_path / "a.csv", "source,label\nc.mp4,1\n")])
    with pytest.raises(LabelError, match=":2:"):
        FrameLabels.read([write(tmp_path / "b.csv", "source,frame_index,label\nc.mp4,x,1\n")])
    ok = FrameLabels.read([write(tmp_path / "c.csv", "source,frame_index,label\nc.mp4,0,1\n")])
    with pytest.raises(LabelError, match="no labels for source"):
        ok.join(["other.mp4"], [0])
    with pytest.raises(LabelError, match="frame 5"):
        ok.join(["c.mp4"], [5])


def test_labels_path_convention(tmp_path):
    assert labels_path_for(tmp_path / "test_00.mp4") == tmp_path / "test_00.labels.csv"
