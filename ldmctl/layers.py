"""Layers shared by two or more model files (the autoencoder coders and the UNet).

The convolutional building blocks of the LDM first stage and denoiser (Rombach et al. 2022,
appendix G; after Ho et al. 2020 and Esser et al. 2021): GroupNorm, a pre-activation residual
block with an optional time-embedding input, single-head spatial self-attention and 2x
down/up-sampling. Nothing here knows which model it belongs to.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def Normalize(channels: int, groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    """Return the GroupNorm used everywhere (eps 1e-6 unless told: Stable Diffusion's UNet uses 1e-5), affine."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=eps, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3x3 conv) twice, plus a shortcut.

    With ``temb_channels > 0`` a projected time embedding ``temb`` (B, temb_channels) is added
    after the first convolution (Ho et al. 2020), or, with ``scale_shift``, applied as
    ``norm2(h) * (1 + scale) + shift`` (ADM, Dhariwal & Nichol 2021). The shortcut is a 1x1 conv
    when the widths differ, else the identity.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        groups: int,
        dropout: float = 0.0,
        temb_channels: int = 0,
        scale_shift: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = Normalize(in_ch, groups, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_ch * (2 if scale_shift else 1)) if temb_channels > 0 else None
        self.norm2 = Normalize(out_ch, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb_proj is None:
            h = self.norm2(h)
        else:
            if temb is None:
                raise ValueError("this ResnetBlock was built with temb_channels > 0; pass temb")
            emb = rearrange(self.temb_proj(F.silu(temb)), "b c -> b c 1 1")
            if self.scale_shift:
                scale, shift = emb.chunk(2, dim=1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + emb)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map, with a residual.

    q, k, v and the output projection are 1x1 convolutions; the attention itself is
    :func:`torch.nn.functional.scaled_dot_product_attention` (fused / memory-efficient kernels).
    """

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = Normalize(ch, groups)
        self.q = nn.Conv2d(ch, ch, kernel_size=1)
        self.k = nn.Conv2d(ch, ch, kernel_size=1)
        self.v = nn.Conv2d(ch, ch, kernel_size=1)
        self.proj_out = nn.Conv2d(ch, ch, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        h = self.norm(x)
        # contiguous (B, 1, HW, C) lets SDPA take its fused CPU kernel instead of the bmm path
        q, k, v = (rearrange(conv(h), "b c h w -> b 1 (h w) c").contiguous() for conv in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), softmax(q k^T / sqrt(C)) v
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height, w=width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv after asymmetric (0, 1, 0, 1) padding, or 2x2 avg pool.

    The asymmetric pad keeps even sizes exact (H -> H/2) the way the LDM first stages were trained.
    ``padding=1`` pads symmetrically inside the conv instead, as the Stable Diffusion UNet does
    (diffusers' ``downsample_padding``; the two differ by which rows and columns each output sees).
    """

    def __init__(self, ch: int, with_conv: bool = True, padding: int = 0) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(ch, ch, kernel_size=3, stride=2, padding=padding) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(x if self.padding else F.pad(x, (0, 1, 0, 1)))  # 0: pad right and bottom only


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour interpolation, then (optionally) a 3x3 conv."""

    def __init__(self, ch: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, kernel_size=3, padding=1) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


__all__ = ["AttnBlock", "Downsample", "Normalize", "ResnetBlock", "Upsample"]
