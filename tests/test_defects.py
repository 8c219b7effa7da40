"""Generic synthetic defects for training (anomaly.training.defects) and training with them."""

import torch
from factories import TINY
from sklearn.metrics import roc_auc_score

from anomaly.model import AutoencoderGAN, DefectFinder
from anomaly.preprocess import Preprocessor
from anomaly.training.defects import add_defects, noise_masks
from anomaly.training.train import finder_step, make_optimisers, train_detector, train_step


def test_masks_cover_a_few_percent_and_are_reproducible():
    m1 = noise_masks(6, 24, 32, torch.Generator().manual_seed(3))
    m2 = noise_masks(6, 24, 32, torch.Generator().manual_seed(3))
    assert torch.equal(m1, m2) and m1.shape == (6, 1, 24, 32)
    cover = (m1 > 0.5).float().mean(dim=(1, 2, 3))
    assert (cover > 0.005).all() and (cover < 0.3).all()


def test_defects_change_only_the_chosen_frames_under_their_masks():
    x = torch.randn(8, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    damaged, masks = add_defects(x, 0.5, torch.Generator().manual_seed(1))
    untouched = masks.flatten(1).amax(1) == 0
    assert untouched.any() and (~untouched).any()
    assert torch.equal(damaged[untouched], x[untouched])
    outside = (masks == 0).expand_as(x)
    assert torch.equal(damaged[outside], x[outside])
    same, _ = add_defects(x, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(same, x)


def test_the_defect_finder_learns_to_find_defects_in_frames_it_did_not_train_on(make_frames, prepare_all):
    """A few dozen steps on synthetic defects, then its largest logit tells damaged held-out frames from clean."""
    to_tensor = Preprocessor(TINY.preprocess).to_tensor
    train, test = (to_tensor(prepare_all(TINY, make_frames(24, seed=s))) for s in (1, 2))
    torch.manual_seed(0)
    finder = DefectFinder((8, 8, 8)).train()
    opt = torch.optim.Adam(finder.parameters(), lr=3e-3)
    losses = []
    for step in range(150):
        g = torch.Generator().manual_seed(step)
        x = train[torch.randint(len(train), (8,), generator=g)]
        losses.append(finder_step(finder, *add_defects(x, 0.5, g), opt))
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])
    damaged, _ = add_defects(test, 1.0, torch.Generator().manual_seed(99))
    with torch.no_grad():
        finder.eval()
        clean, broken = (finder(t).flatten(1).amax(1) for t in (test, damaged))
    labels = [0] * len(test) + [1] * len(damaged)
    assert roc_auc_score(labels, torch.cat([clean, broken]).numpy()) > 0.9


def test_the_defect_finder_trains_apart_from_the_pair(tmp_path, make_config, training_data):
    """Its training draws its own defects and updates only its own weights: the autoencoder and the
    discriminator come out of training exactly as they do without a finder."""
    with_finder = make_config(steps=4)
    without = with_finder.model_copy(update={"model": with_finder.model.model_copy(update={"finder_widths": None})})
    a = train_detector(with_finder, training_data, tmp_path / "a.pt", progress=False, log=lambda _: None)
    b = train_detector(without, training_data, tmp_path / "b.pt", progress=False, log=lambda _: None)
    pair = b.model.state_dict()
    assert a.model.finder is not None and b.model.finder is None
    assert {k for k in a.model.state_dict() if not k.startswith("finder.")} == set(pair)
    for k, v in a.model.state_dict().items():
        if not k.startswith("finder."):
            assert torch.equal(v, pair[k]), k


def test_more_finder_updates_change_the_finder_alone(tmp_path, make_config, training_data):
    """Each further update of the finder draws its defects apart from the step's generator: the pair
    trains on the same draws whatever the number of updates, and the finder on more defects."""
    quiet = lambda _: None  # noqa: E731
    one = train_detector(
        make_config(steps=3, finder_updates=1), training_data, tmp_path / "a.pt", progress=False, log=quiet
    )
    two = train_detector(
        make_config(steps=3, finder_updates=2), training_data, tmp_path / "b.pt", progress=False, log=quiet
    )
    a, b = one.model.state_dict(), two.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]) is not k.startswith("finder."), k


def test_each_finder_trains_on_its_own_and_the_first_as_a_lone_finder(tmp_path, make_config, training_data):
    """With two finders the pair and the first finder train exactly as with one (same draws, same
    initialisation: the second is built after them and draws its own defects), the second finder ends
    elsewhere, and the model's defect logits are the finders' mean."""
    quiet = lambda _: None  # noqa: E731

    def config(count: int):
        base = make_config(steps=3)
        return base.model_copy(update={"model": base.model.model_copy(update={"finder_count": count})})

    one = train_detector(config(1), training_data, tmp_path / "a.pt", progress=False, log=quiet).model
    two = train_detector(config(2), training_data, tmp_path / "b.pt", progress=False, log=quiet).model
    assert len(one.finders) == 1 and len(two.finders) == 2
    a, b = one.state_dict(), two.state_dict()
    assert set(a) < set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    first, second = (finder.state_dict() for finder in two.finders)
    trained = [k for k, v in first.items() if v.is_floating_point() and "running" not in k]
    assert all(not torch.equal(first[k], second[k]) for k in trained)
    x = torch.randn(2, 3, *training_data.train.shape[1:3], generator=torch.Generator().manual_seed(4))
    two.eval()
    with torch.no_grad():
        mean = (two.finders[0](x) + two.finders[1](x)) / 2
        torch.testing.assert_close(two(x).defect_logits, mean)


def test_training_with_defects_is_reproducible(tmp_path, make_config, training_data):
    config = make_config(steps=4, defect_fraction=0.5)
    a = train_detector(config, training_data, tmp_path / "a.pt", progress=False, log=lambda _: None)
    b = train_detector(config, training_data, tmp_path / "b.pt", progress=False, log=lambda _: None)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_without_restoring_only_the_discriminator_learns_the_defects():
    """`restore_defects=False`: the autoencoder reconstructs the clean frames (as without defects), and
    the discriminator's loss still holds its term on the damaged frames."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, TINY.preprocess.height, TINY.preprocess.width, generator=torch.Generator().manual_seed(2))
    damaged, masks = add_defects(x, 1.0, torch.Generator().manual_seed(3))
    outcomes = {}
    for case, extra in (("clean", {}), ("restore", {"restore": True}), ("find only", {"restore": False})):
        torch.manual_seed(0)
        model = AutoencoderGAN(TINY.model)
        seen = []
        reconstruct = model.reconstruct
        model.reconstruct = lambda t, seen=seen, reconstruct=reconstruct: seen.append(t) or reconstruct(t)
        args = (damaged, masks) if extra else ()
        opt_g, opt_d = make_optimisers(model, TINY)[:2]
        losses = train_step(model, x, opt_g, opt_d, TINY.train.loss, *args, **extra)
        outcomes[case] = (seen[0], losses)
    assert outcomes["restore"][0] is damaged and outcomes["find only"][0] is x and outcomes["clean"][0] is x
    # the autoencoder's first step is the one it takes without defects; the discriminator's loss is not
    assert outcomes["find only"][1]["mse"] == outcomes["clean"][1]["mse"]
    assert outcomes["find only"][1]["d"] > outcomes["clean"][1]["d"]
