"""VectorQuantizer and VQModel: nearest codes, loss, straight-through gradients, dead codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ldmctl.autoencoder import VectorQuantizer, VQModel, build_autoencoder
from ldmctl.config import AutoencoderConfig


def _tiny(**kw) -> AutoencoderConfig:
    base = {
        "kind": "vq",
        "base_channels": 8,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "norm_groups": 4,
        "n_embed": 32,
    }
    return AutoencoderConfig(**{**base, **kw})


def _x(seed: int = 0, b: int = 2, size: int = 16) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_quantizer_picks_the_nearest_code_and_its_loss():
    g = torch.Generator().manual_seed(0)
    vq = VectorQuantizer(n_embed=10, embed_dim=3, beta=0.25)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.randn(10, 3, generator=g))
    z = torch.randn(2, 3, 4, 5, generator=g)
    q = vq(z)
    flat = rearrange(z, "b d h w -> (b h w) d")
    ref = torch.cdist(flat, vq.embedding.weight).argmin(1)
    assert torch.equal(rearrange(q.indices, "b h w -> (b h w)"), ref)
    e = rearrange(vq.embedding.weight[ref], "(b h w) d -> b d h w", b=2, h=4, w=5)
    torch.testing.assert_close(q.z_q, e)  # forward value is the code
    torch.testing.assert_close(q.loss, 1.25 * F.mse_loss(z, e))
    assert 1.0 <= q.perplexity.item() <= 10.0 and 0.0 < q.usage.item() <= 1.0
    counts = torch.bincount(ref, minlength=10)
    assert q.usage.item() == (counts > 0).float().mean().item()


def test_nearest_is_float32_exact_under_bf16_autocast():
    vq = VectorQuantizer(n_embed=64, embed_dim=4)
    with torch.no_grad():
        vq.embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        idx_bf16 = vq.nearest(z)
    assert torch.equal(idx_bf16, vq.nearest(z))


def test_straight_through_reaches_the_encoder_and_codebook_loss_the_codes():
    model = build_autoencoder(_tiny())
    out = model(_x())
    out.recon.pow(2).mean().backward(retain_graph=True)
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # through the quantiser
    assert model.quantize.embedding.weight.grad is None  # reconstruction alone: no codebook grad
    out.reg_loss.backward()
    assert model.quantize.embedding.weight.grad.abs().sum() > 0


def test_decode_quantises_its_input():
    model = build_autoencoder(_tiny()).eval()
    with torch.no_grad():
        z = model.encode(_x())
        codes = rearrange(model.quantize.embedding(model.quantize.nearest(z)), "b h w d -> b d h w")
        ref = model.decoder(model.post_quant_conv(codes))
        torch.testing.assert_close(model.decode(z), ref)
        torch.testing.assert_close(model.decode(z + 1e-6), ref)


def test_usage_is_recorded_in_training_forward_only():
    model = build_autoencoder(_tiny())
    model.eval()
    with torch.no_grad():
        model(_x())
    assert model.quantize.usage_count.sum() == 0
    model.train()
    with torch.no_grad():
        model(_x())
    assert model.quantize.usage_count.sum() == 2 * 4 * 4  # one count per latent position
    assert "quantize.usage_count" not in model.state_dict()


def test_dead_code_restart_revives_unused_codes():
    model = build_autoencoder(_tiny()).train()
    x = _x(b=4)
    with torch.no_grad():
        before = model(x).stats["usage"]
        dead = int((model.quantize.usage_count == 0).sum())
        z = model.encode(x)
        n = model.restart_dead_codes(z, generator=torch.Generator().manual_seed(0))
        after = model(x).stats["usage"]
    assert dead > 0 and n == dead
    flat = rearrange(z, "b d h w -> (b h w) d")
    # every re-seeded code is one of the encoder vectors
    dists = (
        torch.cdist(model.quantize.embedding.weight, flat, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    )
    assert (dists < 1e-6).sum() >= n
    assert after > before


def test_restart_respects_the_config_switch():
    model = build_autoencoder(_tiny(vq_restart_dead=False))
    assert isinstance(model, VQModel)
    weights = model.quantize.embedding.weight.detach().clone()
    with torch.no_grad():
        assert model.restart_dead_codes(model.encode(_x())) == 0
    assert torch.equal(weights, model.quantize.embedding.weight)


def test_restart_with_fewer_vectors_than_dead_codes():
    vq = VectorQuantizer(n_embed=16, embed_dim=2)
    z = torch.randn(3, 2)
    assert vq.restart_dead_codes(z, generator=torch.Generator().manual_seed(0)) == 16
    rows = {tuple(r.tolist()) for r in vq.embedding.weight}
    assert rows <= {tuple(r.tolist()) for r in z}
