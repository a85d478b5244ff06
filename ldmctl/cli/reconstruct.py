"""``ldmctl reconstruct``: encode and decode images of any size through an autoencoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ldmctl.autoencoder.apply import reconstruct
from ldmctl.checkpoint import atomic_write, ensure_folder, load_autoencoder
from ldmctl.cli._console import console, to_uint8_image
from ldmctl.data import load_image, pil_to_tensor


def command(
    ckpt: Annotated[Path, typer.Argument(help="Autoencoder checkpoint (.safetensors from train-ae).")],
    images: Annotated[list[Path], typer.Argument(help="Image files to reconstruct.")],
    out: Annotated[Path, typer.Option(help="Folder for the reconstructed PNGs.")] = Path("reconstructions"),
) -> None:
    """Encode and decode images (any size; padded to a multiple of f, cropped back) to PNGs."""
    ae = load_autoencoder(ckpt)
    loaded = [(p, load_image(p)) for p in images]  # fail on a bad input before writing anything
    ensure_folder(out)
    for path, img in loaded:
        x = pil_to_tensor(img).unsqueeze(0)
        recon = to_uint8_image(reconstruct(ae, x)[0])
        target = out / f"{path.stem}.png"
        atomic_write(target, lambda tmp: recon.save(tmp, format="PNG"))
        console.print(str(target), highlight=False)
