"""Run a trained autoencoder on whole images of any size (pad to a multiple of f, crop back)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) on the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"  # reflect needs pad < size
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


@torch.no_grad()
def reconstruct(ae: nn.Module, x: Tensor) -> Tensor:
    """Encode (posterior mode) and decode images in [-1, 1] of any size; same size out."""
    f = ae.config.downsample_factor
    padded, (h, w) = pad_to_multiple(x, f)
    recon = ae.decode(ae.encode(padded))
    return recon[..., :h, :w].clamp(-1, 1)
