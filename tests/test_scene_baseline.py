"""The scene baseline (anomaly.scene_baseline): a frame's score measured from the level of similar held-out frames."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anomaly.frame_scores import combine, frame_scores
from anomaly.heat import HeatLayout
from anomaly.scene_baseline import SceneBaseline, fit_scene_baseline


def two_roads(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out frames of four drives on two roads: a quiet one (features near 0, known-drive scores near
    -1) and one whose normal frames always score higher (features near 5, scores near +1)."""
    rng = np.random.default_rng(seed)
    features = np.concatenate([rng.normal(c, 0.3, (n, 4)) for c in (0.0, 0.0, 5.0, 5.0)])
    scores = np.concatenate([rng.normal(s, 0.1, n) for s in (-1.0, -1.0, 1.0, 1.0)])
    return features, scores, np.repeat(np.arange(4), n)


def test_a_frame_is_measured_from_the_level_of_the_road_it_looks_like():
    features, scores, groups = two_roads()
    scene = fit_scene_baseline(np.zeros(4), np.ones(4), features, scores, groups)
    assert scene is not None and scene.k == 20  # held-out frames per source
    quiet, busy = scene.levels(np.array([[0.1] * 4, [4.9] * 4]))
    assert quiet == pytest.approx(0.0, abs=0.1)  # the quietest scene: nothing taken off
    assert busy == pytest.approx(2.0, abs=0.15)  # the busy road's normal level above the quiet one's
    # the raw features are standardised as the memory's are before the distance
    shifted = fit_scene_baseline(np.full(4, 10.0), np.full(4, 2.0), 10.0 + 2.0 * features, scores, groups)
    assert shifted is not None
    np.testing.assert_allclose(shifted.levels(10.0 + 2.0 * np.array([[4.9] * 4])), [busy], rtol=1e-5)


def test_a_held_out_frame_gets_its_level_from_the_other_drives_only():
    """Drive 2 scores 3 higher than drive 3 on the same road: left out, each frame of it takes drive 3's
    level, as a new drive on that road would; scoring (all drives) mixes both."""
    features, scores, groups = two_roads()
    scores = np.where(groups == 2, scores + 3.0, scores)
    scene = fit_scene_baseline(np.zeros(4), np.ones(4), features, scores, groups)
    assert scene is not None
    left_out = scene.leave_group_out_levels(groups)
    floor = scene.floor
    np.testing.assert_allclose(left_out[groups == 2] + floor, 1.0, atol=0.15)  # drive 3's level
    np.testing.assert_allclose(left_out[groups == 3] + floor, 4.0, atol=0.15)  # drive 2's
    assert (left_out >= 0).all()


def test_one_source_has_no_baseline_and_k_never_exceeds_the_other_sources_frames():
    features, scores, groups = two_roads()
    assert fit_scene_baseline(np.zeros(4), np.ones(4), features, scores, np.zeros(len(groups), int)) is None
    lopsided = np.where(np.arange(len(groups)) < 75, 0, 1)  # 75 frames of one source, 5 of the other
    scene = fit_scene_baseline(np.zeros(4), np.ones(4), features, scores, lopsided)
    assert scene is not None and scene.k == 5
    assert len(scene.leave_group_out_levels(lopsided)) == len(groups)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.floats(-50, 50), min_size=4, max_size=4), st.integers(1, 60))
def test_levels_are_never_negative_so_a_score_never_exceeds_its_signals_combination(query, k):
    features, scores, groups = two_roads(n=15)
    scene = SceneBaseline(np.zeros(4), np.ones(4), features, scores, k=k)
    assert scene.levels(np.array([query])).min() >= 0.0
    signals = {"a": np.array([0.5]), "b": np.array([2.0])}
    loc, scale = {"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 1.0}
    cells = np.zeros((1, 2, 2))
    scored = frame_scores(
        signals, cells, HeatLayout(8, 8, 4, 4), loc=loc, scale=scale, names=("a", "b"), threshold=1.0,
        profile="fleet", rule="logmeanexp", scene=scene, features=np.array([query]),
    )  # fmt: skip
    assert scored.scene_level is not None
    assert scored.score[0] == pytest.approx(
        combine(signals, loc, scale, ("a", "b"), "logmeanexp")[0] - scored.scene_level[0]
    )
    assert scored.score[0] <= 2.0 and scored.is_anomaly[0] == (scored.score[0] > 1.0)


def test_a_profile_with_a_baseline_refuses_to_score_without_features():
    features, scores, groups = two_roads()
    scene = fit_scene_baseline(np.zeros(4), np.ones(4), features, scores, groups)
    with pytest.raises(ValueError, match="summary features"):
        frame_scores(
            {"a": np.zeros(1)}, np.zeros((1, 2, 2)), HeatLayout(8, 8, 4, 4), loc={"a": 0.0}, scale={"a": 1.0},
            names=("a",), threshold=1.0, profile="fleet", scene=scene,
        )  # fmt: skip


def test_arrays_round_trip_and_inconsistent_ones_are_refused():
    features, scores, groups = two_roads()
    scene = fit_scene_baseline(np.zeros(4), np.ones(4), features, scores, groups)
    assert scene is not None
    back = SceneBaseline.from_arrays(scene.to_arrays())
    query = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    np.testing.assert_array_equal(back.levels(query), scene.levels(query))  # stored as fitted: float32
    with pytest.raises(ValueError, match="inconsistent scene baseline"):
        SceneBaseline(np.zeros(4), np.ones(4), features, scores[:-1], k=3)
    with pytest.raises(ValueError, match="inconsistent scene baseline"):
        SceneBaseline(np.zeros(4), np.ones(4), features, scores, k=len(scores) + 1)
