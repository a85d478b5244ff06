"""Overlapping tiles: apply a function to a large image tile by tile and blend the results.

Generic machinery (it knows nothing about diffusion): :func:`tiled_apply` cuts a (B, C, H, W)
tensor into tiles of side ``tile`` that overlap by at least ``overlap`` pixels
(:func:`tile_starts`), calls ``fn`` on each, and returns the weighted average of the tile outputs.
The weights (:func:`blend_window`) are 1 inside a tile and fall off with a raised-cosine ramp
over the overlap on every side that borders another tile, so seams fade instead of showing.

The ramp is strictly positive, so a tile's own edge effects (padding inside ``fn``) are
attenuated, not removed: for a local ``fn`` with receptive-field radius ``r`` and
``overlap >= 2 r``, output pixels further than ``r`` (output: ``r * scale``) from every interior
tile edge equal the whole-image result, and the rest differ by at most the small ramp weight
times ``fn``'s edge error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ldmctl.errors import ConfigError

TileFn = Callable[[Tensor, tuple[int, int]], Tensor]  # (x_tile (B,C,th,tw), (y0, x0)) -> (B,C',th*s,tw*s)
Progress = Callable[[int, int], None]  # (tiles done, tiles in total)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Return start offsets of tiles of side ``tile`` covering ``[0, length)``.

    Neighbours overlap by at least ``overlap`` pixels, the first tile starts at 0, the last is
    flush with the end, and the starts are spread evenly (they differ by at most one pixel of
    stride). ``length <= tile`` gives ``[0]``.
    """
    if tile < 1:
        raise ConfigError(f"tile size must be >= 1 pixel, got {tile}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"tile overlap must be in 0..{tile - 1} (less than the tile size {tile}), got {overlap}")
    if length < 1:
        raise ConfigError(f"cannot tile an axis of length {length}")
    if length <= tile:
        return [0]
    span = length - tile  # where the last tile starts
    n = math.ceil(span / (tile - overlap)) + 1
    # round(i * span / (n - 1)) in integers; floor(v + 1/2) keeps every gap <= tile - overlap
    return [(2 * i * span + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def _axis_tiles(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Return (starts, tile side) along one axis; a short axis is one tile of its own length."""
    if length <= tile:
        return [0], length
    return tile_starts(length, tile, overlap), tile


def count_tiles(h: int, w: int, tile: int, overlap: int) -> int:
    """Return how many tiles :func:`tiled_apply` uses for an ``h`` x ``w`` input (for progress bars)."""
    tile_starts(max(h, w), tile, overlap)  # validate tile and overlap even for a single tile
    return len(_axis_tiles(h, tile, overlap)[0]) * len(_axis_tiles(w, tile, overlap)[0])


def _ramp(n: int, margin: int) -> Tensor:
    """Raised-cosine ramp over the first ``margin`` of ``n`` positions, then 1 (float64, > 0)."""
    k = torch.arange(n, dtype=torch.float64)
    if margin <= 0:
        return torch.ones(n, dtype=torch.float64)
    # 0.5 - 0.5 cos(pi (k + 1/2) / m): positive at k = 0, and two mirrored ramps sum to exactly 1
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (k + 0.5) / margin)
    return torch.where(k < margin, ramp, torch.ones_like(ramp))


def blend_window(h: int, w: int, *, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Return (h, w) float32 blending weights: 1 inside, raised-cosine ramps at the margins.

    Each margin is the width in pixels of the ramp on that side (0: no ramp, weight 1 up to the
    edge). Weights are strictly positive everywhere; where opposite ramps meet, the smaller wins.
    """
    for side, m in (("top", top), ("bottom", bottom), ("left", left), ("right", right)):
        if m < 0:
            raise ValueError(f"blend_window margin {side}={m} must be >= 0")
    if h < 1 or w < 1:
        raise ValueError(f"blend_window size must be positive, got {h}x{w}")
    wy = torch.minimum(_ramp(h, top), _ramp(h, bottom).flip(0))
    wx = torch.minimum(_ramp(w, left), _ramp(w, right).flip(0))
    return (wy[:, None] * wx[None, :]).float()


def tiled_apply(
    fn: TileFn, x: Tensor, *, tile: int, overlap: int, scale: int = 1, progress: Progress | None = None
) -> Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` (B, C, H, W); return (B, C', H*scale, W*scale).

    ``fn(x_tile, (y0, x0))`` gets a (B, C, th, tw) slice whose top-left corner is at ``(y0, x0)``
    in ``x`` (so callers can slice aligned side inputs) and returns (B, C', th*scale, tw*scale).
    Tiles have side ``min(tile, H)`` x ``min(tile, W)``. The output is the average of the tile
    outputs weighted by :func:`blend_window`, with ramps over ``overlap * scale`` output pixels on
    every side that has a neighbour, divided by the weight sum. If ``H <= tile`` and
    ``W <= tile`` it is exactly ``fn(x, (0, 0))``. ``progress(done, total)`` runs after each tile.

    Memory: the accumulator (output size, float32 or the output dtype if wider), an (H*s, W*s)
    weight sum, and one tile's work at a time. Run it under ``torch.no_grad()`` for inference;
    with autograd on, every tile's graph is kept.
    """
    if x.ndim != 4:
        raise ValueError(f"tiled_apply expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"tile output scale must be an integer >= 1, got {scale!r}")
    h, w = x.shape[-2:]
    tile_starts(max(h, w), tile, overlap)  # validate tile and overlap, even for a single tile
    ys, th = _axis_tiles(h, tile, overlap)
    xs, tw = _axis_tiles(w, tile, overlap)
    if len(ys) * len(xs) == 1:
        out = fn(x, (0, 0))
        _check_tile(out, x.shape[0], (h, w), scale)
        if progress is not None:
            progress(1, 1)
        return out
    return _blend_tiles(fn, x, ys, xs, (th, tw), overlap=overlap, scale=scale, progress=progress)


def _blend_tiles(
    fn: TileFn,
    x: Tensor,
    ys: list[int],
    xs: list[int],
    size: tuple[int, int],
    *,
    overlap: int,
    scale: int,
    progress: Progress | None,
) -> Tensor:
    """Run ``fn`` on every tile (row by row) and return the normalised weighted sum."""
    h, w = x.shape[-2:]
    th, tw = size
    oth, otw, m = th * scale, tw * scale, overlap * scale
    total = len(ys) * len(xs)
    acc: Tensor | None = None  # (B, C', H*s, W*s), allocated once the first tile shows C'
    wsum: Tensor | None = None  # (H*s, W*s)
    out_dtype = x.dtype
    for done, (y0, x0) in enumerate(((y0, x0) for y0 in ys for x0 in xs), start=1):
        out = fn(x[:, :, y0 : y0 + th, x0 : x0 + tw], (y0, x0))
        _check_tile(out, x.shape[0], size, scale)
        if acc is None or wsum is None:
            out_dtype = out.dtype
            dtype = torch.promote_types(out.dtype, torch.float32)
            acc = out.new_zeros((out.shape[0], out.shape[1], h * scale, w * scale), dtype=dtype)
            wsum = out.new_zeros((h * scale, w * scale), dtype=dtype)
        window = blend_window(
            oth,
            otw,
            top=m if y0 > 0 else 0,
            bottom=m if y0 + th < h else 0,
            left=m if x0 > 0 else 0,
            right=m if x0 + tw < w else 0,
        )
        window = window.to(device=acc.device, dtype=acc.dtype)
        oy, ox = y0 * scale, x0 * scale
        acc[:, :, oy : oy + oth, ox : ox + otw] += out.to(acc.dtype) * window
        wsum[oy : oy + oth, ox : ox + otw] += window
        del out  # free this tile's output before the next tile runs
        if progress is not None:
            progress(done, total)
    assert acc is not None and wsum is not None
    acc /= wsum
    return acc.to(out_dtype)


def _check_tile(out: Tensor, batch: int, size: tuple[int, int], scale: int) -> None:
    """Raise ValueError if a tile function returned the wrong shape (a bug in ``fn``)."""
    oh, ow = size[0] * scale, size[1] * scale
    if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != batch or tuple(out.shape[-2:]) != (oh, ow):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"tile function returned {got} for a {size[0]}x{size[1]} tile at scale {scale}; "
            f"expected (B={batch}, C', {oh}, {ow})"
        )
