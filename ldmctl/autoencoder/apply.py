"""Run a trained autoencoder on whole images of any size.

The image is padded (reflect) to a multiple of f and cropped back. An image with a side longer
than ``tile`` pixels is reconstructed in overlapping tiles blended with raised-cosine weights
(:func:`ldmctl.tiling.tiled_apply`): the mid-block self-attention costs time and memory that grow
with the *square* of the pixel count (a 1536 px square took 189 s and 4.85 GiB in one piece on
2 cores, docs/autoencoder.md), while tiles keep both linear in the pixel count. An image no
larger than one tile runs in one piece, exactly as without tiling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldmctl.data.modes import crop_to, pad_to_multiple
from ldmctl.device import autocast, module_device
from ldmctl.errors import ConfigError
from ldmctl.tiling import Progress, count_tiles, tiled_apply

DEFAULT_TILE = 512  # pixels: a 128x128 latent at f=4, well inside what the attention handles fast
DEFAULT_OVERLAP = 64  # pixels blended between neighbouring tiles


def check_tiling(f: int, tile: int, overlap: int) -> None:
    """Raise ConfigError unless ``tile`` (0: never tile) is a positive multiple of f and
    ``overlap`` is in [0, tile)."""
    if tile == 0:
        return
    if tile < 0 or tile % f:
        raise ConfigError(f"--tile-px {tile} must be 0 (whole image) or a positive multiple of f={f} pixels")
    if not 0 <= overlap < tile:
        raise ConfigError(f"--overlap-px {overlap} must be >= 0 and smaller than --tile-px {tile} (pixels)")


def reconstruction_tiles(
    ae: nn.Module, h: int, w: int, *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP
) -> int:
    """How many tiles :func:`reconstruct` runs for an ``h`` x ``w`` image (1: one piece)."""
    f = ae.config.downsample_factor
    check_tiling(f, tile, overlap)
    if tile == 0:
        return 1
    return count_tiles(h + (-h) % f, w + (-w) % f, tile, overlap)


@torch.no_grad()
def reconstruct(
    ae: nn.Module,
    x: Tensor,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: Progress | None = None,
    precision: str = "fp32",
) -> Tensor:
    """Encode (posterior mode) and decode images (B, C, H, W) in [-1, 1]; same size out.

    ``tile`` (pixels, a multiple of f; 0 = always in one piece) and ``overlap`` set the tiling of
    images larger than one tile. ``progress(done, total)`` runs after each tile. The autoencoder
    runs where its weights are, under the autocast of ``precision``; the result has ``x``'s
    device and dtype.
    """
    f = ae.config.downsample_factor
    check_tiling(f, tile, overlap)
    device = module_device(ae)
    padded, (h, w) = pad_to_multiple(x.to(device), f)
    with autocast(precision, device):
        if tile == 0:
            recon = ae.decode(ae.encode(padded))
            if progress is not None:
                progress(1, 1)
        else:  # tiles are `tile` pixels or a whole (padded) side, so every tile is a multiple of f
            recon = tiled_apply(
                lambda t, _at: ae.decode(ae.encode(t)), padded, tile=tile, overlap=overlap, progress=progress
            )
    return crop_to(recon, h, w).clamp(-1, 1).to(x.device, x.dtype)


__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE", "check_tiling", "reconstruct", "reconstruction_tiles"]
