"""Image modes for super-resolution: split any Pillow image into colour + alpha, and merge back.

``ldmctl superres`` upscales photos of any mode and writes the result "in the input's mode".
:func:`split_image` gives the model what it wants, an RGB tensor in [-1, 1], plus the alpha
channel (upscaled separately with :func:`upscale_alpha`) and the original mode;
:func:`merge_image` turns the upscaled tensors back into an image:

============================  ===========================================================
input mode                    output mode
============================  ===========================================================
RGB, RGBA, L, LA, I, F, CMYK  the same
1                             L (a binary image upscaled has grey edges worth keeping)
P (palette)                   RGBA if it has transparency, else RGB: re-quantising the
                              upscaled result to a palette would destroy the new detail
PA                            RGBA
I;16, I;16L, I;16B, I;16N     I;16 (16-bit precision kept end to end, never via 8 bits)
YCbCr                         RGB
RGBa, La (premultiplied)      the same (un-premultiplied while processing)
anything else Pillow can      RGB
convert to RGB
============================  ===========================================================

Greyscale inputs become three equal channels; on the way back the grey value is the ITU-R
BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` of the model's RGB output. Value ranges: 8-bit modes
use 0..255, 16-bit modes and ``I`` use 0..65535 (``I`` is what older Pillow versions give 16-bit
PNGs), and ``F`` is read as [0, 1] when its maximum is <= 1, else as 0..255 (as
``ldmctl.data.images.to_rgb`` does) and is always written back as [0, 1]. CMYK goes through
Pillow's profile-free conversion, so a K channel is not reconstructed (K comes back as 0).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ldmctl.errors import ConfigError, DataError

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
ALPHA_MODES = {"RGBA": "RGBA", "LA": "LA", "PA": "RGBA", "RGBa": "RGBa", "La": "La"}
LUMA_601 = (0.299, 0.587, 0.114)


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize (C, H, W) or (B, C, H, W) ``x`` to ``size = (h, w)`` with bicubic interpolation.

    Antialiasing is on whenever an axis shrinks (PyTorch's antialiased bicubic, which matches
    Pillow's), and off when only enlarging (plain bicubic, a = -0.75). Values are **not**
    clamped: bicubic overshoots slightly near edges, and callers clamp where they need a range.
    Same-size input is returned as is. Non-float input is computed in float32.
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"expected a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"resize target must be positive, got {size}")
    in_h, in_w = x.shape[-2:]
    if (h, w) == (in_h, in_w):
        return x
    if not x.is_floating_point():
        x = x.float()
    batch = x if x.ndim == 4 else x.unsqueeze(0)
    shrink = h < in_h or w < in_w
    out = F.interpolate(batch, size=(h, w), mode="bicubic", align_corners=False, antialias=shrink)
    return out if x.ndim == 4 else out.squeeze(0)


def split_image(img: Image.Image) -> tuple[Tensor, Tensor | None, str]:
    """Split ``img`` into rgb (3, H, W) in [-1, 1], alpha (1, H, W) in [0, 1] or None, and its mode.

    Raises DataError for a mode that Pillow cannot convert to RGB.
    """
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        grey = np.asarray(img).astype(np.float64) / 65535.0  # (H, W), any byte order
        return _grey_to_rgb(np.clip(grey, 0.0, 1.0)), None, mode
    if mode == "F":
        grey = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if grey.size and grey.max() > 1.0:
            grey = grey / 255.0
        return _grey_to_rgb(np.clip(grey, 0.0, 1.0)), None, mode
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode == "La":
        img = img.convert("LA")  # Pillow converts La only to LA
    elif mode in ALPHA_MODES:
        img = img.convert("LA" if mode == "LA" else "RGBA")
    alpha = None
    if img.mode in ("RGBA", "LA"):
        alpha = torch.from_numpy(np.array(img.getchannel("A"), dtype=np.float32) / 255.0)[None]
    colour = img.convert("L") if img.mode in ("L", "LA", "1") else img
    try:
        arr = np.array(colour if colour.mode == "L" else colour.convert("RGB"), dtype=np.float64)
    except ValueError:
        raise DataError(f"unsupported image mode {mode!r}", hint="convert the image to RGB first") from None
    if arr.ndim == 2:
        return _grey_to_rgb(arr / 255.0), alpha, mode
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1).float().contiguous(), alpha, mode


def _grey_to_rgb(grey: np.ndarray) -> Tensor:
    """Turn an (H, W) array in [0, 1] into a (3, H, W) float32 tensor in [-1, 1]."""
    t = torch.from_numpy(grey * 2.0 - 1.0).float()
    return t.unsqueeze(0).expand(3, -1, -1).contiguous()


def merge_image(rgb: Tensor, alpha: Tensor | None, mode: str) -> Image.Image:
    """Build an image in (or close to) ``mode`` from rgb (3, H, W) in [-1, 1] and alpha (1, H, W).

    See the module docstring for the mode mapping. Values are clamped and rounded to the
    output's integer range (``F`` is only clamped to [0, 1]). ``alpha`` is dropped for modes
    without transparency, and an alpha of None with an alpha mode means "opaque".
    """
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"expected an rgb (3, H, W) tensor, got shape {tuple(rgb.shape)}")
    unit = ((rgb.detach().double().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()  # (H, W, 3) in [0, 1]
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        grey = _luma(unit)
        if mode == "F":
            return Image.fromarray(grey.astype(np.float32))
        levels = np.round(grey * 65535.0)
        return Image.fromarray(levels.astype(np.int32) if mode == "I" else levels.astype(np.uint16))
    grey_out = mode in ("L", "1", "LA", "La")
    u8 = np.round(_luma(unit) * 255.0) if grey_out else np.round(unit * 255.0)
    img = Image.fromarray(u8.astype(np.uint8))  # L or RGB
    has_alpha = mode in ALPHA_MODES or (mode == "P" and alpha is not None)
    if not has_alpha:
        return img.convert("CMYK") if mode == "CMYK" else img
    a8 = _alpha_u8(alpha, img.size)
    img = Image.merge("LA" if grey_out else "RGBA", [*img.split(), a8])
    return img.convert(mode) if mode in ("RGBa", "La") else img


def _luma(unit: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an (H, W, 3) array in [0, 1]; exact for equal channels."""
    grey = unit @ np.asarray(LUMA_601, dtype=np.float64)
    return np.clip(grey, 0.0, 1.0)


def _alpha_u8(alpha: Tensor | None, size: tuple[int, int]) -> Image.Image:
    """Turn alpha (1, H, W) in [0, 1] (None: opaque) into an 8-bit L image of ``size`` (W, H)."""
    if alpha is None:
        return Image.new("L", size, 255)
    if alpha.ndim != 3 or alpha.shape[0] != 1 or (alpha.shape[2], alpha.shape[1]) != size:
        raise ValueError(f"alpha must be (1, {size[1]}, {size[0]}), got shape {tuple(alpha.shape)}")
    a = (alpha[0].detach().double().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return Image.fromarray(a.numpy())


def upscale_alpha(alpha: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize alpha (1, H, W) or (B, 1, H, W) to ``size = (h, w)`` (bicubic), clamped to [0, 1]."""
    return resize(alpha, size).clamp(0.0, 1.0)


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad (C, H, W) or (B, C, H, W) ``x`` at the bottom/right so H and W divide by ``multiple``.

    Each axis uses reflect padding when it is long enough (pad < side), else replicate (tiny
    images). Returns the padded tensor and the original (H, W) for :func:`crop_to`.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ConfigError(f"padding multiple must be an integer >= 1, got {multiple!r}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (h, w)
    batch = x if x.ndim == 4 else x.unsqueeze(0)
    if pad_w:
        batch = F.pad(batch, (0, pad_w, 0, 0), mode="reflect" if pad_w < w else "replicate")
    if pad_h:
        batch = F.pad(batch, (0, 0, 0, pad_h), mode="reflect" if pad_h < h else "replicate")
    return (batch if x.ndim == 4 else batch.squeeze(0)), (h, w)


def crop_to(x: Tensor, h: int, w: int) -> Tensor:
    """Return the top-left ``h`` x ``w`` of ``x`` (..., H, W): the inverse of :func:`pad_to_multiple`."""
    if h > x.shape[-2] or w > x.shape[-1] or h < 1 or w < 1:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to {h}x{w}")
    return x[..., :h, :w]
