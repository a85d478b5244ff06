"""``ldmctl eval-ae``: PSNR / SSIM (and LPIPS when its weights are here) of an autoencoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ldmctl.autoencoder.apply import DEFAULT_OVERLAP, DEFAULT_TILE, check_tiling
from ldmctl.checkpoint import load_autoencoder
from ldmctl.files import atomic_write, check_writable, ensure_folder
from ldmctl.cli._console import console, err_console, metrics_table, to_uint8_image
from ldmctl.errors import WeightsError
from ldmctl.eval.report import autoencoder_restorer, evaluate_reconstructions, load_eval_images


def _saver(out: Path | None):
    """A callback writing ``OUT/<image stem>_<label>.png`` for each scored output, or None."""
    if out is None:
        return None
    ensure_folder(out)

    def save(name: str, label: str, image) -> None:
        img = to_uint8_image(image * 2 - 1)
        target = out / f"{Path(name).stem.replace('#', '_')}_{label}.png"
        atomic_write(target, lambda tmp: img.save(tmp, format="PNG"))

    return save


def optional_lpips(weights: Path | None):
    """The LPIPS net, or None with a notice when its backbone weights are not on this machine
    (an error only when the user named a weights file)."""
    from ldmctl.autoencoder import build_perceptual

    try:
        return build_perceptual("alex", weights=weights)
    except WeightsError as err:
        if weights is not None:
            raise
        err_console.print(f"[dim]LPIPS skipped: {escape(str(err))}[/]", highlight=False)
        return None


def print_report(title: str, report: dict, json_out: Path | None) -> None:
    """The per-image rows and their mean as a table on stdout; the report as JSON if asked."""
    if report.get("skipped"):
        err_console.print(f"[yellow]skipped {len(report['skipped'])} unusable file(s)[/]"
                          + (f" (see {escape(str(json_out))})" if json_out else ""), highlight=False)
    columns = ["image", "size"] + list(report["mean"])
    rows = report["rows"] + [{"image": "mean", "size": "", **report["mean"]}]
    console.print(metrics_table(title, rows, columns))
    if json_out is not None:
        atomic_write(json_out, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
        console.print(str(json_out), highlight=False)


def command(
    ckpt: Annotated[Path, typer.Argument(help="Autoencoder checkpoint (.safetensors from train-ae).")],
    data: Annotated[str, typer.Option(help="Image folder or builtin:NAME to evaluate on.")] = "builtin:photos-holdout",
    size: Annotated[int, typer.Option(help="Center-crop each image to SIZE x SIZE; 0 keeps whole images.")] = 256,
    limit: Annotated[int, typer.Option(help="Evaluate at most this many images (0: all).")] = 0,
    baseline: Annotated[bool, typer.Option(help="Also score bicubic down-and-up by the same factor f.")] = True,
    lpips_weights: Annotated[Optional[Path], typer.Option(help="LPIPS backbone weights (default: torch hub cache).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also save each reconstruction (and bicubic baseline) as PNG here.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
    tile: Annotated[int, typer.Option(help="Reconstruct images with a side over TILE pixels in overlapping tiles (a multiple of f; 0: always whole).")] = DEFAULT_TILE,
    overlap: Annotated[int, typer.Option(help="Overlap of neighbouring tiles, in pixels.")] = DEFAULT_OVERLAP,
) -> None:
    """Score reconstructions against the originals: a table on stdout, optionally JSON."""
    if json_out is not None:
        check_writable(json_out)
    ae = load_autoencoder(ckpt)
    check_tiling(ae.config.downsample_factor, tile, overlap)
    skipped: list[tuple[str, str]] = []
    images = load_eval_images(data, size=size, limit=limit, skipped=skipped)
    perceptual = optional_lpips(lpips_weights)
    f = ae.config.downsample_factor
    report = evaluate_reconstructions(images, autoencoder_restorer(ae, tile=tile, overlap=overlap), baseline_factor=f if baseline else 0,
                                      perceptual=perceptual, on_output=_saver(out))
    report.update(checkpoint=str(ckpt), data=data, crop=size, f=f, tile=tile, overlap=overlap, skipped=[list(s) for s in skipped])
    print_report(f"eval-ae: {ckpt.name} on {data}", report, json_out)
