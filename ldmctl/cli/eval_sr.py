"""``ldmctl eval-sr``: PSNR / SSIM (and LPIPS when its weights are here) of super-resolved images
against the originals, beside bicubic upscaling of the same low-res input."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from ldmctl.files import check_writable
from ldmctl.cli._console import step_progress
from ldmctl.cli.eval_ae import _saver, optional_lpips, print_report
from ldmctl.errors import ConfigError
from ldmctl.eval.report import evaluate_reconstructions, load_eval_images

DEFAULT_DATA = "builtin:photos-holdout"


def command(
    model: Annotated[Optional[Path], typer.Option(help="LDM-SR checkpoint (default: the built-in x4 photo model).")] = None,
    data: Annotated[str, typer.Option(help="Image folder or builtin:NAME (several joined by commas) of high-res originals.")] = DEFAULT_DATA,
    size: Annotated[int, typer.Option(help="Center-crop each original to SIZE x SIZE (the high-res side); 0 keeps whole images.")] = 256,
    limit: Annotated[int, typer.Option(help="Evaluate at most this many images (0: all).")] = 0,
    steps: Annotated[int, typer.Option(help="Sampling steps. 1 (default): the posterior mean, the highest PSNR/SSIM; more steps draw sharper, partly invented detail.")] = 1,
    sampler: Annotated[str, typer.Option(help="dpmpp (DPM-Solver++ 2M), ddim, plms or ddpm.")] = "dpmpp",
    seed: Annotated[int, typer.Option(help="Seed of the initial noise.")] = 0,
    strength: Annotated[float, typer.Option(help="< 1 (ddim only): start from the noised bicubic upscale (see superres).")] = 1.0,
    detail_transfer: Annotated[bool, typer.Option("--detail-transfer/--no-detail-transfer", help="Residual models: output bicubic + D(z) - D(z_bicubic), cancelling the autoencoder's error on the bicubic content.")] = True,
    ensemble: Annotated[int, typer.Option(help="Average 1, 2, 4 or 8 runs on flipped/transposed copies of the input (geometric self-ensemble; that many times slower).")] = 1,
    lpips_weights: Annotated[Optional[Path], typer.Option(help="LPIPS backbone weights (default: torch hub cache).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also save each super-resolved and bicubic image as PNG here.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Downscale each original by the model's factor (antialiased bicubic), super-resolve it, and
    score the result and bicubic upscaling against the original."""
    from ldmctl.superres.degrade import resize
    from ldmctl.superres.upscale import sr_scale, upscale
    from ldmctl.diffusion.io import load_ldm

    if steps < 1:
        raise ConfigError(f"--steps must be positive, got {steps}")
    if json_out is not None:
        check_writable(json_out)
    if model is None:
        from ldmctl.models import shipped_model

        model = shipped_model("superres")
    ldm = load_ldm(model)
    s = sr_scale(ldm)
    if size % s:
        raise ConfigError(f"--size {size} is not a multiple of the model's scale {s}")
    skipped: list[tuple[str, str]] = []
    images = load_eval_images(data, size=size, limit=limit, multiple=s, skipped=skipped)
    perceptual = optional_lpips(lpips_weights)

    with step_progress(len(images), description=f"eval-sr x{s}") as (progress, task):
        def restore(x: torch.Tensor) -> torch.Tensor:
            lr = resize(x[0] * 2 - 1, (x.shape[-2] // s, x.shape[-1] // s)).clamp(-1, 1)
            with torch.inference_mode():
                hr = upscale(ldm, lr, sampler=sampler, steps=steps, seed=seed, strength=strength,
                             detail_transfer=detail_transfer, ensemble=ensemble)
            progress.advance(task)
            return ((hr + 1) / 2)[None]

        report = evaluate_reconstructions(images, restore, baseline_factor=s, perceptual=perceptual,
                                          on_output=_saver(out))
    report.update(checkpoint=str(model), data=data, crop=size, scale=s, sampler=sampler, steps=steps, seed=seed, strength=strength,
                  detail_transfer=detail_transfer and ldm.config.residual, ensemble=ensemble,
                  skipped=[list(k) for k in skipped])
    print_report(f"eval-sr: {Path(model).name} x{s} on {data}", report, json_out)
