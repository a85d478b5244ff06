"""``ldmctl eval-sr``: PSNR / SSIM (and LPIPS when its weights are here) of super-resolved images
against the originals, beside bicubic upscaling of the same low-res input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ldmctl.cli._console import step_progress
from ldmctl.cli._options import (
    BackProjectOpt,
    DetailTransferOpt,
    DeviceOpt,
    EnsembleOpt,
    JsonReportOpt,
    LimitOpt,
    LpipsWeightsOpt,
    PrecisionOpt,
    ReconstructionMetricsOpt,
    SamplerOpt,
    SRModelOpt,
    SROverlapPxOpt,
    SRSeedOpt,
    SRStepsOpt,
    SRTilePxOpt,
    runtime,
)
from ldmctl.cli._vocab import pick_metrics
from ldmctl.cli.eval_ae import RECONSTRUCTION_METRICS, _saver, keep_metrics, optional_lpips, print_report
from ldmctl.cli.superres import load_sr_model, tiles_in_cells
from ldmctl.errors import ConfigError
from ldmctl.eval.report import evaluate_reconstructions, load_eval_images
from ldmctl.files import check_output

DEFAULT_DATA = "builtin:photos-holdout"


def _restorer(ldm: Any, s: int, on_image: Callable[[], None], **options: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x in [0, 1] -> super-resolution of x downscaled by s (antialiased bicubic), in [0, 1]``."""
    from ldmctl.superres.degrade import resize
    from ldmctl.superres.upscale import upscale

    def restore(x: torch.Tensor) -> torch.Tensor:
        lr = resize(x[0] * 2 - 1, (x.shape[-2] // s, x.shape[-1] // s)).clamp(-1, 1)
        with torch.inference_mode():
            hr = upscale(ldm, lr, **options)
        on_image()
        return ((hr + 1) / 2)[None]

    return restore


def _load(model: Path | None, size: int, device: torch.device) -> tuple[Any, Path, int]:
    """The model (default: the built-in one) on ``device``, its path and its scale, which ``size`` must divide."""
    from ldmctl.superres.upscale import sr_scale

    ldm, path = load_sr_model(model, device=device)
    s = sr_scale(ldm)
    if size % s:
        raise ConfigError(f"--size {size} is not a multiple of the model's scale {s}")
    return ldm, path, s


DataOpt = Annotated[
    str, typer.Option(help="Image folder or builtin:NAME (several joined by commas) of high-res originals.")
]
SizeOpt = Annotated[
    int, typer.Option(help="Center-crop each original to SIZE x SIZE (the high-res side); 0 keeps whole images.")
]
StrengthOpt = Annotated[
    float, typer.Option(help="< 1 (ddim only): start from the noised bicubic upscale (see superres).")
]
OutDirOpt = Annotated[
    Path | None,
    typer.Option("--out-dir", "--out", help="Also save each super-resolved and bicubic image as PNG in this folder."),
]


def command(
    model: SRModelOpt = None,
    data: DataOpt = DEFAULT_DATA,
    size: SizeOpt = 256,
    limit: LimitOpt = 0,
    steps: SRStepsOpt = 1,
    sampler: SamplerOpt = "dpmpp",
    seed: SRSeedOpt = 0,
    strength: StrengthOpt = 1.0,
    detail_transfer: DetailTransferOpt = True,
    ensemble: EnsembleOpt = 1,
    back_project: BackProjectOpt = 4,
    tile: SRTilePxOpt = None,
    overlap: SROverlapPxOpt = None,
    metrics: ReconstructionMetricsOpt = None,
    lpips_weights: LpipsWeightsOpt = None,
    out: OutDirOpt = None,
    json_out: JsonReportOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Downscale each original by the model's factor (antialiased bicubic), super-resolve it, and
    score the result and bicubic upscaling against the original."""
    chosen = pick_metrics(metrics, RECONSTRUCTION_METRICS)
    if steps < 1:
        raise ConfigError(f"--steps must be positive, got {steps}")
    if json_out is not None:
        check_output(json_out, inputs=[model], option="--json")
    dev = runtime(device, precision)
    ldm, model, s = _load(model, size, dev)
    cells = dict(zip(("tile", "overlap"), tiles_in_cells(ldm, tile, overlap), strict=True))
    skipped: list[tuple[str, str]] = []  # (file, why), filled by load_eval_images
    images = load_eval_images(data, size=size, limit=limit, multiple=s, skipped=skipped)
    perceptual = optional_lpips(lpips_weights, chosen, dev)
    options = {"sampler": sampler, "steps": steps, "seed": seed, "strength": strength, "precision": precision}
    options |= {"detail_transfer": detail_transfer, "ensemble": ensemble, "back_project": back_project}
    with step_progress(len(images), description=f"eval-sr x{s}") as (progress, task):
        restore = _restorer(ldm, s, lambda: progress.advance(task), **options, **cells)
        report = evaluate_reconstructions(
            images, restore, baseline_factor=s, perceptual=perceptual, on_output=_saver(out, [n for n, _ in images])
        )
    f = ldm.autoencoder.config.downsample_factor
    report = keep_metrics(report, chosen)
    report.update(checkpoint=str(model), data=data, crop=size, scale=s, device=str(dev), **options)
    report.update(tile_px=cells["tile"] * f, overlap_px=cells["overlap"] * f, skipped=[list(k) for k in skipped])
    report["detail_transfer"] = detail_transfer and ldm.config.residual
    print_report(f"eval-sr: {model.name} x{s} on {data}", report, json_out)
