"""``ldmctl reconstruct``: encode and decode images of any size through an autoencoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ldmctl.autoencoder.apply import DEFAULT_OVERLAP, DEFAULT_TILE, check_tiling, reconstruct
from ldmctl.checkpoint import load_autoencoder
from ldmctl.files import atomic_write, ensure_folder
from ldmctl.cli._console import console, step_progress, to_uint8_image
from ldmctl.data import load_image, pil_to_tensor

TILE_HELP = ("Tile side in pixels: images with a side over it run in overlapping tiles (a multiple of f; "
             "0: always whole).")
OVERLAP_HELP = "Overlap of neighbouring tiles in pixels."


def command(
    ckpt: Annotated[Path, typer.Argument(help="Autoencoder checkpoint (.safetensors from train-ae).")],
    images: Annotated[list[Path], typer.Argument(help="Image files to reconstruct.")],
    out: Annotated[Path, typer.Option("--out-dir", "--out", help="Folder for the reconstructed PNGs (<name>.png).")] = Path("reconstructions"),
    tile: Annotated[int, typer.Option("--tile-px", "--tile", help=TILE_HELP)] = DEFAULT_TILE,
    overlap: Annotated[int, typer.Option("--overlap-px", "--overlap", help=OVERLAP_HELP)] = DEFAULT_OVERLAP,
) -> None:
    """Encode and decode images (any size; padded to a multiple of f, cropped back) to PNGs.

    Large images run in overlapping, blended tiles, so time and memory grow linearly with the
    pixel count instead of with its square (the mid-block attention)."""
    ae = load_autoencoder(ckpt)
    check_tiling(ae.config.downsample_factor, tile, overlap)
    loaded = [(p, load_image(p)) for p in images]  # fail on a bad input before writing anything
    ensure_folder(out)
    with step_progress(len(loaded), description="reconstruct") as (progress, task):
        for i, (path, img) in enumerate(loaded):
            x = pil_to_tensor(img).unsqueeze(0)
            report = (lambda done, total, i=i: progress.update(task, completed=i + done / total))
            recon = to_uint8_image(reconstruct(ae, x, tile=tile, overlap=overlap, progress=report)[0])
            target = out / f"{path.stem}.png"
            atomic_write(target, lambda tmp, recon=recon: recon.save(tmp, format="PNG"))
            progress.update(task, completed=i + 1)
            console.print(str(target), highlight=False)
