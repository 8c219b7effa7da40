import pytest

from footage.labels import FrameLabels, LabelError, Labels, SourceExtent, labels_path_for


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


# --- both formats through Labels ---------------------------------------------------------------


def test_interval_labels_in_seconds_cover_inclusive_ends(tmp_path):
    p = write(tmp_path / "i.csv", "source,start_s,end_s,kind\nclip.mp4,0.2,0.4,obstacle\n")
    labels, kinds = Labels.read([p]).join(["clip.mp4"] * 6, range(6), [i / 10 for i in range(6)])
    assert labels.tolist() == [False, False, True, True, True, False]
    assert kinds == ["", "", "obstacle", "obstacle", "obstacle", ""]


def test_interval_labels_in_frames_and_overlapping_kinds(tmp_path):
    p = write(
        tmp_path / "i.csv",
        "source,start_frame,end_frame,kind\n/x/clip.mp4,1,3,fog\nclip.mp4,3,4,obstacle\nclip.mp4,10,12,fog\n",
    )
    labels, kinds = Labels.read([p]).join(["a/clip.mp4"] * 6, [0, 1, 3, 4, 5, 11], [0.0] * 6)
    assert labels.tolist() == [False, True, True, True, False, True]
    assert kinds == ["", "fog", "fog+obstacle", "obstacle", "", "fog"]


def test_format_is_detected_per_file_and_files_combine(tmp_path):
    per_frame = write(tmp_path / "a.labels.csv", "source,frame_index,label,kind\na.mp4,0,1,glare\na.mp4,1,0,\n")
    interval = write(tmp_path / "b.csv", "source,start_frame,end_frame\nb.mp4,1,1\n")
    normal = write(tmp_path / "c.csv", "source,start_s,end_s,kind\nc.mp4,,,\n")  # labeled, no anomaly
    both = Labels.read([per_frame, interval, normal])
    assert both.sources == {"a.mp4", "b.mp4", "c.mp4"}
    labels, kinds = both.join(["a.mp4", "a.mp4", "b.mp4", "b.mp4", "c.mp4"], [0, 1, 0, 1, 7], [0, 0.1, 0, 0.1, 0.7])
    assert labels.tolist() == [True, False, False, True, False]
    assert kinds == ["glare", "", "", "", ""]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source,start,stop\nc.mp4,1,2\n", "not a label format"),
        ("source,start_s,end_s,start_frame,end_frame\nc.mp4,1,2,3,4\n", "more than one label format"),
        ("source,start_s,end_s\nc.mp4,2,1\n", "before start_s"),
        ("source,start_s,end_s\nc.mp4,one,2\n", r"i.csv:2: 'one' is not a number"),
        ("source,start_frame,end_frame\nc.mp4,1.5,2\n", "whole frame number"),
        ("source,start_s,end_s\nc.mp4,-1,2\n", ">= 0"),
        ("source,start_s,end_s\nc.mp4,1,\n", "or neither"),
        ("source,start_s,end_s\n,1,2\n", "empty source"),
        ("source,frame_index,label\nc.mp4,0,2\n", "label must be 0 or 1"),
    ],
)
def test_label_file_errors_name_the_problem(tmp_path, text, message):
    with pytest.raises(LabelError, match=message):
        Labels.read([write(tmp_path / "i.csv", text)])


def test_missing_label_file_and_source_in_both_formats(tmp_path):
    with pytest.raises(LabelError, match="not found"):
        Labels.read([tmp_path / "nope.csv"])
    a = write(tmp_path / "a.csv", "source,frame_index,label\nc.mp4,0,1\n")
    b = write(tmp_path / "b.csv", "source,start_s,end_s\nc.mp4,0,1\n")
    with pytest.raises(LabelError, match="both per frame and by intervals"):
        Labels.read([a, b])


def test_labels_for_sources_not_evaluated_are_an_error(tmp_path):
    labels = Labels.read([write(tmp_path / "i.csv", "source,start_s,end_s\nclip.mp4,0,1\ntypo.mp4,0,1\n")])
    labels.check_sources(["/data/clip.mp4", "/data/typo.mp4"])  # all known: fine
    with pytest.raises(LabelError, match="not being evaluated: typo.mp4"):
        labels.check_sources(["/data/clip.mp4"])


def test_scored_source_without_labels_is_an_error(tmp_path):
    labels = Labels.read([write(tmp_path / "i.csv", "source,start_s,end_s\nclip.mp4,0,1\n")])
    with pytest.raises(LabelError, match="no labels for source other.mp4"):
        labels.join(["other.mp4"], [0], [0.0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source,frame_index,label\nclip.mp4,0,0\nclip.mp4,30,1\n", "go to frame 30, past the end"),
        ("source,start_frame,end_frame\nclip.mp4,25,30\n", "ends at frame 30, past the end"),
        ("source,start_s,end_s\nclip.mp4,2.5,3.5\n", r"ends at 3.5 s, past the end of clip.mp4 \(3.000 s long\)"),
    ],
)
def test_labels_past_the_end_of_the_video_are_an_error(tmp_path, text, message):
    labels = Labels.read([write(tmp_path / "i.csv", text)])
    extent = {"/data/clip.mp4": SourceExtent(n_frames=30, duration_s=3.0)}
    with pytest.raises(LabelError, match=message):
        labels.check_extents(extent)


def test_labels_within_the_video_pass_the_extent_check(tmp_path):
    labels = Labels.read(
        [
            write(tmp_path / "a.csv", "source,frame_index,label\nclip.mp4,29,1\n"),
            write(tmp_path / "b.csv", "source,start_s,end_s\nother.mp4,2.5,3.0\n"),
        ]
    )
    labels.check_extents({"clip.mp4": SourceExtent(n_frames=30, duration_s=3.0), "other.mp4": SourceExtent(30, 3.0)})
    labels.check_extents({})  # unknown lengths are not checked
