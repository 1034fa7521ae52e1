"""Stage-2 projected discriminator and hinge losses, on tiny random DINO / DINOv2 of the real transformers classes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ccsr.models.discriminator import (
    ProjectedDiscriminator,
    build_discriminator,
    default_taps,
    diff_augment,
    save_tiny_backbones,
)
from ccsr.training.gan_losses import hinge_discriminator_loss, hinge_generator_loss


@pytest.fixture(scope="module")
def backbone_dirs(tmp_path_factory):
    return save_tiny_backbones(tmp_path_factory.mktemp("dino"))


@pytest.fixture()
def disc(backbone_dirs):
    torch.manual_seed(0)
    return build_discriminator(*backbone_dirs, cmap_dim=4)


def test_hinge_losses_match_hand_computed_values():
    real = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])
    fake = torch.tensor([[-2.0, 0.0], [0.5, -0.5]])
    # relu(1 - real) = [0, 0.5, 2, 0] -> mean 0.625; relu(1 + fake) = [0, 1, 1.5, 0.5] -> mean 0.75
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(1.375)
    # -mean(fake) = -(-2 + 0 + 0.5 - 0.5) / 4
    assert hinge_generator_loss(fake).item() == pytest.approx(0.5)
    # Beyond the margin nothing is left to learn.
    assert hinge_discriminator_loss(torch.full((3,), 1.5), torch.full((3,), -1.5)).item() == 0.0


def test_default_taps_are_embeddings_and_blocks_2_5_8_11():
    assert default_taps(12) == (0, 3, 6, 9, 12)
    assert default_taps(4) == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="at least 4"):
        default_taps(2)


def test_logits_shape_frozen_backbones_and_gradient_to_the_image(disc):
    x = (torch.rand(2, 3, 48, 40) * 2 - 1).requires_grad_(True)
    c = disc.condition(torch.rand(2, 3, 12, 10))
    assert c.shape == (2, 12) and not c.requires_grad
    logits = disc(x, c)
    # 5 taps x (32/8)^2 patch tokens (the input is resized to the ViT's 32 px).
    assert logits.shape == (2, 5 * 16)
    logits.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.features.parameters())
    assert all(p.grad is None for p in disc.conditioner.parameters())
    assert all(p.grad is not None for p in disc.heads.parameters())
    trainable = {n.split(".")[0] for n, p in disc.named_parameters() if p.requires_grad}
    assert trainable == {"heads"}
    disc.train()
    assert disc.training and not disc.features.training and not disc.conditioner.training


def test_condition_is_dinov2_cls_of_the_bilinearly_resized_lr(disc, backbone_dirs):
    from transformers import Dinov2Model

    lr = torch.rand(2, 3, 9, 13)
    ref = Dinov2Model.from_pretrained(backbone_dirs[1]).eval()
    x = F.interpolate(lr, size=(28, 28), mode="bilinear", align_corners=False)  # no ImageNet normalisation
    with torch.no_grad():
        # transformers' last_hidden_state is taken after the final LayerNorm: index 0 is the CLS token.
        expected = ref(pixel_values=x).last_hidden_state[:, 0]
    torch.testing.assert_close(disc.condition(lr), expected)


def test_projection_makes_logits_depend_on_the_condition(disc):
    disc.augment = False  # same input twice: only the condition differs
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    a = disc(x, torch.randn(1, 12))
    b = disc(x, torch.randn(1, 12))
    assert not torch.allclose(a, b)


def test_heads_are_spectrally_normalised(disc):
    # Every 1-D conv of the heads is spectral-normalised: in training mode each read of `.weight` runs
    # one power iteration, after which its largest singular value is ~1 whatever the raw weights are.
    convs = [m for m in disc.heads.modules() if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == 3 * 5
    disc.train()
    for conv in convs:
        with torch.no_grad():
            conv.parametrizations.weight.original.mul_(7.0)
        for _ in range(50):
            w = conv.weight
        sigma = torch.linalg.matrix_norm(w.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)


def test_diff_augment_translates_with_zero_fill_and_cuts_out_a_square():
    torch.manual_seed(0)
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16) + 1.0
    moved = diff_augment(x, translation=0.125, cutout=0.0)
    for i in range(2):
        # Some integer shift within +-2 px reproduces the output, with zeros where content left the frame.
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros(16, 16)
                ys, xs = slice(max(0, -dy), 16 - max(0, dy)), slice(max(0, -dx), 16 - max(0, dx))
                ys_src, xs_src = slice(max(0, dy), 16 - max(0, -dy)), slice(max(0, dx), 16 - max(0, -dx))
                ref[ys, xs] = x[i, 0, ys_src, xs_src]
                found |= torch.equal(moved[i, 0], ref)
        assert found
    cut = diff_augment(torch.ones(3, 2, 20, 20), translation=0.0, cutout=0.2)
    for i in range(3):
        zeros = (cut[i, 0] == 0).nonzero()
        assert 0 < len(zeros) <= 16  # a 4x4 square, clipped at the border
        assert torch.equal(cut[i, 0] == 0, cut[i, 1] == 0)  # same square in every channel
        h = zeros[:, 0].max() - zeros[:, 0].min() + 1
        w = zeros[:, 1].max() - zeros[:, 1].min() + 1
        assert len(zeros) == h * w  # a rectangle


def test_missing_or_wrong_backbones_fail_with_where_to_get_them(backbone_dirs, tmp_path):
    feats, cond = backbone_dirs
    with pytest.raises(FileNotFoundError, match=r"discriminator.feature_network.*facebook/dino-vits16"):
        build_discriminator(tmp_path / "nowhere", cond)
    with pytest.raises(ValueError, match=r"'dinov2' model, expected 'vit'"):
        build_discriminator(cond, cond)
    # A Hub id that is not cached cannot be fetched offline (the test session sets HF_HUB_OFFLINE=1).
    with pytest.raises(
        FileNotFoundError, match=r"(?s)discriminator.condition_network.*hf download facebook/dinov2-small"
    ):
        build_discriminator(feats, "facebook/dinov2-small-not-cached")


def test_constructor_rejects_taps_outside_the_network(backbone_dirs):
    from transformers import Dinov2Model, ViTModel

    f, c = ViTModel.from_pretrained(backbone_dirs[0]), Dinov2Model.from_pretrained(backbone_dirs[1])
    with pytest.raises(ValueError, match="taps"):
        ProjectedDiscriminator(f, c, taps=(0, 5))
