"""The convolutional encoder and decoder shared by the KL and VQ first stages.

Rombach et al. 2022, §3.1 and appendix G (the VQGAN coders of Esser et al. 2021): ``conv_in``,
one level per entry of ``channel_mult`` (``num_res_blocks`` residual blocks, self-attention at
the levels listed in ``attn_resolutions``, a 2x downsample between levels), a middle block
(Res, Attn, Res), then GroupNorm, SiLU and ``conv_out``. The decoder mirrors it with one more
residual block per level and 2x upsampling. The downsampling factor is
``f = 2 ** (len(channel_mult) - 1)``.

``attn_resolutions`` holds **level indices**, not pixel sizes: level 0 runs at full input
resolution, level ``i`` at ``1 / 2**i`` of it. That keeps the architecture independent of the
training image size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from ldmctl.config import AutoencoderConfig
from ldmctl.errors import ConfigError
from ldmctl.layers import AttnBlock, Downsample, Normalize, ResnetBlock, Upsample


@dataclass
class AEOutput:
    """What a training forward pass of an autoencoder returns."""

    recon: Tensor  # (B, C, H, W) reconstruction
    reg_loss: Tensor  # scalar: KL (summed over latent dims, mean over batch) or VQ codebook loss
    stats: dict[str, float] = field(default_factory=dict)  # "kl" or "perplexity"/"usage"


def check_config(cfg: AutoencoderConfig) -> None:
    """Raise ConfigError for an autoencoder config that cannot be built."""
    if cfg.kind not in ("kl", "vq"):
        raise ConfigError(f"model.kind={cfg.kind!r} is not one of ['kl', 'vq']")
    if not cfg.channel_mult or cfg.base_channels <= 0 or cfg.num_res_blocks < 1:
        raise ConfigError(
            "model.channel_mult must be non-empty, base_channels > 0 and "
            f"num_res_blocks >= 1 (got {cfg.channel_mult}, {cfg.base_channels}, "
            f"{cfg.num_res_blocks})"
        )
    widths = sorted({cfg.base_channels * m for m in cfg.channel_mult})
    if cfg.norm_groups <= 0 or any(w % cfg.norm_groups for w in widths):
        raise ConfigError(f"model.norm_groups={cfg.norm_groups} must divide every width {widths}")
    bad = [i for i in cfg.attn_resolutions if not 0 <= i < len(cfg.channel_mult)]
    if bad:
        raise ConfigError(
            f"model.attn_resolutions={list(cfg.attn_resolutions)}: {bad} are not "
            f"level indices in [0, {len(cfg.channel_mult) - 1}]",
            hint="attn_resolutions lists levels (0 = full resolution), not sizes",
        )
    if cfg.linear_shortcut and cfg.kind != "kl":
        raise ConfigError(
            "model.linear_shortcut is implemented for kind='kl' only",
            hint="set model.linear_shortcut = false for a VQ model",
        )
    if cfg.z_channels <= 0 or cfg.embed_dim <= 0 or cfg.n_embed <= 0:
        raise ConfigError("model.z_channels, embed_dim and n_embed must be positive")


class _Level(nn.Module):
    """One resolution level: residual blocks (each followed by attention if enabled), then an
    optional resample (Downsample in the encoder, Upsample in the decoder)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        n_blocks: int,
        *,
        attention: bool,
        resample: nn.Module | None,
        groups: int,
        dropout: float,
    ) -> None:
        super().__init__()
        widths = [in_ch] + [out_ch] * n_blocks
        pairs = zip(widths, widths[1:], strict=False)
        self.blocks = nn.ModuleList(ResnetBlock(a, b, groups=groups, dropout=dropout) for a, b in pairs)
        self.attns = nn.ModuleList(AttnBlock(out_ch, groups) for _ in range(n_blocks if attention else 0))
        self.resample = resample if resample is not None else nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            h = block(h)
            if self.attns:
                h = self.attns[i](h)
        return self.resample(h)


class _MidBlock(nn.Module):
    """Res, (Attn), Res at the lowest resolution."""

    def __init__(self, ch: int, *, attention: bool, groups: int, dropout: float) -> None:
        super().__init__()
        self.block1 = ResnetBlock(ch, ch, groups=groups, dropout=dropout)
        self.attn = AttnBlock(ch, groups) if attention else nn.Identity()
        self.block2 = ResnetBlock(ch, ch, groups=groups, dropout=dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block2(self.attn(self.block1(h)))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, out_channels, H/f, W/f)."""

    def __init__(self, cfg: AutoencoderConfig, out_channels: int) -> None:
        super().__init__()
        check_config(cfg)
        g, p, n = cfg.norm_groups, cfg.dropout, len(cfg.channel_mult)
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], kernel_size=3, padding=1)
        ins = [widths[0]] + widths[:-1]
        self.levels = nn.ModuleList(
            _Level(
                ins[i],
                widths[i],
                cfg.num_res_blocks,
                attention=i in cfg.attn_resolutions,
                resample=Downsample(widths[i]) if i < n - 1 else None,
                groups=g,
                dropout=p,
            )
            for i in range(n)
        )
        self.mid = _MidBlock(widths[-1], attention=cfg.mid_attention, groups=g, dropout=p)
        self.norm_out = Normalize(widths[-1], g)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, C0, H, W)
        for level in self.levels:
            h = level(h)  # level i < n-1 halves H and W
        h = self.mid(h)  # (B, C_top, H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, in_channels, h, w) -> image (B, cfg.in_channels, h*f, w*f)."""

    def __init__(self, cfg: AutoencoderConfig, in_channels: int) -> None:
        super().__init__()
        check_config(cfg)
        g, p = cfg.norm_groups, cfg.dropout
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(in_channels, widths[-1], kernel_size=3, padding=1)
        self.mid = _MidBlock(widths[-1], attention=cfg.mid_attention, groups=g, dropout=p)
        levels = []  # deepest first; the level for index i ends with an Upsample unless i == 0
        for i in reversed(range(len(widths))):
            prev = widths[min(i + 1, len(widths) - 1)]
            levels.append(
                _Level(
                    prev,
                    widths[i],
                    cfg.num_res_blocks + 1,
                    attention=i in cfg.attn_resolutions,
                    resample=Upsample(widths[i]) if i > 0 else None,
                    groups=g,
                    dropout=p,
                )
            )
        self.levels = nn.ModuleList(levels)
        self.norm_out = Normalize(widths[0], g)
        self.conv_out = nn.Conv2d(widths[0], cfg.in_channels, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))  # (B, C_top, h, w)
        for level in self.levels:
            h = level(h)  # every level but the last doubles H and W
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, h*f, w*f)


__all__ = ["AEOutput", "Decoder", "Encoder", "check_config"]
