import numpy as np
import pytest
import torch
from pydantic import ValidationError

from anomaly.calibrate import evenly_index
from anomaly.checkpoint import CheckpointError, load_detector
from anomaly.config import ModelConfig
from anomaly.model import AutoencoderGAN
from anomaly.preprocess import Preprocessor
from anomaly.training import train as train_module
from anomaly.training.train import (
    ResumeMismatch,
    TrainingData,
    make_optimisers,
    random_shift,
    restore_training_state,
    step_generator,
    train_detector,
    train_step,
    training_state_path,
)


def quiet(_: str) -> None:
    pass


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def frames_numbered(n: int, start: int = 0) -> np.ndarray:
    """n tiny frames whose pixels all hold their index, so a split can be read back."""
    return np.stack([np.full((2, 2, 3), start + i, np.uint8) for i in range(n)])


# --- TrainingData.split --------------------------------------------------------------------------


def test_split_holds_out_the_tail_of_each_source():
    a, b = frames_numbered(8), frames_numbered(20, start=100)
    data = TrainingData.split([a, b], 0.25)
    assert list(data.train[:, 0, 0, 0]) == [*range(0, 6), *range(100, 115)]
    assert list(data.holdout[:, 0, 0, 0]) == [6, 7, *range(115, 120)]
    assert list(data.train_groups) == [0] * 6 + [1] * 15 and list(data.holdout_groups) == [0] * 2 + [1] * 5


def test_split_keeps_short_sources_for_training():
    short, long = frames_numbered(3), frames_numbered(12, start=50)
    data = TrainingData.split([short, long], 0.25)
    assert list(data.train[:, 0, 0, 0]) == [0, 1, 2, *range(50, 59)]
    assert list(data.holdout[:, 0, 0, 0]) == [59, 60, 61]
    assert list(data.train_groups) == [-1] * 3 + [0] * 9  # the short source is never left out


def test_split_with_nothing_to_hold_out_raises():
    with pytest.raises(ValueError, match="too few frames"):
        TrainingData.split([frames_numbered(3), frames_numbered(2)], 0.25)


def test_training_state_path_sits_beside_the_model(tmp_path):
    assert training_state_path(tmp_path / "m.pt") == tmp_path / "m.state.pt"


def test_too_few_training_frames_raise(tmp_path, make_config):
    data = TrainingData(train=np.zeros((1, 24, 32, 3), np.uint8), holdout=np.zeros((8, 24, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="at least two"):
        train_detector(make_config(), data, tmp_path / "m.pt", progress=False, log=quiet)


# --- the training step ---------------------------------------------------------------------------


def test_a_few_steps_lower_the_reconstruction_loss(make_config, make_frames, prepare_all):
    config = make_config()
    x = Preprocessor(config.preprocess).to_tensor(prepare_all(config, make_frames(8, seed=3)))
    torch.manual_seed(0)
    model = AutoencoderGAN(config.model).train()
    opt_g, opt_d = make_optimisers(model, config)[:2]
    losses = [train_step(model, x, opt_g, opt_d, config.train.loss) for _ in range(31)]
    assert set(losses[0]) == {"mse", "adv", "d"}
    assert losses[30]["mse"] < 0.5 * losses[0]["mse"]
    assert all(np.isfinite(v) for step in losses for v in step.values())
    # the discriminator is trainable again after the generator's update
    assert all(p.requires_grad for p in model.discriminator.parameters())


def test_generator_update_leaves_discriminator_alone(make_config):
    """The discriminator moves only in its own update: lr 0 there means its weights stay put."""
    config = make_config()
    torch.manual_seed(0)
    model = AutoencoderGAN(config.model).train()
    opt_g = make_optimisers(model, config)[0]
    opt_d = torch.optim.SGD(model.discriminator.parameters(), lr=0.0)
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    train_step(model, torch.randn(4, 3, 24, 32), opt_g, opt_d, config.train.loss)
    for k, v in model.discriminator.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_step_generator_depends_on_seed_and_step_only():
    def draw(seed, step):
        return torch.randint(1000, (5,), generator=step_generator(seed, step))

    assert torch.equal(draw(0, 7), draw(0, 7))
    assert not torch.equal(draw(0, 7), draw(0, 8))
    assert not torch.equal(draw(0, 7), draw(1, 7))


def test_random_shift():
    x = torch.randn(4, 3, 24, 32)
    assert random_shift(x, 0, step_generator(0, 0)) is x
    a = random_shift(x, 3, step_generator(0, 0))
    b = random_shift(x, 3, step_generator(0, 0))
    assert a.shape == x.shape
    assert torch.equal(a, b)


def test_evenly_index():
    assert list(evenly_index(10, 20)) == list(range(10))
    assert list(evenly_index(10, 4)) == [0, 3, 6, 9]


def test_shift_beyond_reflect_padding_is_refused_and_the_largest_allowed_one_trains(
    tmp_path, make_config, training_data
):
    # 32x24 input: reflect padding needs a shift under half the shorter side, 12
    with pytest.raises(ValidationError, match="shift_pixels=12 is too large .* use less than 12"):
        make_config(steps=1, shift_pixels=12)
    config = make_config(steps=1, shift_pixels=11)
    detector = train_detector(config, training_data, tmp_path / "m.pt", progress=False, log=quiet)
    assert detector.calibration is not None and (tmp_path / "m.pt").is_file()


# --- train_detector ------------------------------------------------------------------------------


def test_same_seed_gives_identical_weights(tmp_path, make_config, training_data):
    a = train_detector(make_config(steps=4), training_data, tmp_path / "a.pt", progress=False, log=quiet)
    b = train_detector(make_config(steps=4), training_data, tmp_path / "b.pt", progress=False, log=quiet)
    assert_same_weights(a.model, b.model)
    assert a.threshold == b.threshold
    c = train_detector(make_config(steps=4, seed=1), training_data, tmp_path / "c.pt", progress=False, log=quiet)
    assert not torch.equal(
        a.model.state_dict()["encoder.to_latent.weight"], c.model.state_dict()["encoder.to_latent.weight"]
    )


def test_training_writes_a_calibrated_model_and_a_state(tiny_trained, training_data):
    det = tiny_trained.detector
    cal = det.calibration
    assert cal is not None
    assert cal.signals == tuple(tiny_trained.config.calibration.signals)
    assert cal.n_frames == len(training_data.holdout)
    assert cal.target_false_alarm_rate == tiny_trained.config.calibration.target_false_alarm_rate
    assert np.isfinite(cal.threshold)
    assert all(s > 0 for s in cal.scale.values())
    assert tiny_trained.path.is_file()
    assert training_state_path(tiny_trained.path).is_file()
    assert load_detector(tiny_trained.path, torch.device("cpu")).threshold == det.threshold


def test_resume_continues_exactly(tmp_path, make_config, training_data):
    straight = train_detector(make_config(steps=6), training_data, tmp_path / "a.pt", progress=False, log=quiet)

    out = tmp_path / "b.pt"
    train_detector(make_config(steps=3), training_data, out, progress=False, log=quiet)
    messages: list[str] = []
    resumed = train_detector(make_config(steps=6), training_data, out, resume=True, progress=False, log=messages.append)
    assert any("resuming from step 3" in m for m in messages)
    assert_same_weights(straight.model, resumed.model)
    assert resumed.threshold == straight.threshold


def test_resume_after_an_interruption(tmp_path, make_config, training_data, monkeypatch):
    config = make_config(steps=6, checkpoint_every=3)
    straight = train_detector(config, training_data, tmp_path / "a.pt", progress=False, log=quiet)

    real_step, calls = train_module.train_step, []

    def interrupted(*args, **kwargs):
        if len(calls) == 4:  # die during step index 4, after the state at step 3 was written
            raise KeyboardInterrupt
        calls.append(1)
        return real_step(*args, **kwargs)

    out = tmp_path / "b.pt"
    monkeypatch.setattr(train_module, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_detector(config, training_data, out, progress=False, log=quiet)
    monkeypatch.undo()
    assert not out.exists()
    assert training_state_path(out).is_file()

    messages: list[str] = []
    resumed = train_detector(config, training_data, out, resume=True, progress=False, log=messages.append)
    assert any("resuming from step 3" in m for m in messages)
    assert_same_weights(straight.model, resumed.model)


def test_resume_without_a_state_starts_afresh(tmp_path, make_config, training_data):
    messages: list[str] = []
    det = train_detector(
        make_config(steps=2), training_data, tmp_path / "m.pt", resume=True, progress=False, log=messages.append
    )
    assert any("starting from step 0" in m for m in messages)
    ref = train_detector(make_config(steps=2), training_data, tmp_path / "n.pt", progress=False, log=quiet)
    assert_same_weights(det.model, ref.model)


@pytest.mark.parametrize(
    "changed",
    [
        {"seed": 1},
        {"model": ModelConfig(widths=(8, 8, 16), latent_channels=4, disc_widths=(8, 8, 8))},
    ],
    ids=["seed", "model"],
)
def test_resume_with_other_settings_is_refused(tmp_path, make_config, training_data, changed):
    out = tmp_path / "m.pt"
    train_detector(make_config(steps=2), training_data, out, progress=False, log=quiet)
    with pytest.raises(CheckpointError, match="other model, preprocessing or seed settings"):
        train_detector(make_config(steps=4, **changed), training_data, out, resume=True, progress=False, log=quiet)


def test_resume_with_other_training_settings_is_refused_while_steps_are_left(tmp_path, make_config, training_data):
    """The steps left would train with other draws or updates than the steps done: one line names them."""
    out = tmp_path / "m.pt"
    train_detector(make_config(steps=2), training_data, out, progress=False, log=quiet)
    other = make_config(steps=4, finder_updates=2, defect_fraction=0.25)
    with pytest.raises(ResumeMismatch, match="other training settings") as refused:
        train_detector(other, training_data, out, resume=True, progress=False, log=quiet)
    assert refused.value.changes == {"train.defect_fraction": (0.0, 0.25), "train.finder_updates": (1, 2)}
    assert "train.finder_updates 1 then, 2 now" in str(refused.value)


def test_a_finished_run_resumes_with_other_training_settings_to_recalibrate(tmp_path, make_config, training_data):
    """No step is left, so nothing trains with them: the networks come back as they were."""
    out = tmp_path / "m.pt"
    done = train_detector(make_config(steps=2), training_data, out, progress=False, log=quiet)
    again = train_detector(
        make_config(steps=2, finder_updates=2), training_data, out, resume=True, progress=False, log=quiet
    )
    assert_same_weights(done.model, again.model)


def test_restore_refuses_a_model_file(tiny_trained):
    config = tiny_trained.config
    model = AutoencoderGAN(config.model)
    with pytest.raises(CheckpointError, match="not an anomaly-training-state file"):
        restore_training_state(tiny_trained.path, config, model, make_optimisers(model, config))


def test_restore_returns_the_saved_step(tiny_trained):
    config = tiny_trained.config
    model = AutoencoderGAN(config.model)
    step = restore_training_state(training_state_path(tiny_trained.path), config, model, make_optimisers(model, config))
    assert step == config.train.steps
    assert_same_weights(model, tiny_trained.detector.model)
