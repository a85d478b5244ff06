"""Image-quality metrics as pure functions over tensors.

Conventions: images are float tensors (B, C, H, W) with values in [0, 1] unless stated; every
metric returns one value per image, shape (B,), so callers can report per-image figures and
means. Shared by eval-ae, eval-sr and eval.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmctl.device import full_fp32, module_device


def quantize_8bit(x: Tensor) -> Tensor:
    """Round [0, 1] images to the 256 levels a PNG stores, so metrics match the files written."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def psnr(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB, 10 log10(L^2 / MSE), per image. Identical images give inf."""
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def _gaussian_window(sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    coords = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, *, data_range: float = 1.0, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004, eq. 13), per image, averaged over channels.

    Gaussian-weighted 11x11 window (sigma 1.5, truncated at 3.5 sigma), population statistics,
    K1 = 0.01, K2 = 0.03, mean over the valid (unpadded) region: the same definition as
    scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``.
    """
    _check_pair(x, y)
    radius = int(3.5 * sigma + 0.5)
    if min(x.shape[-2:]) < 2 * radius + 1:
        raise ValueError(f"SSIM needs images of at least {2 * radius + 1} px, got {tuple(x.shape[-2:])}")
    x, y = x.double(), y.double()
    c = x.shape[1]
    g = _gaussian_window(sigma, radius, x.dtype, x.device)
    kh = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)  # separable: vertical then horizontal pass
    kw = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()


@torch.no_grad()
def lpips_distance(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """LPIPS (Zhang et al. 2018) per image, for [0, 1] images and a net from ``build_perceptual``;
    computed where the net is, returned on ``x``'s device."""
    _check_pair(x, y)
    d = module_device(net)
    with full_fp32():
        return net(x.to(d) * 2 - 1, y.to(d) * 2 - 1).flatten().float().to(x.device)


def bicubic_roundtrip(x: Tensor, factor: int) -> Tensor:
    """Downsample by ``factor`` (antialiased bicubic) and upsample back: the classic baseline."""
    h, w = x.shape[-2:]
    small = F.interpolate(
        x,
        size=(max(1, math.ceil(h / factor)), max(1, math.ceil(w / factor))),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
