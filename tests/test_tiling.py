"""Overlapping-tile machinery: tile layout, blend windows and tiled_apply against whole-image runs."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

from ldmctl.errors import ConfigError
from ldmctl.tiling import blend_window, count_tiles, tile_starts, tiled_apply


def _covers(starts: list[int], length: int, tile: int, overlap: int) -> None:
    side = min(tile, length)
    assert starts[0] == 0 and starts[-1] + side == length
    assert starts == sorted(set(starts))
    for a, b in pairwise(starts):
        assert a + side - b >= overlap  # neighbours overlap by at least `overlap`
    gaps = [b - a for a, b in pairwise(starts)]
    assert not gaps or max(gaps) - min(gaps) <= 1  # evenly spread


@pytest.mark.parametrize("length", [1, 5, 31, 32, 33, 47, 64, 65, 100, 257])
@pytest.mark.parametrize("tile,overlap", [(32, 0), (32, 8), (32, 16), (32, 31), (8, 3)])
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    _covers(starts, length, tile, overlap)
    if length > tile:  # no more tiles than needed
        assert len(starts) - 1 == -(-(length - tile) // (tile - overlap))


def test_tile_starts_edge_cases():
    assert tile_starts(32, 32, 8) == [0]
    assert tile_starts(10, 32, 8) == [0]
    assert tile_starts(33, 32, 8) == [0, 1]
    assert tile_starts(56, 32, 8) == [0, 24]
    assert tile_starts(100, 32, 8) == [0, 23, 45, 68]
    for tile, overlap in [(32, 32), (32, 40), (32, -1), (0, 0)]:
        with pytest.raises(ConfigError):
            tile_starts(100, tile, overlap)
    with pytest.raises(ConfigError):
        tiled_apply(lambda t, _: t, torch.zeros(1, 1, 8, 8), tile=8, overlap=8)  # checked for one tile too


def test_count_tiles():
    assert count_tiles(100, 20, 32, 8) == 4
    assert count_tiles(100, 100, 32, 8) == 16
    assert count_tiles(16, 16, 32, 8) == 1


def test_blend_window_positive_with_ramps():
    w = blend_window(16, 20, top=4, bottom=0, left=6, right=6)
    assert w.shape == (16, 20) and w.dtype == torch.float32
    assert (w > 0).all() and (w <= 1).all()
    assert (w[4:, 6:14] == 1).all()  # interior
    assert (w[-1, 6:14] == 1).all()  # no ramp at the bottom
    assert w[0, 10] < w[1, 10] < w[3, 10] < 1 and w[10, 0] < w[10, 5] < 1 and w[10, -1] < w[10, -6] < 1
    assert torch.equal(blend_window(5, 7, top=0, bottom=0, left=0, right=0), torch.ones(5, 7))
    assert (blend_window(4, 4, top=4, bottom=4, left=4, right=4) > 0).all()  # ramps meeting
    with pytest.raises(ValueError):
        blend_window(4, 4, top=-1, bottom=0, left=0, right=0)


def test_mirrored_ramps_sum_to_one():
    m = 8
    a = blend_window(1, 24, top=0, bottom=0, left=0, right=m)[0, -m:]
    b = blend_window(1, 24, top=0, bottom=0, left=m, right=0)[0, :m]
    assert torch.allclose(a + b, torch.ones(m), atol=1e-6)


def _pointwise(t: torch.Tensor, _: tuple[int, int]) -> torch.Tensor:
    return torch.tanh(2 * t) + 0.3 * t * t


def test_pointwise_fn_matches_whole_image():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 70, 45)
    out = tiled_apply(_pointwise, x, tile=16, overlap=5)
    assert out.shape == x.shape
    assert (out - _pointwise(x, (0, 0))).abs().max() < 1e-6


def test_offsets_let_fn_slice_side_inputs():
    torch.manual_seed(0)
    x, side = torch.randn(1, 2, 50, 61), torch.randn(1, 2, 50, 61)
    seen = []

    def fn(t, at):
        y0, x0 = at
        seen.append(at)
        return t - side[:, :, y0 : y0 + t.shape[2], x0 : x0 + t.shape[3]]

    out = tiled_apply(fn, x, tile=20, overlap=4)
    assert (out - (x - side)).abs().max() < 1e-6
    assert len(seen) == len(set(seen)) == count_tiles(50, 61, 20, 4)


def test_channel_count_and_short_axis():
    torch.manual_seed(0)
    weight = torch.randn(5, 3, 1, 1)
    x = torch.randn(2, 3, 20, 100)  # H < tile: tiles are 20 x 32 along W only
    shapes = []

    def fn(t, _):
        shapes.append(tuple(t.shape))
        return F.conv2d(t, weight)

    out = tiled_apply(fn, x, tile=32, overlap=8)
    assert out.shape == (2, 5, 20, 100) and set(shapes) == {(2, 3, 20, 32)}
    assert (out - F.conv2d(x, weight)).abs().max() < 1e-5


def _blur(t: torch.Tensor, _: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Two 3x3 box blurs with replicate padding (receptive-field radius 2)."""
    k = torch.full((t.shape[1], 1, 3, 3), 1 / 9, dtype=t.dtype)
    for _ in range(2):
        t = F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), k, groups=t.shape[1])
    return t


def test_constant_input_stays_constant():
    x = torch.full((1, 3, 77, 50), 0.37)
    out = tiled_apply(_blur, x, tile=24, overlap=6)
    assert (out - 0.37).abs().max() < 1e-6


def _edge_bands(h: int, w: int, tile: int, overlap: int, r: int, scale: int = 1) -> torch.Tensor:
    """Mask of output pixels within r*scale of an interior edge of some tile (where padding shows)."""
    mask = torch.zeros(h * scale, w * scale, dtype=torch.bool)
    th, tw = min(tile, h), min(tile, w)
    band = r * scale
    for y0 in tile_starts(h, tile, overlap):
        for x0 in tile_starts(w, tile, overlap):
            ys, ye, xs, xe = y0 * scale, (y0 + th) * scale, x0 * scale, (x0 + tw) * scale
            if y0 > 0:
                mask[ys : ys + band, xs:xe] = True
            if y0 + th < h:
                mask[ye - band : ye, xs:xe] = True
            if x0 > 0:
                mask[ys:ye, xs : xs + band] = True
            if x0 + tw < w:
                mask[ys:ye, xe - band : xe] = True
    return mask


def test_local_conv_stack_matches_whole_image_away_from_tile_edges():
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)]  # receptive-field radius r = 3
    x = torch.randn(1, 3, 90, 70)

    @torch.no_grad()
    def fn(t, _=(0, 0)):
        for conv in convs:
            t = torch.tanh(conv(t))
        return t

    out, ref = tiled_apply(fn, x, tile=32, overlap=6), fn(x)  # overlap = 2 r
    keep = ~_edge_bands(90, 70, 32, 6, r=3)
    assert keep.float().mean() > 0.5
    # exact up to float rounding (tolerance 1e-5) where no tile sees its own zero padding
    assert (out - ref)[..., keep].abs().max() < 1e-5
    # near interior tile edges the padding error is attenuated by the blend ramps, not absent
    assert (out - ref).abs().max() < 0.5 * (fn(x[..., :32, :32]) - ref[..., :32, :32]).abs().max()


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_scale_two_with_upsampling_fn(mode):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 45, 60)

    def up(t, _=(0, 0)):
        return F.interpolate(t, scale_factor=2, mode=mode)

    out, ref = tiled_apply(up, x, tile=16, overlap=4, scale=2), up(x)
    assert out.shape == (1, 3, 90, 120)
    r = 0 if mode == "nearest" else 2  # bicubic reads 2 input pixels each side
    keep = ~_edge_bands(45, 60, 16, 4, r=r, scale=2)
    assert (out - ref)[..., keep].abs().max() < 1e-5
    with pytest.raises(ValueError, match="expected"):
        tiled_apply(up, x, tile=16, overlap=4, scale=1)  # fn output does not match scale


def _seam_excess(out: torch.Tensor, h: int, w: int, tile: int, overlap: int) -> float:
    """Max adjacent-pixel step in the overlap/seam zones divided by the max step elsewhere."""
    dx = (out[0, 0, :, 1:] - out[0, 0, :, :-1]).abs()[4:-4]  # steps between columns j, j+1
    seam = torch.zeros(w - 1, dtype=torch.bool)
    starts = tile_starts(w, tile, overlap)
    for a, b in pairwise(starts):
        seam[b - 1 : a + tile] = True  # the overlap of two neighbours, plus the step into it
    inner = torch.zeros(w - 1, dtype=torch.bool)
    inner[4:-4] = True  # ignore the image's own border effects
    return (dx[:, seam & inner].max() / dx[:, ~seam & inner].max()).item()


def test_no_seams_on_a_smooth_gradient():
    h, w = 80, 72
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    x = (0.005 * yy + 0.01 * xx)[None, None].repeat(1, 3, 1, 1)
    blended = tiled_apply(_blur, x, tile=32, overlap=8)
    assert _seam_excess(blended, h, w, 32, 8) < 1.02  # steps at seams within 2% of steps elsewhere
    hard = tiled_apply(_blur, x, tile=32, overlap=0)  # sanity: without overlap the seams show
    assert _seam_excess(hard, h, w, 32, 0) > 1.1


def test_progress_once_per_tile():
    calls = []
    tiled_apply(_pointwise, torch.zeros(1, 1, 50, 40), tile=16, overlap=4, progress=lambda d, n: calls.append((d, n)))
    n = count_tiles(50, 40, 16, 4)
    assert n > 1 and calls == [(i, n) for i in range(1, n + 1)]


def test_single_tile_is_fn_output_bit_identical():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 30, 32)
    results, calls = [], []

    def fn(t, at):
        assert t is x and at == (0, 0)
        results.append(torch.randn(1, 4, 60, 64))
        return results[-1]

    out = tiled_apply(fn, x, tile=32, overlap=8, scale=2, progress=lambda d, n: calls.append((d, n)))
    assert out is results[0] and calls == [(1, 1)]


def test_output_dtype_follows_fn():
    x = torch.randn(1, 1, 40, 40, dtype=torch.float64)
    out = tiled_apply(_pointwise, x, tile=16, overlap=4)
    assert out.dtype == torch.float64 and (out - _pointwise(x, (0, 0))).abs().max() < 1e-12
