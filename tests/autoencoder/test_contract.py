"""Contract suite every first-stage autoencoder passes: shapes, training, save/load, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldmctl.autoencoder import AEOutput, AutoencoderKL, VQModel, build_autoencoder
from ldmctl.config import AutoencoderConfig
from ldmctl.errors import ConfigError

KINDS = ["kl", "vq"]


def _cfg(kind: str, channel_mult: tuple[int, ...] = (1, 2, 2), **kw) -> AutoencoderConfig:
    return AutoencoderConfig(
        kind=kind, base_channels=8, channel_mult=channel_mult, num_res_blocks=1, norm_groups=4, n_embed=32, **kw
    )


def _build(cfg: AutoencoderConfig, seed: int = 0):
    with torch.random.fork_rng():  # module init draws from the global RNG; keep it contained
        torch.manual_seed(seed)
        return build_autoencoder(cfg)


def _x(b: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channel_mult, f", [((1, 2, 2), 4), ((1, 2, 2, 2), 8), ((1, 2, 2, 2, 2), 16)])
def test_shapes(kind, channel_mult, f):
    cfg = _cfg(kind, channel_mult)
    ae = _build(cfg)
    assert cfg.downsample_factor == f and ae.config is cfg
    assert isinstance(ae, AutoencoderKL if kind == "kl" else VQModel)
    x = _x(size=32)
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (2, cfg.latent_channels, 32 // f, 32 // f)
        assert ae.decode(z).shape == x.shape
        out = ae(x, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, AEOutput) and out.recon.shape == x.shape and out.reg_loss.ndim == 0
    assert set(out.stats) == ({"kl"} if kind == "kl" else {"perplexity", "usage"})


@pytest.mark.parametrize("kind", KINDS)
def test_one_optimizer_step_lowers_the_loss(kind):
    ae = _build(_cfg(kind))
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    x = _x(b=4)

    def loss() -> torch.Tensor:
        out = ae(x, generator=torch.Generator().manual_seed(0))
        return F.l1_loss(out.recon, x) + 1e-3 * out.reg_loss

    before = loss()
    opt.zero_grad()
    before.backward()
    assert ae.last_layer is ae.decoder.conv_out.weight and ae.last_layer.grad is not None
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item()


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_roundtrip_and_scale_factor(kind):
    cfg = _cfg(kind)
    ae = _build(cfg, seed=0).eval()
    assert ae.scale_factor.dtype == torch.float32 and ae.scale_factor.item() == 1.0
    ae.scale_factor.fill_(0.18215)
    state = ae.state_dict()
    assert "scale_factor" in state
    other = _build(cfg, seed=1).eval()
    other.load_state_dict(state)
    assert other.scale_factor.item() == pytest.approx(0.18215)
    x = _x()
    with torch.no_grad():
        assert torch.equal(ae.encode(x), other.encode(x))
        assert torch.equal(ae.decode(ae.encode(x)), other.decode(other.encode(x)))
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert torch.equal(ae(x, generator=g1).recon, other(x, generator=g2).recon)


@pytest.mark.parametrize("kind", KINDS)
def test_determinism(kind):
    a, b = _build(_cfg(kind), seed=5), _build(_cfg(kind), seed=5)
    x = _x()
    with torch.no_grad():
        ra = a(x, generator=torch.Generator().manual_seed(1)).recon
        rb = b(x, generator=torch.Generator().manual_seed(1)).recon
        again = a(x, generator=torch.Generator().manual_seed(1)).recon
    assert torch.equal(ra, rb) and torch.equal(ra, again)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_forward_is_finite(kind):
    ae = _build(_cfg(kind, attn_resolutions=(2,)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ae(_x(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.recon.float()).all() and torch.isfinite(out.reg_loss).all()


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="kind"):
        build_autoencoder(_cfg("gan"))  # type: ignore[arg-type]
