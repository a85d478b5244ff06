"""DiagonalGaussianDistribution against torch.distributions, and AutoencoderKL specifics."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ldmctl.autoencoder import AutoencoderKL, DiagonalGaussianDistribution, build_autoencoder
from ldmctl.autoencoder.coders import check_config
from ldmctl.config import AutoencoderConfig
from ldmctl.errors import ConfigError
from ldmctl.layers import AttnBlock

DIMS = (1, 2, 3)


def _tiny(**kw) -> AutoencoderConfig:
    base = {
        "kind": "kl",
        "base_channels": 8,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "norm_groups": 4,
        "n_embed": 32,
    }
    return AutoencoderConfig(**{**base, **kw})


def _dist(seed: int, shape=(2, 8, 3, 5)) -> DiagonalGaussianDistribution:
    return DiagonalGaussianDistribution(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))


def test_kl_to_standard_normal_matches_torch():
    d = _dist(0)
    ref = kl_divergence(Normal(d.mean, d.std), Normal(0.0, 1.0)).sum(DIMS)
    assert d.kl().shape == (2,)
    torch.testing.assert_close(d.kl(), ref, rtol=1e-5, atol=1e-5)


def test_kl_between_gaussians_matches_torch():
    p, q = _dist(1), _dist(2)
    ref = kl_divergence(Normal(p.mean, p.std), Normal(q.mean, q.std)).sum(DIMS)
    torch.testing.assert_close(p.kl(q), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.kl(p), torch.zeros(2), rtol=0, atol=1e-5)


def test_nll_matches_log_prob():
    d = _dist(3)
    x = torch.randn(d.mean.shape, generator=torch.Generator().manual_seed(4))
    ref = -Normal(d.mean, d.std).log_prob(x).sum(DIMS)
    torch.testing.assert_close(d.nll(x), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d.nll(x, dims=(1,)), -Normal(d.mean, d.std).log_prob(x).sum(1))


def test_logvar_is_clamped_and_mode_is_mean():
    params = torch.zeros(1, 4, 2, 2)
    params[:, 2] = 100.0
    params[:, 3] = -100.0
    d = DiagonalGaussianDistribution(params)
    assert d.logvar[:, 0].max() == 20.0 and d.logvar[:, 1].min() == -30.0
    torch.testing.assert_close(d.var, d.logvar.exp())
    torch.testing.assert_close(d.std, (0.5 * d.logvar).exp())
    assert torch.equal(d.mode(), d.mean)


def test_sample_is_seeded_and_has_the_right_moments():
    mean, std = 1.5, 0.5
    params = torch.cat([torch.full((1, 2, 64, 64), mean), torch.full((1, 2, 64, 64), 2 * math.log(std))], dim=1)
    d = DiagonalGaussianDistribution(params)
    a = d.sample(torch.Generator().manual_seed(7))
    b = d.sample(torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (1, 2, 64, 64)
    assert not torch.equal(a, d.sample(torch.Generator().manual_seed(8)))
    assert abs(a.mean().item() - mean) < 0.02  # 8192 draws: standard error 0.0055
    assert abs(a.std().item() - std) < 0.02


def test_kl_is_float32_under_bf16():
    d = DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4).bfloat16())
    assert d.kl().dtype == torch.float32 and d.sample().dtype == torch.bfloat16


def test_encode_returns_mode_or_seeded_sample():
    ae = build_autoencoder(_tiny()).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        post = ae.posterior(x)
        assert torch.equal(ae.encode(x), post.mean)
        s1 = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        s2 = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        out = ae(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s1, s2) and not torch.equal(s1, post.mean)
    torch.testing.assert_close(out.reg_loss, post.kl().mean())
    assert out.stats == {"kl": pytest.approx(post.kl().mean().item())}


def test_kl_model_refuses_a_vq_config():
    with pytest.raises(ConfigError, match="kind='kl'"):
        AutoencoderKL(_tiny(kind="vq"))


def test_attention_levels_are_level_indices():
    ae = build_autoencoder(_tiny(attn_resolutions=(0, 2), mid_attention=False))
    enc = [len(level.attns) for level in ae.encoder.levels]
    dec = [len(level.attns) for level in ae.decoder.levels]  # deepest level first
    assert enc == [1, 0, 1] and dec == [2, 0, 2]
    assert not any(isinstance(m, AttnBlock) for m in ae.encoder.mid.modules())


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"attn_resolutions": (3,)}, "level indices"),
        ({"norm_groups": 3}, "norm_groups"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"kind": "vq", "linear_shortcut": True}, "linear_shortcut"),
    ],
)
def test_bad_configs_are_config_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        check_config(_tiny(**changes))


def _pca_projection(x, f, k):
    """Reference: project every f x f patch of x onto its k leading principal components."""
    patches = torch.nn.functional.pixel_unshuffle(x, f).permute(0, 2, 3, 1).reshape(-1, x.shape[1] * f * f).double()
    mean = patches.mean(0)
    _, _, v = torch.linalg.svd(patches - mean, full_matrices=False)
    proj = (patches - mean) @ v[:k].T @ v[:k] + mean
    b, _, h, w = x.shape
    proj = proj.reshape(b, h // f, w // f, -1).permute(0, 3, 1, 2).float()
    return torch.nn.functional.pixel_shuffle(proj, f)


def test_linear_shortcut_starts_as_a_whitened_pca():
    torch.manual_seed(0)
    # images with correlated pixels, so the leading components are well separated
    x = torch.nn.functional.interpolate(torch.randn(6, 3, 4, 4), size=16, mode="bilinear").tanh()
    ae = build_autoencoder(_tiny(linear_shortcut=True, posterior_logvar_init=-7.0)).eval()
    f, k = ae.config.downsample_factor, ae.config.z_channels
    ae.init_linear_shortcut(x)
    post = ae.posterior(x)
    z = post.mode()  # (6, k, 4, 4): whitened principal components
    flat = z.permute(1, 0, 2, 3).reshape(k, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(k), atol=1e-4)
    assert torch.allclose(flat.std(1), torch.ones(k), atol=1e-3)
    assert torch.allclose(post.logvar, torch.full_like(post.logvar, -7.0))
    recon = ae.decode(z)
    assert torch.allclose(recon, _pca_projection(x, f, k), atol=1e-4)
    # the deep path is live: one gradient step changes the reconstruction beyond the PCA
    (recon - x).abs().mean().backward()
    assert ae.decoder.conv_out.weight.grad.abs().sum() > 0
    assert ae.encoder.conv_out.weight.grad.abs().sum() > 0


def test_linear_shortcut_handles_sizes_that_are_not_multiples_of_f():
    ae = build_autoencoder(_tiny(linear_shortcut=True)).eval()
    ae.init_linear_shortcut(torch.rand(2, 3, 16, 16) * 2 - 1)
    z = ae.encode(torch.rand(1, 3, 18, 22) * 2 - 1)
    assert z.shape[-2:] == (18 // 4, 22 // 4)
