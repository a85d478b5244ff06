"""``ldmctl superres``: upscale photos (any size, aspect and mode) with an LDM-SR model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ldmctl.files import atomic_write, check_writable, ensure_folder
from ldmctl.cli._console import console, err_console, step_progress
from ldmctl.cli._vocab import Sampler, pixels_to_cells
from ldmctl.data import IMAGE_SUFFIXES, iter_image_files
from ldmctl.errors import ConfigError, DataError

SAVE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".jpg": "JPEG", ".jpeg": "JPEG",
                ".bmp": "BMP"}
_FORMATS = ", ".join(SAVE_FORMATS)
SR_TILE_CELLS, SR_OVERLAP_CELLS = 64, 16  # the tiling of ldmctl.superres.upscale.upscale, in latent cells
TILE_HELP = ("Tile side in pixels of the upscaled image, a multiple of f x the UNet's downsampling (default: 64 latent "
             "cells, 128 px for the built-in model). Memory grows with its square.")
OVERLAP_HELP = ("Overlap of neighbouring tiles in pixels of the upscaled image, a multiple of f (default: 16 latent "
                "cells, 32 px for the built-in model).")


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders as every image inside them (recursively, sorted)."""
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = iter_image_files(p)
            if not found:
                raise DataError(f"folder {str(p)!r} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input {str(p)!r} does not exist")
    return files


def output_paths(files: list[Path], out_file: Path | None, out_dir: Path | None, scale: int,
                 old_out: Path | None = None) -> list[Path]:
    """``--out-file`` (one input, an image suffix) itself, or ``--out-dir`` (default: the current
    folder) / ``<stem>_x<scale>.png``. The old ``--out`` is a file when it has an image suffix and
    is not a folder, else a folder, as it always was."""
    if old_out is not None:
        if out_file is not None or out_dir is not None:
            raise ConfigError("--out is the old spelling of --out-file / --out-dir: give only one of them")
        is_file = old_out.suffix.lower() in SAVE_FORMATS and not old_out.is_dir()
        out_file, out_dir = (old_out, None) if is_file else (None, old_out)
    if out_file is not None:
        if out_dir is not None:
            raise ConfigError("give --out-file (one image) or --out-dir (a folder), not both")
        if out_file.suffix.lower() not in SAVE_FORMATS or out_file.is_dir():
            raise ConfigError(f"--out-file {str(out_file)!r} is not an image file name ({_FORMATS})",
                              hint=f"to write into a folder use --out-dir {out_file}")
        if len(files) > 1:
            raise ConfigError(f"{len(files)} inputs need an output folder (--out-dir), not the file {str(out_file)!r}")
        return [check_writable(out_file)]
    folder = out_dir or Path(".")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output {str(folder)!r} exists and is not a folder")
    ensure_folder(folder)
    names = [f"{p.stem}_x{scale}.png" for p in files]
    if len(set(names)) < len(names):  # same stem in different folders: keep them apart
        names = [f"{i:04d}_{n}" for i, n in enumerate(names)]
    return [folder / n for n in names]


def load_sr_model(model: Path | None, *, announce: bool = False) -> tuple[Any, Path]:
    """The LDM-SR checkpoint and its path; by default the built-in x4 photo model (named on
    stderr when ``announce``)."""
    from ldmctl.diffusion.io import load_ldm

    if model is None:
        from ldmctl.models import SHIPPED, shipped_model

        model = shipped_model("superres")
        if announce:
            err_console.print(f"built-in model: {SHIPPED['superres'].about}")
    return load_ldm(model), Path(model)


def tiles_in_cells(ldm, tile: int | None, overlap: int | None, old_tile: int | None = None,
                   old_overlap: int | None = None) -> tuple[int, int]:
    """``--tile-px`` / ``--overlap-px`` (pixels of the upscaled image) in latent cells, as
    :func:`ldmctl.superres.upscale.upscale` takes them. The old ``--tile`` / ``--overlap`` counted
    latent cells: they keep that meaning, and a notice gives their new spelling."""
    from ldmctl.unet import downsample_factor

    f = ldm.autoencoder.config.downsample_factor
    if old_tile is not None or old_overlap is not None:
        if tile is not None or overlap is not None:
            raise ConfigError("--tile / --overlap (latent cells) are the old spellings of --tile-px / --overlap-px "
                              "(pixels): give only the new ones")
        tile = None if old_tile is None else old_tile * f
        overlap = None if old_overlap is None else old_overlap * f
        new = " ".join(f"{k} {v}" for k, v in (("--tile-px", tile), ("--overlap-px", overlap)) if v is not None)
        err_console.print(f"[dim]--tile / --overlap count latent cells (old spelling); in pixels: {new}[/]",
                          highlight=False)
    tile = SR_TILE_CELLS * f if tile is None else tile
    overlap = SR_OVERLAP_CELLS * f if overlap is None else overlap
    return pixels_to_cells(tile, overlap, f, downsample_factor(ldm.config.unet))


def _save(img, path: Path) -> None:
    fmt = SAVE_FORMATS.get(path.suffix.lower(), "PNG")
    if fmt == "JPEG" and img.mode not in ("L", "RGB", "CMYK"):
        raise ConfigError(f"{str(path)!r}: JPEG cannot store mode {img.mode}; write a .png instead")
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


def command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    out_file: Annotated[Path | None, typer.Option("--out-file", "-o", help="Output image (one input); its suffix picks the format: " + _FORMATS + ".")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Output folder for <name>_x4.png (default: the current folder).")] = None,
    old_out: Annotated[Path | None, typer.Option("--out", hidden=True, help="Old spelling: a file (image suffix) or a folder.")] = None,
    model: Annotated[Path | None, typer.Option(help="LDM-SR checkpoint (default: the built-in x4 photo model).")] = None,
    steps: Annotated[int, typer.Option(help="Sampling steps. 1 (default): the posterior mean, the highest PSNR/SSIM; more steps draw sharper, partly invented detail.")] = 1,
    sampler: Annotated[Sampler, typer.Option(help="dpmpp: DPM-Solver++ 2M.")] = "dpmpp",
    eta: Annotated[float, typer.Option(help="DDIM stochasticity (0: deterministic).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise.")] = 0,
    tile: Annotated[int | None, typer.Option("--tile-px", help=TILE_HELP)] = None,
    overlap: Annotated[int | None, typer.Option("--overlap-px", help=OVERLAP_HELP)] = None,
    old_tile: Annotated[int | None, typer.Option("--tile", hidden=True, help="Old spelling, in latent cells.")] = None,
    old_overlap: Annotated[int | None, typer.Option("--overlap", hidden=True, help="Old spelling, in latent cells.")] = None,
    strength: Annotated[float, typer.Option(help="< 1 (ddim only): start from the bicubic upscale noised to strength * T instead of pure noise.")] = 1.0,
    detail_transfer: Annotated[bool, typer.Option("--detail-transfer/--no-detail-transfer", help="Residual models: output bicubic + D(z) - D(z_bicubic), cancelling the autoencoder's error on the bicubic content.")] = True,
    ensemble: Annotated[int, typer.Option(help="Average 1, 2, 4 or 8 runs on flipped/transposed copies of the input (geometric self-ensemble; that many times slower).")] = 1,
) -> None:
    """Upscale photos with a super-resolution LDM; tiles keep memory bounded on large inputs."""
    from ldmctl.data.images import open_image
    from ldmctl.data.modes import merge_image, split_image, upscale_alpha
    from ldmctl.superres.upscale import sr_scale, upscale

    if steps < 1 or not (math.isfinite(eta) and eta >= 0):
        raise ConfigError("--steps must be positive and --eta a finite number >= 0")
    files = expand_inputs(inputs)
    ldm, _ = load_sr_model(model, announce=True)
    scale = sr_scale(ldm)
    tile, overlap = tiles_in_cells(ldm, tile, overlap, old_tile, old_overlap)
    targets = output_paths(files, out_file, out_dir, scale, old_out)
    images = [open_image(p) for p in files]  # every input is checked before the long part starts
    with step_progress(len(files), description=f"superres x{scale}") as (progress, task):
        for i, (img, target) in enumerate(zip(images, targets)):
            rgb, alpha, mode = split_image(img)
            report = (lambda done, total, i=i: progress.update(task, completed=i + done / total))
            with torch.inference_mode():
                hr = upscale(ldm, rgb, sampler=sampler, steps=steps, eta=eta, seed=seed, tile=tile,
                             overlap=overlap, strength=strength,
                             detail_transfer=detail_transfer, ensemble=ensemble, progress=report)
            a = upscale_alpha(alpha, tuple(hr.shape[-2:])) if alpha is not None else None
            _save(merge_image(hr, a, mode), target)
            progress.update(task, completed=i + 1)
            console.print(str(target), highlight=False)
    err_console.print(f"{len(files)} image(s) upscaled x{scale} ({sampler}, {steps} steps, seed {seed})")
