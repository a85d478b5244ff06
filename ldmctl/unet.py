"""The time-conditional denoising UNet of latent diffusion (Rombach et al. 2022, §3.2 and app. G).

    z_t ++ cond.concat ─ conv_in ─┬─ level 0: ResBlock [+ SpatialTransformer] x N ─ Downsample ┐
                                  │   ... one level per channel_mult entry ...                 │
    t ─ sinusoid ─ MLP ─(+ add)─ emb (every ResBlock)      middle: ResBlock, ST, ResBlock      │
                                  └─ levels back up, each ResBlock fed its skip, Upsample ─────┘
                                                        ─ GroupNorm ─ SiLU ─ conv_out (zero init)

A SpatialTransformer (LDM's cross-attention block) is GroupNorm, a linear projection to tokens,
``transformer_depth`` blocks of [self-attention, cross-attention on ``cond.context``, GEGLU
feed-forward] with pre-LayerNorm residuals, and a zero-initialised projection back. When
``cond.tokens`` is given, the tokens are joined in front of the image tokens (which get a 2-D
sinusoidal position and a learned "image" type embedding) for joint self-attention and dropped
again after the block. Attention is :func:`torch.nn.functional.scaled_dot_product_attention`.

Feature maps run in channels-last memory: 3x3 convolutions are faster in NHWC on CPU (oneDNN),
and the (B, C, H, W) <-> (B, HW, C) reshapes around every transformer become free views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ldmctl.conditioning.base import Cond
from ldmctl.config import UNetConfig
from ldmctl.errors import ConfigError
from ldmctl.layers import Downsample, Normalize, ResnetBlock, Upsample


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [cos | sin] halves: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def position_embedding_2d(height: int, width: int, dim: int, device: torch.device) -> Tensor:
    """Fixed 2-D sinusoidal positions for image tokens: half the channels for y, half for x. (HW, dim)"""
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float32, device=device) / max(quarter, 1))
    ys = torch.arange(height, dtype=torch.float32, device=device)[:, None] * freqs
    xs = torch.arange(width, dtype=torch.float32, device=device)[:, None] * freqs
    ey = torch.cat([ys.sin(), ys.cos()], -1)[:, None, :].expand(height, width, -1)
    ex = torch.cat([xs.sin(), xs.cos()], -1)[None, :, :].expand(height, width, -1)
    pos = torch.cat([ey, ex], -1).reshape(height * width, -1)
    return F.pad(pos, (0, dim - pos.shape[-1]))


class Attention(nn.Module):
    """Multi-head attention; self-attention uses one fused qkv projection, cross-attention q + kv."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int = 0, upcast: bool = False) -> None:
        super().__init__()
        self.heads, self.inner, self.upcast = heads, heads * head_dim, upcast
        self.cross = context_dim > 0
        if self.cross:
            self.to_q = nn.Linear(dim, self.inner, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * self.inner, bias=False)
        else:
            self.to_qkv = nn.Linear(dim, 3 * self.inner, bias=False)
        self.to_out = nn.Linear(self.inner, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if self.cross:
            q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
            k, v = rearrange(self.to_kv(context), "b m (two h d) -> two b h m d", two=2, h=self.heads)
        else:
            q, k, v = rearrange(self.to_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, M): True attends
        dtype = q.dtype
        if self.upcast and dtype != torch.float32:  # scores and softmax in float32 (SD 2.1's upcast_attention)
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).to(dtype)  # (B, heads, N, d)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """Feed-forward with a GELU-gated linear unit (Shazeer 2020): (a * gelu(g)) W_out."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-LN residual block: self-attention, cross-attention (if a context width), GEGLU FF."""

    def __init__(
        self, dim: int, heads: int, head_dim: int, context_dim: int, ff_mult: int, upcast: bool = False
    ) -> None:
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, heads, head_dim, upcast=upcast)
        self.attn2 = Attention(dim, heads, head_dim, context_dim, upcast) if context_dim else None
        self.norm2 = nn.LayerNorm(dim) if context_dim else None
        self.norm3, self.ff = nn.LayerNorm(dim), GEGLU(dim, ff_mult)

    def forward(
        self, h: Tensor, context: Tensor | None, context_mask: Tensor | None, self_mask: Tensor | None
    ) -> Tensor:
        h = h + self.attn1(self.norm1(h), mask=self_mask)
        if self.attn2 is not None:
            if context is None:
                raise ConfigError(
                    "this UNet has cross-attention (context_dim > 0) but no context was given",
                    hint="pass a crossattn condition, or its null() for unconditional sampling",
                )
            h = h + self.attn2(self.norm2(h), context, context_mask)
        return h + self.ff(self.norm3(h))


class SpatialTransformer(nn.Module):
    """Feature map -> tokens -> transformer blocks -> feature map, with a residual around it."""

    def __init__(self, ch: int, cfg: UNetConfig) -> None:
        super().__init__()
        heads = cfg.num_heads if cfg.num_heads > 0 else max(1, ch // cfg.head_channels)
        head_dim = ch // heads
        self.norm = Normalize(ch, cfg.norm_groups)
        self.proj_in = nn.Linear(ch, ch)
        self.blocks = nn.ModuleList(
            TransformerBlock(ch, heads, head_dim, cfg.context_dim, cfg.ff_mult, cfg.upcast_attention)
            for _ in range(cfg.transformer_depth)
        )
        self.position_embedding = cfg.position_embedding
        self.proj_out = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        if cfg.token_dim:
            self.token_proj = nn.Linear(cfg.token_dim, ch)
            self.image_type = nn.Parameter(torch.zeros(ch))  # modality-type embedding of image tokens

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        b, c, height, width = x.shape
        h = rearrange(self.norm(x), "b c h w -> b (h w) c")  # (B, HW, C); a view in channels-last
        h = self.proj_in(h)
        n_tok, mask = 0, None
        with_tokens = cond.tokens is not None and hasattr(self, "token_proj")
        if with_tokens or self.position_embedding:
            pos = position_embedding_2d(height, width, c, x.device).to(h.dtype)
        if with_tokens:
            tok = self.token_proj(cond.tokens).to(h.dtype)  # (B, M, C)
            n_tok = tok.shape[1]
            h = torch.cat([tok, h + pos + self.image_type.to(h.dtype)], dim=1)  # (B, M + HW, C)
            if cond.tokens_mask is not None:
                mask = torch.cat(
                    [cond.tokens_mask.bool(), cond.tokens_mask.new_ones(b, height * width, dtype=torch.bool)], 1
                )
        elif self.position_embedding:
            h = h + pos
        for block in self.blocks:
            h = block(h, cond.context, cond.context_mask, mask)
        h = self.proj_out(h[:, n_tok:])
        h = rearrange(h, "b (h w) c -> b h w c", h=height, w=width).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)
        return x + h


class UNet(nn.Module):
    """``UNet(cfg)(z_t, t, cond) -> prediction`` with the shape of z_t (see the module diagram)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        check_unet_config(cfg)
        self.config = cfg
        mc, emb_dim = cfg.model_channels, cfg.time_embed_mult * cfg.model_channels
        self.time_mlp = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.add_proj = nn.Linear(cfg.add_dim, emb_dim) if cfg.add_dim else None
        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.concat_channels, mc, 3, padding=1)

        def res(cin: int, cout: int) -> ResnetBlock:
            return ResnetBlock(
                cin,
                cout,
                groups=cfg.norm_groups,
                dropout=cfg.dropout,
                temb_channels=emb_dim,
                scale_shift=cfg.scale_shift_norm,
                eps=cfg.norm_eps,
            )

        self.down, skips, ch = nn.ModuleList(), [mc], mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(nn.ModuleList([res(ch, mc * mult)]))
                ch = mc * mult
                if level in cfg.attention_levels:
                    self.down[-1].append(SpatialTransformer(ch, cfg))
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch, cfg.conv_resample, cfg.downsample_padding)]))
                skips.append(ch)
        self.mid = nn.ModuleList(
            [res(ch, ch)] + ([SpatialTransformer(ch, cfg)] if cfg.mid_attention else []) + [res(ch, ch)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                self.up.append(nn.ModuleList([res(ch + skips.pop(), mc * mult)]))
                ch = mc * mult
                if level in cfg.attention_levels:
                    self.up[-1].append(SpatialTransformer(ch, cfg))
                if level > 0 and i == cfg.num_res_blocks:
                    self.up[-1].append(Upsample(ch, with_conv=cfg.conv_resample))
        self.norm_out = Normalize(ch, cfg.norm_groups, cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels or cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.to(memory_format=torch.channels_last)

    def embed_time(self, t: Tensor, cond: Cond) -> Tensor:
        """Timestep embedding, plus the projected ``cond.add`` vector when the UNet has one. (B, 4C)"""
        emb = self.time_mlp(timestep_embedding(t, self.config.model_channels).to(self.conv_in.weight.dtype))
        if self.add_proj is not None:
            if cond.add is None:
                raise ConfigError("this UNet adds a conditioning vector (add_dim > 0) but none was given")
            emb = emb + self.add_proj(cond.add.to(emb.dtype))
        return emb

    def _run(self, layer: nn.Module, h: Tensor, emb: Tensor, cond: Cond) -> Tensor:
        if isinstance(layer, ResnetBlock):
            fn = layer
            args: tuple = (h, emb)
        elif isinstance(layer, SpatialTransformer):
            fn, args = layer, (h, cond)
        else:
            return layer(h)
        if self.config.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, z_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        cond = cond or Cond()
        if t.ndim == 0:
            t = t.expand(z_t.shape[0])
        x = z_t if cond.concat is None else torch.cat([z_t, cond.concat.to(z_t.dtype)], dim=1)
        if x.shape[1] != self.conv_in.in_channels:
            raise ConfigError(
                f"UNet expects {self.conv_in.in_channels} input channels "
                f"({self.config.in_channels} latent + {self.config.concat_channels} concat), got {x.shape[1]}"
            )
        emb = self.embed_time(t, cond)
        h = self.conv_in(x.contiguous(memory_format=torch.channels_last))
        skips = [h]
        for block in self.down:
            for layer in block:
                h = self._run(layer, h, emb, cond)
            skips.append(h)
        for layer in self.mid:
            h = self._run(layer, h, emb, cond)
        for block in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in block:
                h = self._run(layer, h, emb, cond)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.contiguous()


def check_unet_config(cfg: UNetConfig) -> None:
    """Raise ConfigError for a UNet configuration that cannot be built."""
    widths = {cfg.model_channels * m for m in cfg.channel_mult}
    if any(w % cfg.norm_groups for w in widths):
        raise ConfigError(f"unet.norm_groups={cfg.norm_groups} must divide every width {sorted(widths)}")
    bad = [lv for lv in cfg.attention_levels if not 0 <= lv < len(cfg.channel_mult)]
    if bad:
        raise ConfigError(f"unet.attention_levels {bad} are not level indices 0..{len(cfg.channel_mult) - 1}")
    for w in widths:
        heads = cfg.num_heads if cfg.num_heads > 0 else max(1, w // cfg.head_channels)
        if w % heads:
            raise ConfigError(f"width {w} is not divisible into {heads} attention heads")
    if cfg.downsample_padding not in (0, 1) or not cfg.norm_eps > 0:
        raise ConfigError("unet.downsample_padding must be 0 or 1 and unet.norm_eps > 0")
    if cfg.num_res_blocks < 1 or not cfg.channel_mult:
        raise ConfigError("unet.num_res_blocks must be >= 1 and unet.channel_mult non-empty")
    if (cfg.context_dim or cfg.token_dim) and not cfg.attention_levels and not cfg.mid_attention:
        kind = "crossattn" if cfg.context_dim else "tokens"
        raise ConfigError(
            f"a {kind} conditioner enters the UNet through its attention blocks, but this UNet has none "
            "(unet.attention_levels = [] and unet.mid_attention = false): the condition would be ignored",
            hint="set model.unet.attention_levels (e.g. [1]) or model.unet.mid_attention = true",
        )


def downsample_factor(cfg: UNetConfig) -> int:
    """Latent sides must be multiples of this (one 2x downsampling per level after the first)."""
    return 2 ** (len(cfg.channel_mult) - 1)


__all__ = [
    "GEGLU",
    "Attention",
    "SpatialTransformer",
    "TransformerBlock",
    "UNet",
    "check_unet_config",
    "downsample_factor",
    "position_embedding_2d",
    "timestep_embedding",
]
