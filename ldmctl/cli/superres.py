"""``ldmctl superres``: upscale photos (any size, aspect and mode) with an LDM-SR model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import torch
import typer

from ldmctl.files import atomic_write, check_writable, ensure_folder
from ldmctl.cli._console import console, err_console, step_progress
from ldmctl.data import IMAGE_SUFFIXES, iter_image_files
from ldmctl.errors import ConfigError, DataError

SAVE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".jpg": "JPEG", ".jpeg": "JPEG",
                ".bmp": "BMP"}


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


def output_paths(files: list[Path], out: Path | None, scale: int) -> list[Path]:
    """One file given and OUT has an image suffix: OUT itself; otherwise OUT (a folder, default the
    current one) / ``<stem>_x<scale>.png``."""
    if out is not None and out.suffix.lower() in SAVE_FORMATS and not out.is_dir():
        if len(files) > 1:
            raise ConfigError(f"{len(files)} inputs need an output folder, not the file {str(out)!r}")
        return [check_writable(out)]
    folder = out or Path(".")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output {str(folder)!r} exists and is not a folder")
    ensure_folder(folder)
    names = [f"{p.stem}_x{scale}.png" for p in files]
    if len(set(names)) < len(names):  # same stem in different folders: keep them apart
        names = [f"{i:04d}_{n}" for i, n in enumerate(names)]
    return [folder / n for n in names]


def _save(img, path: Path) -> None:
    fmt = SAVE_FORMATS.get(path.suffix.lower(), "PNG")
    if fmt == "JPEG" and img.mode not in ("L", "RGB", "CMYK"):
        raise ConfigError(f"{str(path)!r}: JPEG cannot store mode {img.mode}; write a .png instead")
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


def command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output file (one input) or folder (default: the current folder, <name>_x4.png).")] = None,
    model: Annotated[Path | None, typer.Option(help="LDM-SR checkpoint (default: the built-in x4 photo model).")] = None,
    steps: Annotated[int, typer.Option(help="Sampling steps. 1 (default): the posterior mean, the highest PSNR/SSIM; more steps draw sharper, partly invented detail.")] = 1,
    sampler: Annotated[str, typer.Option(help="dpmpp (DPM-Solver++ 2M), ddim, plms or ddpm.")] = "dpmpp",
    eta: Annotated[float, typer.Option(help="DDIM stochasticity (0: deterministic).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise.")] = 0,
    tile: Annotated[int, typer.Option(help="Tile side in latent cells (memory grows with its square).")] = 64,
    overlap: Annotated[int, typer.Option(help="Overlap of neighbouring tiles in latent cells.")] = 16,
    strength: Annotated[float, typer.Option(help="< 1 (ddim only): start from the bicubic upscale noised to strength * T instead of pure noise.")] = 1.0,
    detail_transfer: Annotated[bool, typer.Option("--detail-transfer/--no-detail-transfer", help="Residual models: output bicubic + D(z) - D(z_bicubic), cancelling the autoencoder's error on the bicubic content.")] = True,
    ensemble: Annotated[int, typer.Option(help="Average 1, 2, 4 or 8 runs on flipped/transposed copies of the input (geometric self-ensemble; that many times slower).")] = 1,
) -> None:
    """Upscale photos with a super-resolution LDM; tiles keep memory bounded on large inputs."""
    from ldmctl.data.images import open_image
    from ldmctl.data.modes import merge_image, split_image, upscale_alpha
    from ldmctl.superres.upscale import sr_scale, upscale
    from ldmctl.diffusion.io import load_ldm

    if steps < 1 or not (math.isfinite(eta) and eta >= 0):
        raise ConfigError("--steps must be positive and --eta a finite number >= 0")
    files = expand_inputs(inputs)
    if model is None:
        from ldmctl.models import SHIPPED, shipped_model

        model = shipped_model("superres")
        err_console.print(f"built-in model: {SHIPPED['superres'].about}")
    ldm = load_ldm(model)
    scale = sr_scale(ldm)
    targets = output_paths(files, out, scale)
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
