"""AELoss: NLL weighting, regulariser, adaptive GAN weight, discriminator losses, PatchGAN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldmctl.autoencoder import AELoss, AEOutput, NLayerDiscriminator, adaptive_weight
from ldmctl.autoencoder.losses import hinge_d_loss, vanilla_d_loss
from ldmctl.config import AELossConfig
from ldmctl.errors import ConfigError

LOGITS_REAL = torch.tensor([[0.5, -2.0], [1.5, 0.0]])
LOGITS_FAKE = torch.tensor([[-0.5, 2.0], [-1.5, 0.25]])


def _cfg(**kw) -> AELossConfig:
    base = {"perceptual": "none", "disc_layers": 2, "disc_channels": 8, "disc_start": 5}
    return AELossConfig(**{**base, **kw})


def _batch(seed: int = 0):
    """x, and a reconstruction that depends on a 'last layer' weight like a decoder would."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    last = nn.Parameter(torch.randn(3, 3, 3, 3, generator=g) * 0.1)
    recon = F.conv2d(x + 0.1 * torch.randn(x.shape, generator=g), last, padding=1)
    out = AEOutput(recon=recon, reg_loss=torch.tensor(3.0, requires_grad=True), stats={})
    return x, out, last


class _MeanDistance(nn.Module):
    """A stand-in perceptual net: per-image mean squared difference."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).pow(2).mean(dim=(1, 2, 3))


def test_adaptive_weight_is_the_clamped_gradient_norm_ratio():
    w = nn.Parameter(torch.randn(4, 5))
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    nll, g = (a * w).sum(), (b * w).sum()  # gradients wrt w: a and b
    expected = a.norm() / (b.norm() + 1e-4) * 0.5
    torch.testing.assert_close(adaptive_weight(nll, g, w, 0.5), expected)
    tiny = (1e-12 * b * w).sum()
    torch.testing.assert_close(adaptive_weight(nll, tiny, w, 2.0), torch.tensor(2e4))
    assert not adaptive_weight(nll, g, w, 0.5).requires_grad


def test_generator_loss_before_disc_start_is_nll_plus_kl():
    loss_fn = AELoss(_cfg(logvar_init=0.5, kl_weight=1e-2), kind="kl")
    x, out, last = _batch()
    loss, logs = loss_fn.generator_loss(x, out, step=4, last_layer=last)
    l1 = (x - out.recon).abs()
    nll = (l1 / math.exp(0.5) + 0.5).sum() / 2
    torch.testing.assert_close(loss, nll + 1e-2 * 3.0)
    assert set(logs) == {"loss", "rec", "nll", "kl", "g", "d_weight", "logvar"}
    assert logs["g"] == 0.0 and logs["d_weight"] == 0.0 and logs["kl"] == 3.0
    assert logs["rec"] == pytest.approx(l1.mean().item()) and logs["logvar"] == 0.5
    loss.backward()
    assert loss_fn.logvar.grad is not None and last.grad is not None


def test_generator_loss_with_gan_uses_the_adaptive_weight():
    loss_fn = AELoss(_cfg(disc_weight=0.5, disc_factor=0.7), kind="vq")
    x, out, last = _batch()
    loss, logs = loss_fn.generator_loss(x, out, step=5, last_layer=last)
    assert math.isfinite(loss.item()) and "vq" in logs and logs["d_weight"] > 0
    base, _ = loss_fn.generator_loss(x, out, step=0, last_layer=last)
    g = -loss_fn.discriminator(out.recon).mean()  # BN in train mode: same batch, same logits
    torch.testing.assert_close(loss, base + logs["d_weight"] * 0.7 * g, rtol=1e-5, atol=1e-4)
    assert logs["g"] == pytest.approx(g.item(), rel=1e-5)
    loss.backward()


def test_d_weight_falls_back_without_last_layer_or_gradients():
    loss_fn = AELoss(_cfg(disc_weight=0.3), kind="kl")
    x, out, _ = _batch()
    _, logs = loss_fn.generator_loss(x, out, step=10, last_layer=None)
    assert logs["d_weight"] == pytest.approx(0.3)
    with torch.no_grad():
        x, out, last = _batch()
        _, logs = loss_fn.generator_loss(x, out, step=10, last_layer=last)
    assert logs["d_weight"] == 0.0


def test_perceptual_term_is_broadcast_over_pixels():
    loss_fn = AELoss(_cfg(perceptual_weight=2.0, rec_weight=0.5), kind="kl", perceptual=_MeanDistance())
    x, out, last = _batch()
    loss, logs = loss_fn.generator_loss(x, out, step=0, last_layer=last)
    p = (x - out.recon).pow(2).mean(dim=(1, 2, 3))
    rec = 0.5 * (x - out.recon).abs() + 2.0 * p[:, None, None, None]
    torch.testing.assert_close(loss, rec.sum() / 2 + 1e-6 * 3.0)
    assert logs["p"] == pytest.approx(p.mean().item())


def test_hinge_and_vanilla_match_hand_computation():
    hinge = 0.5 * (((1 - LOGITS_REAL).clamp_min(0)).mean() + ((1 + LOGITS_FAKE).clamp_min(0)).mean())
    vanilla = 0.5 * (torch.log1p(torch.exp(-LOGITS_REAL)).mean() + torch.log1p(torch.exp(LOGITS_FAKE)).mean())
    torch.testing.assert_close(hinge_d_loss(LOGITS_REAL, LOGITS_FAKE), hinge)
    torch.testing.assert_close(vanilla_d_loss(LOGITS_REAL, LOGITS_FAKE), vanilla)
    assert hinge.item() == pytest.approx(0.5 * ((0.5 + 3 + 0 + 1) / 4 + (0.5 + 3 + 0 + 1.25) / 4))


class _FixedD(nn.Module):
    """Returns LOGITS_REAL for inputs with positive mean, LOGITS_FAKE otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (LOGITS_REAL if x.mean() > 0 else LOGITS_FAKE).reshape(1, 1, 2, 2)


@pytest.mark.parametrize("kind, fn", [("hinge", hinge_d_loss), ("vanilla", vanilla_d_loss)])
def test_discriminator_loss_is_gated_and_scaled(kind, fn):
    loss_fn = AELoss(_cfg(disc_loss=kind, disc_factor=0.5), kind="kl")
    loss_fn.discriminator = _FixedD()
    real, fake = torch.ones(1, 3, 16, 16), -torch.ones(1, 3, 16, 16)
    d, logs = loss_fn.discriminator_loss(real, fake, step=5)
    torch.testing.assert_close(d, 0.5 * fn(LOGITS_REAL, LOGITS_FAKE))
    assert logs["logits_real"] == pytest.approx(LOGITS_REAL.mean().item())
    assert logs["logits_fake"] == pytest.approx(LOGITS_FAKE.mean().item())
    d0, logs0 = loss_fn.discriminator_loss(real, fake, step=4)
    assert d0.item() == 0.0 and logs0["d"] == 0.0
    assert not loss_fn.gan_active(4) and loss_fn.gan_active(5)


def test_discriminator_loss_trains_the_discriminator_only():
    loss_fn = AELoss(_cfg(), kind="kl")
    x, out, last = _batch()
    d, logs = loss_fn.discriminator_loss(x, out.recon, step=5)
    assert math.isfinite(d.item()) and set(logs) == {"d", "logits_real", "logits_fake"}
    d.backward()
    assert last.grad is None
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())


def test_state_dict_leaves_out_the_perceptual_net():
    with_p = AELoss(_cfg(), kind="kl", perceptual=nn.Linear(2, 2).requires_grad_(False))
    state = with_p.state_dict()
    assert "logvar" in state and not any(k.startswith("perceptual") for k in state)
    AELoss(_cfg(), kind="kl").load_state_dict(state)  # strict, both ways
    with_p.load_state_dict(AELoss(_cfg(), kind="kl").state_dict())


def test_bad_kind_is_a_config_error():
    with pytest.raises(ConfigError):
        AELoss(_cfg(), kind="gan")  # type: ignore[arg-type]


def test_patchgan_shape_init_and_size_check():
    torch.manual_seed(0)
    d = NLayerDiscriminator(3, 16, 3)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and abs(convs[2].weight.std().item() - 0.02) < 0.002
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 3 and abs(bns[-1].weight.mean().item() - 1.0) < 0.01
    with pytest.raises(ConfigError, match="too small"):
        d(torch.randn(1, 3, 16, 16))
    assert NLayerDiscriminator(3, 8, 2)(torch.randn(1, 3, 12, 12)).shape == (1, 1, 1, 1)


def test_l2_pixel_term_is_the_squared_error():
    loss_fn = AELoss(_cfg(rec_loss="l2", rec_weight=0.5), kind="kl")
    x, out, last = _batch()
    loss, logs = loss_fn.generator_loss(x, out, step=0, last_layer=last)
    sq = (x - out.recon).square()
    torch.testing.assert_close(loss, (0.5 * sq).sum() / 2 + 1e-6 * 3.0)
    assert logs["rec"] == pytest.approx(sq.mean().item())
