"""``ldmctl reconstruct``: encode and decode images of any size through an autoencoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ldmctl.autoencoder.apply import DEFAULT_OVERLAP, DEFAULT_TILE, check_tiling, reconstruct
from ldmctl.checkpoint import load_autoencoder
from ldmctl.cli._console import console, step_progress, tile_progress, to_uint8_image
from ldmctl.cli._options import AECheckpointArg, AEOverlapPxOpt, AETilePxOpt, DeviceOpt, PrecisionOpt, runtime
from ldmctl.data import load_image, pil_to_tensor
from ldmctl.files import atomic_write, check_output, ensure_folder

ImagesArg = Annotated[list[Path], typer.Argument(help="Image files to reconstruct.")]
OutDirOpt = Annotated[Path, typer.Option("--out-dir", "--out", help="Folder for the reconstructed PNGs (<name>.png).")]


def output_names(images: list[Path]) -> list[str]:
    """``<stem>.png`` for each input; inputs sharing a stem get their position in front, so that no
    output replaces another."""
    names = [f"{p.stem}.png" for p in images]
    if len(set(names)) < len(names):
        names = [f"{i:04d}_{n}" for i, n in enumerate(names)]
    return names


def command(
    ckpt: AECheckpointArg,
    images: ImagesArg,
    out: OutDirOpt = Path("reconstructions"),
    tile: AETilePxOpt = DEFAULT_TILE,
    overlap: AEOverlapPxOpt = DEFAULT_OVERLAP,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Encode and decode images (any size; padded to a multiple of f, cropped back) to PNGs.

    Large images run in overlapping, blended tiles, so time and memory grow linearly with the
    pixel count instead of with its square (the mid-block attention)."""
    dev = runtime(device, precision)
    ae = load_autoencoder(ckpt).to(dev)
    check_tiling(ae.config.downsample_factor, tile, overlap)
    loaded = [(p, load_image(p)) for p in images]  # fail on a bad input before writing anything
    ensure_folder(out)
    targets = [check_output(out / name, inputs=[ckpt, *images], option="--out-dir") for name in output_names(images)]
    with step_progress(len(loaded), description="reconstruct") as (progress, task):
        for i, (_, img) in enumerate(loaded):
            x = pil_to_tensor(img).unsqueeze(0)
            report = tile_progress(progress, task, i)
            recon = to_uint8_image(
                reconstruct(ae, x, tile=tile, overlap=overlap, progress=report, precision=precision)[0]
            )
            target = targets[i]
            atomic_write(target, lambda tmp, recon=recon: recon.save(tmp, format="PNG"))
            progress.update(task, completed=i + 1)
            console.print(str(target), highlight=False)
