"""Whole-image vs tiled reconstruction PSNR of an autoencoder (docs/autoencoder.md, second stage).

Scores 256x256 center crops of the images in DATA (a folder or builtin:NAME, as ``eval-ae``)
reconstructed whole, then as non-overlapping T x T tiles reconstructed one by one and put back
together. A model that scores higher in tiles than whole has learned behaviour it only shows
near crop borders (its zero padding): typical of training on crops much smaller than the
images it is used on.

    python bench/ae_tiles.py runs/ae-kl-f4/ae.safetensors VAL22DIR 32 64 128
    python bench/ae_tiles.py CKPT DATA 0 --window 8   # mid-block attention limited to 8x8 latent windows
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from einops import rearrange

from ldmctl.autoencoder.apply import reconstruct
from ldmctl.checkpoint import load_autoencoder
from ldmctl.eval.report import evaluate_reconstructions, load_eval_images
from ldmctl.layers import AttnBlock


def windowed_attention(window: int) -> None:
    """Make every AttnBlock attend within ``window`` x ``window`` blocks of positions only."""

    def forward(self: AttnBlock, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n = self.norm(x)
        q, k, v = (
            rearrange(conv(n), "b c (nh h) (nw w) -> (b nh nw) 1 (h w) c", h=window, w=window).contiguous()
            for conv in (self.q, self.k, self.v)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "(b nh nw) 1 (h w) c -> b c (nh h) (nw w)", b=b, nh=h // window, h=window)
        return x + self.proj_out(out)

    AttnBlock.forward = forward  # type: ignore[method-assign]


def tiled_restorer(ae: torch.nn.Module, tile: int):
    """``x in [0, 1] -> reconstruction in [0, 1]``, whole (tile 0) or tile by tile."""

    def restore(x: torch.Tensor) -> torch.Tensor:
        x = x * 2 - 1
        with torch.no_grad():
            if not tile:
                return (reconstruct(ae, x) + 1) / 2
            out = torch.empty_like(x)
            for top in range(0, x.shape[-2], tile):
                for left in range(0, x.shape[-1], tile):
                    part = x[..., top : top + tile, left : left + tile]
                    out[..., top : top + tile, left : left + tile] = reconstruct(ae, part)
            return (out + 1) / 2

    return restore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("data")
    ap.add_argument("tiles", type=int, nargs="*", default=[32, 64, 128], help="tile sizes (0 = whole)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--window", type=int, default=0, help="limit attention to this many latent positions square")
    args = ap.parse_args()
    if args.window:
        windowed_attention(args.window)
    ae = load_autoencoder(args.ckpt).eval()
    images = load_eval_images(args.data, size=args.size)
    for tile in [0] + [t for t in args.tiles if t]:
        report = evaluate_reconstructions(images, tiled_restorer(ae, tile))
        label = "whole" if not tile else f"{tile} px tiles"
        print(f"{label:>14}: PSNR {report['mean']['model_psnr']:.2f} dB over {report['n']} images", flush=True)


if __name__ == "__main__":
    main()
