"""Reconstruction of images of any size: padding, cropping back, and tiling of large images."""

from __future__ import annotations

import pytest
import torch

from ldmctl.autoencoder import build_autoencoder
from ldmctl.autoencoder.apply import check_tiling, reconstruct, reconstruction_tiles
from ldmctl.config import AutoencoderConfig
from ldmctl.errors import ConfigError


@pytest.fixture(scope="module")
def ae():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4)
    model = build_autoencoder(cfg).eval()
    with torch.no_grad():  # a visible output: the zero-initialised parts would hide tiling errors
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_an_image_within_one_tile_runs_whole(ae):
    x = _image(22, 31)  # not multiples of f = 4
    whole = reconstruct(ae, x, tile=0)
    assert whole.shape == x.shape
    torch.testing.assert_close(reconstruct(ae, x, tile=32, overlap=8), whole, rtol=0, atol=0)
    assert reconstruction_tiles(ae, 22, 31, tile=32, overlap=8) == 1


def test_a_large_image_is_tiled_and_each_tile_interior_is_that_tiles_reconstruction(ae):
    x = _image(45, 70, seed=1)  # padded to 48 x 72: tiles of 24 px start at rows 0, 12, 24, columns 0, 16, 32, 48
    calls = []
    out = reconstruct(ae, x, tile=24, overlap=8, progress=lambda done, total: calls.append((done, total)))
    assert out.shape == x.shape and out.abs().max() <= 1
    n = reconstruction_tiles(ae, 45, 70, tile=24, overlap=8)
    assert n == 3 * 4 and calls == [(i, n) for i in range(1, n + 1)]
    # away from its neighbours' ramps, the output is the top-left tile reconstructed on its own
    first = reconstruct(ae, x[..., :24, :24], tile=0)
    torch.testing.assert_close(out[..., :12, :16], first[..., :12, :16], rtol=1e-5, atol=1e-6)
    # and the blend is not that tile everywhere: the neighbouring tile's content shows beyond it
    assert not torch.allclose(out[..., :12, 16:24], first[..., :12, 16:24], atol=1e-3)


def test_tiling_options_are_checked(ae):
    with pytest.raises(ConfigError, match="multiple of f=4"):
        reconstruct(ae, _image(8, 8), tile=30)
    with pytest.raises(ConfigError, match="overlap"):
        reconstruct(ae, _image(8, 8), tile=16, overlap=16)
    check_tiling(4, 0, 999)  # tile 0 means whole images: the overlap is unused
