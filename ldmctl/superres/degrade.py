"""Low-resolution inputs for super-resolution: resizing, the degradation pipeline, paired data.

A high-resolution crop ``hr`` (3, H, W) in [-1, 1] becomes its low-resolution partner by
:func:`degrade`, following ``DegradationConfig`` (the BSR-style options of LDM's super-resolution
models, all off by default):

1. optional Gaussian blur, sigma ~ U[0, blur] high-res pixels (separable kernel, reflect padding);
2. antialiased bicubic downscale by ``scale`` (:func:`resize`);
3. optional Gaussian noise, std ~ U[0, noise] in [0, 1] units (twice that in [-1, 1] units);
4. optional JPEG round trip through Pillow at a quality ~ randint(jpeg, 95);
5. clamp to [-1, 1].

:class:`SuperresDataset` wraps any ldmctl data set and adds ``"cond_image"`` (the low-res image)
to each item. Its degradation RNG is derived from (seed, epoch, index) with a prefix of its own, so
the crop RNG of the wrapped data set is untouched and a given (seed, epoch, index) always yields
the same (high-res, low-res) pair.
"""

from __future__ import annotations

import io
import math
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ldmctl.config import DegradationConfig
from ldmctl.data.extended import ExtendedDataset
from ldmctl.data.modes import resize
from ldmctl.errors import ConfigError, DataError

JPEG_MAX_QUALITY = 95


def check_degradation(cfg: DegradationConfig) -> None:
    """Raise ConfigError if ``cfg`` holds a value :func:`degrade` cannot use."""
    if isinstance(cfg.scale, bool) or not isinstance(cfg.scale, int) or cfg.scale < 1:
        raise ConfigError(
            f"superres.scale must be an integer >= 1, got {cfg.scale!r}",
            hint="the usual value is 4 (x4 super-resolution)",
        )
    if not cfg.blur >= 0 or math.isinf(cfg.blur):
        raise ConfigError(f"superres.blur must be a finite number >= 0 (max sigma), got {cfg.blur!r}")
    if not cfg.noise >= 0 or math.isinf(cfg.noise):
        raise ConfigError(f"superres.noise must be a finite number >= 0 (max std), got {cfg.noise!r}")
    if isinstance(cfg.jpeg, bool) or not isinstance(cfg.jpeg, int) or not 0 <= cfg.jpeg <= JPEG_MAX_QUALITY:
        raise ConfigError(f"superres.jpeg must be 0 (off) or a quality in 1..{JPEG_MAX_QUALITY}, got {cfg.jpeg!r}")


def degrade(hr: Tensor, cfg: DegradationConfig, rng: random.Random) -> Tensor:
    """Make the low-resolution partner (3, H/s, W/s) of ``hr`` (3, H, W) in [-1, 1].

    See the module docstring for the steps. ``rng`` draws, in this order and only for the options
    that are on: the blur sigma, the noise std and the noise seed, the JPEG quality. With every
    option at 0 the result is exactly ``resize(hr, (H / s, W / s)).clamp(-1, 1)``.
    """
    check_degradation(cfg)
    if hr.ndim != 3 or hr.shape[0] != 3:
        raise DataError(f"degrade expects a (3, H, W) image tensor, got shape {tuple(hr.shape)}")
    s = cfg.scale
    h, w = hr.shape[-2:]
    if h % s or w % s:
        raise DataError(
            f"image size {h}x{w} (HxW) is not a multiple of superres.scale={s}",
            hint=f"use crops whose side is a multiple of {s}",
        )
    x = hr
    if cfg.blur > 0:
        x = gaussian_blur(x, rng.uniform(0.0, cfg.blur))
    x = resize(x, (h // s, w // s))
    if cfg.noise > 0:
        std = rng.uniform(0.0, cfg.noise)
        gen = torch.Generator().manual_seed(rng.getrandbits(63))
        eps = torch.randn(x.shape, generator=gen, dtype=torch.float32)
        x = x + (2.0 * std) * eps.to(device=x.device, dtype=x.dtype)  # [0, 1] std -> [-1, 1] units
    if cfg.jpeg > 0:
        x = jpeg_round_trip(x, rng.randint(cfg.jpeg, JPEG_MAX_QUALITY))
    return x.clamp(-1.0, 1.0)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blur (C, H, W) ``x`` with a separable Gaussian of std ``sigma`` px and reflect padding.

    The kernel radius is ceil(3 sigma), capped at side - 1 (reflect padding's limit). A sigma
    below 0.05 px is a no-op (the kernel would be a delta to float precision).
    """
    if sigma < 0.05:
        return x
    c, h, w = x.shape
    radius = min(math.ceil(3.0 * sigma), h - 1, w - 1)
    if radius < 1:
        return x
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(device=x.device, dtype=x.dtype)
    batch = x.unsqueeze(0)  # (1, C, H, W)
    batch = F.pad(batch, (radius, radius, 0, 0), mode="reflect")
    batch = F.conv2d(batch, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    batch = F.pad(batch, (0, 0, radius, radius), mode="reflect")
    batch = F.conv2d(batch, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return batch.squeeze(0)


def jpeg_round_trip(x: Tensor, quality: int) -> Tensor:
    """Encode (3, H, W) ``x`` in [-1, 1] as JPEG at ``quality`` with Pillow and decode it again."""
    u8 = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    img = Image.fromarray(u8.permute(1, 2, 0).numpy(), mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        arr = np.array(decoded.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    out = torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0
    return out.to(device=x.device, dtype=x.dtype)


def describe(cfg: DegradationConfig) -> str:
    """Describe the degradation options in a few words, e.g. ``bicubic, blur sigma<=2``."""
    parts = ["bicubic"]
    if cfg.blur > 0:
        parts.append(f"blur sigma<={cfg.blur:g} px")
    if cfg.noise > 0:
        parts.append(f"noise std<={cfg.noise:g}")
    if cfg.jpeg > 0:
        parts.append(f"JPEG quality {cfg.jpeg}-{JPEG_MAX_QUALITY}")
    if len(parts) == 1:
        parts.append("no blur/noise/JPEG")
    return ", ".join(parts)


class SuperresDataset(ExtendedDataset):
    """Add ``"cond_image"`` (3, S/s, S/s), the degraded low-res image, to each item of ``base``
    (:class:`~ldmctl.data.extended.ExtendedDataset`). The degradation RNG for item ``i`` is
    ``random.Random(f"ldmctl/degrade/{seed}/{epoch}/{i}")``, separate from the crop RNG.
    """

    def __init__(self, base: Dataset, cfg: DegradationConfig, *, seed: int = 0) -> None:
        check_degradation(cfg)
        if len(base) > 0:  # type: ignore[arg-type]
            _check_size(base[0]["image"], cfg.scale)
        self.cfg, self.seed = cfg, seed

        def low_res(item: dict[str, Any], epoch: int, index: int) -> Tensor:
            return degrade(item["image"], cfg, random.Random(f"ldmctl/degrade/{seed}/{epoch}/{index}"))

        super().__init__(base, "cond_image", low_res, f" -> low-res x{cfg.scale} pairs ({describe(cfg)})")


def _check_size(image: Tensor, scale: int) -> None:
    """Raise ConfigError unless the item size ``image`` (C, H, W) is divisible by ``scale``."""
    h, w = image.shape[-2:]
    if h % scale or w % scale:
        raise ConfigError(
            f"data items are {h}x{w} px, not a multiple of superres.scale={scale}",
            hint=f"set data.size to a multiple of {scale} (e.g. {max(1, h // scale) * scale})",
        )
