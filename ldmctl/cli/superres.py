"""``ldmctl superres``: upscale photos (any size, aspect and mode) with an LDM-SR model."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ldmctl.cli._console import console, err_console, step_progress, tile_progress
from ldmctl.cli._options import (
    BackProjectOpt,
    DetailTransferOpt,
    DeviceOpt,
    EnsembleOpt,
    EtaOpt,
    PrecisionOpt,
    SamplerOpt,
    SRModelOpt,
    SROverlapPxOpt,
    SRSeedOpt,
    SRStepsOpt,
    SRTilePxOpt,
    runtime,
)
from ldmctl.cli._vocab import pixels_to_cells
from ldmctl.data import IMAGE_SUFFIXES, iter_image_files
from ldmctl.errors import ConfigError, DataError
from ldmctl.files import atomic_write, check_output, ensure_folder

SAVE_FORMATS = {
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
}
_FORMATS = ", ".join(SAVE_FORMATS)
SR_TILE_CELLS, SR_OVERLAP_CELLS = 64, 16  # the tiling of ldmctl.superres.upscale.upscale, in latent cells


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


def output_paths(
    files: list[Path], out_file: Path | None, out_dir: Path | None, scale: int, old_out: Path | None = None
) -> list[Path]:
    """``--out-file`` (one input, an image suffix) itself, or ``--out-dir`` (default: the current
    folder) / ``<stem>_x<scale>.png``. The old ``--out`` is a file when it has an image suffix and
    is not a folder, else a folder, as it always was."""
    if old_out is not None:
        if out_file is not None or out_dir is not None:
            raise ConfigError("--out is the old spelling of --out-file / --out-dir: give only one of them")
        is_file = old_out.suffix.lower() in SAVE_FORMATS and not old_out.is_dir()
        if not is_file and old_out.suffix and not old_out.is_dir():  # result.gif: a file name, not a folder
            raise ConfigError(
                f"--out {str(old_out)!r}: {old_out.suffix!r} is not a format superres writes ({_FORMATS})",
                hint="name an image file, or a folder with --out-dir",
            )
        out_file, out_dir = (old_out, None) if is_file else (None, old_out)
    if out_file is not None:
        if out_dir is not None:
            raise ConfigError("give --out-file (one image) or --out-dir (a folder), not both")
        if out_file.suffix.lower() not in SAVE_FORMATS or out_file.is_dir():
            raise ConfigError(
                f"--out-file {str(out_file)!r} is not an image file name ({_FORMATS})",
                hint=f"to write into a folder use --out-dir {out_file}",
            )
        if len(files) > 1:
            raise ConfigError(f"{len(files)} inputs need an output folder (--out-dir), not the file {str(out_file)!r}")
        return [check_output(out_file, inputs=files, option="--out-file")]
    folder = out_dir or Path(".")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output {str(folder)!r} exists and is not a folder")
    ensure_folder(folder)
    names = [f"{p.stem}_x{scale}.png" for p in files]
    if len(set(names)) < len(names):  # same stem in different folders: keep them apart
        names = [f"{i:04d}_{n}" for i, n in enumerate(names)]
    return [check_output(folder / n, inputs=files, option="--out-dir") for n in names]


def load_sr_model(
    model: Path | None, *, announce: bool = False, device: torch.device | None = None
) -> tuple[Any, Path]:
    """The LDM-SR checkpoint (on ``device``) and its path; by default the built-in x4 photo model
    (named on stderr when ``announce``)."""
    from ldmctl.diffusion.io import load_ldm

    if model is None:
        from ldmctl.models import SHIPPED, shipped_model

        model = shipped_model("superres")
        if announce:
            err_console.print(f"built-in model: {SHIPPED['superres'].about}")
    return load_ldm(model, device=device), Path(model)


def tiles_in_cells(
    ldm, tile: int | None, overlap: int | None, old_tile: int | None = None, old_overlap: int | None = None
) -> tuple[int, int]:
    """``--tile-px`` / ``--overlap-px`` (pixels of the upscaled image) in latent cells, as
    :func:`ldmctl.superres.upscale.upscale` takes them. The old ``--tile`` / ``--overlap`` counted
    latent cells: they keep that meaning, and a notice gives their new spelling."""
    from ldmctl.unet import downsample_factor

    f = ldm.autoencoder.config.downsample_factor
    if old_tile is not None or old_overlap is not None:
        if tile is not None or overlap is not None:
            raise ConfigError(
                "--tile / --overlap (latent cells) are the old spellings of --tile-px / --overlap-px "
                "(pixels): give only the new ones"
            )
        tile = None if old_tile is None else old_tile * f
        overlap = None if old_overlap is None else old_overlap * f
        new = " ".join(f"{k} {v}" for k, v in (("--tile-px", tile), ("--overlap-px", overlap)) if v is not None)
        err_console.print(
            f"[dim]--tile / --overlap count latent cells (old spelling); in pixels: {new}[/]", highlight=False
        )
    tile = SR_TILE_CELLS * f if tile is None else tile
    overlap = SR_OVERLAP_CELLS * f if overlap is None else overlap
    return pixels_to_cells(tile, overlap, f, downsample_factor(ldm.config.unet))


def _upscale_image(ldm: Any, img: Any, progress: Callable[[int, int], None], options: dict[str, Any]) -> Any:
    """One PIL image of any mode upscaled: its colours by the model (``upscale``'s ``options``),
    its alpha channel, if any, resized beside them."""
    from ldmctl.data.modes import merge_image, split_image, upscale_alpha
    from ldmctl.superres.upscale import upscale

    rgb, alpha, mode = split_image(img)
    with torch.inference_mode():
        hr = upscale(ldm, rgb, progress=progress, **options)
    a = upscale_alpha(alpha, tuple(hr.shape[-2:])) if alpha is not None else None
    return merge_image(hr, a, mode)


def _save(img, path: Path) -> None:
    fmt = SAVE_FORMATS.get(path.suffix.lower(), "PNG")
    if fmt == "JPEG" and img.mode not in ("L", "RGB", "CMYK"):
        raise ConfigError(f"{str(path)!r}: JPEG cannot store mode {img.mode}; write a .png instead")
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


InputsArg = Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")]
OutFileOpt = Annotated[
    Path | None,
    typer.Option("--out-file", "-o", help="Output image (one input); its suffix picks the format: " + _FORMATS + "."),
]
OutDirOpt = Annotated[
    Path | None, typer.Option("--out-dir", help="Output folder for <name>_x4.png (default: the current folder).")
]
OldOutOpt = Annotated[
    Path | None, typer.Option("--out", hidden=True, help="Old spelling: a file (image suffix) or a folder.")
]
OldTileOpt = Annotated[int | None, typer.Option("--tile", hidden=True, help="Old spelling, in latent cells.")]
OldOverlapOpt = Annotated[int | None, typer.Option("--overlap", hidden=True, help="Old spelling, in latent cells.")]
StrengthOpt = Annotated[
    float,
    typer.Option(help="< 1 (ddim only): start from the bicubic upscale noised to strength * T instead of pure noise."),
]


def command(
    inputs: InputsArg,
    out_file: OutFileOpt = None,
    out_dir: OutDirOpt = None,
    old_out: OldOutOpt = None,
    model: SRModelOpt = None,
    steps: SRStepsOpt = 1,
    sampler: SamplerOpt = "dpmpp",
    eta: EtaOpt = 0.0,
    seed: SRSeedOpt = 0,
    tile: SRTilePxOpt = None,
    overlap: SROverlapPxOpt = None,
    old_tile: OldTileOpt = None,
    old_overlap: OldOverlapOpt = None,
    strength: StrengthOpt = 1.0,
    detail_transfer: DetailTransferOpt = True,
    ensemble: EnsembleOpt = 1,
    back_project: BackProjectOpt = 4,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Upscale photos with a super-resolution LDM; tiles keep memory bounded on large inputs."""
    from ldmctl.data.images import open_image
    from ldmctl.superres.upscale import sr_scale

    if steps < 1 or not (math.isfinite(eta) and eta >= 0):
        raise ConfigError("--steps must be positive and --eta a finite number >= 0")
    dev = runtime(device, precision)
    files = expand_inputs(inputs)
    ldm, _ = load_sr_model(model, announce=True, device=dev)
    scale = sr_scale(ldm)
    tile, overlap = tiles_in_cells(ldm, tile, overlap, old_tile, old_overlap)
    targets = output_paths(files, out_file, out_dir, scale, old_out)
    images = [open_image(p) for p in files]  # every input is checked before the long part starts
    options = {"sampler": sampler, "steps": steps, "eta": eta, "seed": seed, "tile": tile, "overlap": overlap}
    options |= {"strength": strength, "detail_transfer": detail_transfer, "ensemble": ensemble, "precision": precision}
    options |= {"back_project": back_project}
    with step_progress(len(files), description=f"superres x{scale}") as (progress, task):
        for i, (img, target) in enumerate(zip(images, targets, strict=True)):
            _save(_upscale_image(ldm, img, tile_progress(progress, task, i), options), target)
            progress.update(task, completed=i + 1)
            console.print(str(target), highlight=False)
    err_console.print(
        f"{len(files)} image(s) upscaled x{scale} ({sampler}, {steps} steps, seed {seed}, on {dev} in {precision})"
    )
