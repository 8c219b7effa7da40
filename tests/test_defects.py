"""Generic synthetic defects for training (anomaly.training.defects) and training with them."""

import torch

from anomaly.training.defects import add_defects, noise_masks
from anomaly.training.train import train_detector


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


def test_training_with_defects_is_reproducible(tmp_path, make_config, training_data):
    config = make_config(steps=4, defect_fraction=0.5)
    a = train_detector(config, training_data, tmp_path / "a.pt", progress=False, log=lambda _: None)
    b = train_detector(config, training_data, tmp_path / "b.pt", progress=False, log=lambda _: None)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
