"""``ldmctl eval-ae``: PSNR / SSIM (and LPIPS when its weights are here) of an autoencoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.markup import escape

from ldmctl.autoencoder.apply import DEFAULT_OVERLAP, DEFAULT_TILE, check_tiling
from ldmctl.checkpoint import load_autoencoder
from ldmctl.cli._console import console, err_console, metrics_table, to_uint8_image
from ldmctl.cli._options import (
    AECheckpointArg,
    AEOverlapPxOpt,
    AETilePxOpt,
    DeviceOpt,
    JsonReportOpt,
    LimitOpt,
    LpipsWeightsOpt,
    PrecisionOpt,
    ReconstructionMetricsOpt,
    runtime,
)
from ldmctl.cli._vocab import pick_metrics
from ldmctl.errors import WeightsError
from ldmctl.eval.report import autoencoder_restorer, evaluate_reconstructions, load_eval_images
from ldmctl.files import atomic_write, check_output, ensure_folder


def _saver(out: Path | None, inputs: list[str]):
    """A callback writing ``OUT/<image stem>_<label>.png`` for each scored output (images sharing a
    stem get a number in front, and an output never replaces the image it scores), or None."""
    if out is None:
        return None
    ensure_folder(out)
    written: dict[tuple[str, str], Path] = {}

    def save(name: str, label: str, image) -> None:
        img = to_uint8_image(image * 2 - 1)
        target = out / f"{Path(name).stem.replace('#', '_')}_{label}.png"
        if target in written.values():
            target = out / f"{len(written):04d}_{target.name}"
        written[(name, label)] = check_output(target, inputs=inputs, option="--out-dir")
        atomic_write(target, lambda tmp: img.save(tmp, format="PNG"))

    return save


RECONSTRUCTION_METRICS = ("psnr", "ssim", "lpips")


def optional_lpips(weights: Path | None, chosen: tuple[str, ...] | None = None, device: torch.device | None = None):
    """The LPIPS net (on ``device``) for the metrics ``chosen`` by --metrics (None: auto), or None.

    With auto, missing backbone weights skip LPIPS with a notice (an error only when the user
    named a weights file); with lpips named explicitly they are an error; without it, no net."""
    from ldmctl.autoencoder import build_perceptual

    if chosen is not None and "lpips" not in chosen:
        return None
    try:
        net = build_perceptual("alex", weights=weights)
    except WeightsError as err:
        if weights is not None or chosen is not None:
            raise
        err_console.print(f"[dim]LPIPS skipped: {escape(str(err))}[/]", highlight=False)
        return None
    return net if device is None else net.to(device)


def keep_metrics(report: dict, chosen: tuple[str, ...] | None) -> dict:
    """``report`` with only the columns of the chosen metrics (all for auto)."""
    if chosen is not None:

        def keep(row: dict) -> dict:
            return {k: v for k, v in row.items() if k.rsplit("_", 1)[-1] in chosen or k in ("image", "size")}

        report = {**report, "rows": [keep(r) for r in report["rows"]], "mean": keep(report["mean"])}
    return {
        **report,
        "metrics": sorted({k.rsplit("_", 1)[-1] for k in report["mean"]}, key=RECONSTRUCTION_METRICS.index),
    }


def print_report(title: str, report: dict, json_out: Path | None) -> None:
    """The per-image rows and their mean as a table on stdout; the report as JSON if asked."""
    if report.get("skipped"):
        err_console.print(
            f"[yellow]skipped {len(report['skipped'])} unusable file(s)[/]"
            + (f" (see {escape(str(json_out))})" if json_out else ""),
            highlight=False,
        )
    columns = ["image", "size"] + list(report["mean"])
    rows = report["rows"] + [{"image": "mean", "size": "", **report["mean"]}]
    console.print(metrics_table(title, rows, columns))
    if json_out is not None:
        atomic_write(json_out, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
        console.print(str(json_out), highlight=False)


DataOpt = Annotated[str, typer.Option(help="Image folder or builtin:NAME to evaluate on.")]
SizeOpt = Annotated[int, typer.Option(help="Center-crop each image to SIZE x SIZE; 0 keeps whole images.")]
BaselineOpt = Annotated[bool, typer.Option(help="Also score bicubic down-and-up by the same factor f.")]
OutDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--out-dir", "--out", help="Also save each reconstruction (and bicubic baseline) as PNG in this folder."
    ),
]


def command(
    ckpt: AECheckpointArg,
    data: DataOpt = "builtin:photos-holdout",
    size: SizeOpt = 256,
    limit: LimitOpt = 0,
    baseline: BaselineOpt = True,
    metrics: ReconstructionMetricsOpt = None,
    lpips_weights: LpipsWeightsOpt = None,
    out: OutDirOpt = None,
    json_out: JsonReportOpt = None,
    tile: AETilePxOpt = DEFAULT_TILE,
    overlap: AEOverlapPxOpt = DEFAULT_OVERLAP,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Score reconstructions against the originals: a table on stdout, optionally JSON."""
    chosen = pick_metrics(metrics, RECONSTRUCTION_METRICS)
    if json_out is not None:
        check_output(json_out, inputs=[ckpt], option="--json")
    dev = runtime(device, precision)
    ae = load_autoencoder(ckpt).to(dev)
    check_tiling(ae.config.downsample_factor, tile, overlap)
    skipped: list[tuple[str, str]] = []
    images = load_eval_images(data, size=size, limit=limit, skipped=skipped)
    perceptual = optional_lpips(lpips_weights, chosen, dev)
    f = ae.config.downsample_factor
    report = evaluate_reconstructions(
        images,
        autoencoder_restorer(ae, precision=precision, tile=tile, overlap=overlap),
        baseline_factor=f if baseline else 0,
        perceptual=perceptual,
        on_output=_saver(out, [name for name, _ in images]),
    )
    report = keep_metrics(report, chosen)
    report.update(
        checkpoint=str(ckpt),
        data=data,
        crop=size,
        f=f,
        tile_px=tile,
        overlap_px=overlap,
        device=str(dev),
        precision=precision,
        skipped=[list(s) for s in skipped],
    )
    print_report(f"eval-ae: {ckpt.name} on {data}", report, json_out)
