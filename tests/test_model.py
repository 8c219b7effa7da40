import pytest
import torch

from anomaly.config import ModelConfig
from anomaly.model import AutoencoderGAN, Discriminator, Encoder, ModelOutput

CFG = ModelConfig(widths=(8, 12, 16), latent_channels=4, disc_widths=(6, 10, 14))


@pytest.fixture
def model() -> AutoencoderGAN:
    torch.manual_seed(0)
    return AutoencoderGAN(CFG).eval()


@pytest.mark.parametrize("n,h,w", [(2, 24, 32), (1, 72, 128), (3, 16, 16), (2, 40, 64)])
def test_forward_shapes(model, n, h, w):
    x = torch.randn(n, 3, h, w)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.recon.shape == (n, 3, h, w)
    assert out.latent.shape == (n, 4, h // 8, w // 8)
    assert out.disc_logits.shape == (n, 1, h // 8, w // 8)
    assert out.defect_logits.shape == (n, 1, h // 4, w // 4)
    assert [tuple(f.shape) for f in out.stage_features] == [
        (n, 8, h // 2, w // 2),
        (n, 12, h // 4, w // 4),
        (n, 16, h // 8, w // 8),
    ]


def test_a_model_without_a_defect_finder_skips_it_and_so_can_one_with_it(model):
    x = torch.randn(2, 3, 24, 32)
    old = AutoencoderGAN(CFG.model_copy(update={"finder_widths": None})).eval()
    with torch.no_grad():
        assert old.finder is None and old(x).defect_logits is None
        assert model(x, find_defects=False).defect_logits is None
    assert not any(k.startswith("finder.") for k in old.state_dict())


def test_reconstruct_matches_forward(model):
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x), model(x).recon)


def test_parts_have_their_documented_shapes():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 24, 32)
    latent, feats = Encoder(CFG)(x)
    assert latent.shape == (2, 4, 3, 4)
    assert len(feats) == 3
    assert Discriminator(CFG)(x).shape == (2, 1, 3, 4)


def test_disc_logits_judge_the_input_not_the_reconstruction(model):
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).disc_logits, model.discriminator(x))


def test_same_seed_same_initial_weights():
    torch.manual_seed(3)
    a = AutoencoderGAN(CFG).state_dict()
    torch.manual_seed(3)
    b = AutoencoderGAN(CFG).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_forward_is_deterministic_in_eval_mode(model):
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a.recon, b.recon)
    assert torch.equal(a.disc_logits, b.disc_logits)


def test_channels_last_model_gives_the_same_output(model):
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        ref = model(x).recon
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last)).recon
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_fused_copy_scores_as_the_model_and_holds_no_batch_norm(model):
    from anomaly.model import fused_for_inference

    torch.manual_seed(1)
    for module in model.modules():  # batch norms far from the identity, so that folding them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    fused = fused_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the model itself is untouched
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    for a, b in [(ref.recon, out.recon), (ref.latent, out.latent), (ref.defect_logits, out.defect_logits)]:
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    for a, b in zip(ref.stage_features, out.stage_features, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in fused.parameters())
