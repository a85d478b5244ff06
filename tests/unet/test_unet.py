"""The UNet: shapes, every conditioning entry point, zero-init output, attention, errors."""

from __future__ import annotations

import pytest
import torch

from ldmctl.conditioning import Cond
from ldmctl.config import UNetConfig
from ldmctl.errors import ConfigError
from ldmctl.unet import Attention, UNet, position_embedding_2d, timestep_embedding

TINY = dict(
    model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_channels=8, norm_groups=4
)


def _randomise_output(unet: UNet) -> None:
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)


@pytest.mark.parametrize("mult,size", [((1, 2), 8), ((1, 2, 2), 8), ((1,), 5)])
def test_output_has_input_shape(mult, size, generator):
    unet = UNet(UNetConfig(**{**TINY, "channel_mult": mult, "attention_levels": (0,)}))
    z = torch.randn(2, 4, size, size, generator=generator)
    assert unet(z, torch.tensor([1, 999])).shape == z.shape


def test_output_projection_is_zero_initialised(generator):
    unet = UNet(UNetConfig(**TINY))
    out = unet(torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([5, 7]))
    assert torch.count_nonzero(out) == 0


def test_every_entry_point_changes_the_output_and_gets_gradients(generator):
    cfg = UNetConfig(**TINY, concat_channels=2, add_dim=6, context_dim=12, token_dim=10, scale_shift_norm=True)
    unet = UNet(cfg)
    _randomise_output(unet)
    for p in unet.parameters():  # zero-initialised projections would hide the conditioning paths
        if p.ndim >= 2 and torch.count_nonzero(p) == 0:
            torch.nn.init.normal_(p, std=0.05)
    z, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([10, 600])
    fields = dict(
        concat=torch.randn(2, 2, 8, 8, generator=generator),
        add=torch.randn(2, 6, generator=generator),
        context=torch.randn(2, 5, 12, generator=generator),
        tokens=torch.randn(2, 3, 10, generator=generator),
    )
    base = unet(z, t, Cond(**fields))
    base.square().sum().backward()
    missing = [n for n, p in unet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    with torch.no_grad():
        for name in fields:
            changed = dict(fields, **{name: torch.randn_like(fields[name])})
            assert not torch.allclose(unet(z, t, Cond(**changed)), base), name


def test_masked_context_tokens_are_ignored(generator):
    unet = UNet(UNetConfig(**TINY, context_dim=12))
    _randomise_output(unet)
    z, t = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([100])
    ctx = torch.randn(1, 4, 12, generator=generator)
    mask = torch.tensor([[True, True, False, False]])
    a = unet(z, t, Cond(context=ctx, context_mask=mask))
    ctx2 = ctx.clone()
    ctx2[:, 2:] = 99.0
    b = unet(z, t, Cond(context=ctx2, context_mask=mask))
    torch.testing.assert_close(a, b)


def test_missing_condition_is_a_clear_error(generator):
    z, t = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([1])
    with pytest.raises(ConfigError, match="context"):
        UNet(UNetConfig(**TINY, context_dim=12))(z, t)
    with pytest.raises(ConfigError, match="input channels"):
        UNet(UNetConfig(**TINY, concat_channels=3))(z, t)
    with pytest.raises(ConfigError, match="norm_groups"):
        UNet(UNetConfig(**{**TINY, "norm_groups": 5}))


def test_attention_matches_explicit_softmax(generator):
    attn = Attention(16, heads=2, head_dim=8, context_dim=6)
    x, ctx = torch.randn(2, 5, 16, generator=generator), torch.randn(2, 3, 6, generator=generator)
    q = attn.to_q(x).view(2, 5, 2, 8).transpose(1, 2)
    k, v = attn.to_kv(ctx).view(2, 3, 2, 2, 8).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
    ref = attn.to_out((w @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x, ctx), ref)


def test_timestep_and_position_embeddings():
    emb = timestep_embedding(torch.tensor([0, 10]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    pos = position_embedding_2d(3, 4, 16, torch.device("cpu"))
    assert pos.shape == (12, 16) and len({tuple(r.tolist()) for r in pos}) == 12


def test_position_embedding_adds_no_weights_but_changes_the_output(generator):
    plain = UNet(UNetConfig(**TINY, context_dim=12))
    _randomise_output(plain)
    for p in plain.parameters():
        if p.ndim >= 2 and torch.count_nonzero(p) == 0:
            torch.nn.init.normal_(p, std=0.05)
    placed = UNet(UNetConfig(**TINY, context_dim=12, position_embedding=True))
    placed.load_state_dict(plain.state_dict())  # strict: the same weights, none added
    z = torch.randn(1, 4, 8, 8, generator=generator)
    t, cond = torch.tensor([500]), Cond(context=torch.randn(1, 5, 12, generator=generator))
    with torch.no_grad():
        a, b = plain(z, t, cond), placed(z, t, cond)
    assert not torch.allclose(a, b)


def test_gradient_checkpointing_gives_the_same_gradients(generator):
    torch.manual_seed(0)
    a = UNet(UNetConfig(**TINY))
    b = UNet(UNetConfig(**TINY, checkpointing=True))
    b.load_state_dict(a.state_dict())
    _randomise_output(a)
    b.conv_out.weight.data.copy_(a.conv_out.weight)
    z, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([3, 4])
    a(z, t).sum().backward()
    b(z, t).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)
