import pytest
from factories import TINY, road_frames, write_video

from anomaly.preprocess import Preprocessor
from footage.ingest import IngestError
from footage.sampling import SamplingConfig
from footage.training_frames import load_prepared_frames


def test_frames_are_prepared_and_grouped_per_source(tmp_path):
    a = write_video(tmp_path / "a.mp4", road_frames(20, seed=1))
    b = write_video(tmp_path / "b.avi", road_frames(10, seed=2))
    pre = Preprocessor(TINY.preprocess)
    per_source = load_prepared_frames([str(a), str(b)], SamplingConfig(), pre, max_frames=1000)
    assert [len(s) for s in per_source] == [20, 10]
    assert per_source[0].shape[1:] == (24, 32, 3)


def test_max_frames_subsamples_evenly_across_sources(tmp_path):
    a = write_video(tmp_path / "a.mp4", road_frames(40, seed=1))
    b = write_video(tmp_path / "b.mp4", road_frames(20, seed=2))
    per_source = load_prepared_frames([str(a), str(b)], SamplingConfig(), Preprocessor(TINY.preprocess), 30)
    assert [len(s) for s in per_source] == [20, 10]


def test_no_readable_source_is_an_error(tmp_path):
    (tmp_path / "x.mp4").write_text("nope")
    errors = []
    with pytest.raises(IngestError, match="no frames"):
        load_prepared_frames(
            [str(tmp_path / "x.mp4")],
            SamplingConfig(),
            Preprocessor(TINY.preprocess),
            100,
            on_error=lambda s, e: errors.append(s),
        )
    assert errors == [str(tmp_path / "x.mp4")]
