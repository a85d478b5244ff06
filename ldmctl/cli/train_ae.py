"""``ldmctl train-ae``: train a KL or VQ first-stage autoencoder."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from ldmctl.cli._console import console, err_console, train_with_progress
from ldmctl.cli._options import (
    ConfigFileOpt,
    DeviceOpt,
    MaxStepsOpt,
    PresetOpt,
    ResumeOpt,
    SaveEveryOpt,
    config_flags,
    training_runtime,
)
from ldmctl.cli._vocab import AEKind, AEPrecision, Perceptual
from ldmctl.config import channel_mult_for_f
from ldmctl.models import resolve_builtin
from ldmctl.train.ae import train_ae
from ldmctl.train.configure import ae_config

_SHOWN = ("loss", "rec", "p", "kl", "vq", "perplexity", "g", "d", "steps_per_s")


# the options that each set one config field (None, not given: the preset's or --config's value)
_FIELDS = {
    "kind": "model.kind",
    "perceptual": "loss.perceptual",
    "disc_start": "loss.disc_start",
    "data": "data.source",
    "size": "data.size",
    "batch_size": "train.batch_size",
    "max_steps": "train.max_steps",
    "lr": "train.lr",
    "seed": "train.seed",
    "precision": "train.precision",
    "workers": "train.num_workers",
    "sample_every": "train.sample_every",
    "save_every": "train.save_every",
    "device": "train.device",
}

DataOpt = Annotated[
    str | None,
    typer.Option(
        help="Image folder or builtin:NAME (photos, digits, fashion, synthetic; see docs/data.md). Default: the "
        "preset's, builtin:photos."
    ),
]
OutDirOpt = Annotated[Path, typer.Option("--out-dir", "--out", help="Run folder: checkpoints, grids, logs.")]
KindOpt = Annotated[AEKind | None, typer.Option(help="Regularisation: KL or VQ.")]
FOpt = Annotated[int | None, typer.Option("--f", help="Downsampling factor: 4, 8 or 16.")]
SizeOpt = Annotated[int | None, typer.Option(help="Training crop size in pixels.")]
BatchSizeOpt = Annotated[int | None, typer.Option(help="Images per step.")]
LROpt = Annotated[float | None, typer.Option(help="Adam learning rate.")]
SeedOpt = Annotated[int | None, typer.Option(help="Seed for init, data order and sampling.")]
PerceptualOpt = Annotated[Perceptual | None, typer.Option(help="Perceptual term of the loss.")]
LpipsWeightsOpt = Annotated[
    Path | None, typer.Option(help="torchvision ImageNet backbone weights for LPIPS (default: the torch hub cache).")
]
DiscStartOpt = Annotated[int | None, typer.Option(help="Step at which the PatchGAN term starts.")]
AEPrecisionOpt = Annotated[
    AEPrecision | None,
    typer.Option(help="fp32, or autocast to bf16 (CPU or GPU); no fp16: train-ae has no gradient scaler."),
]
WorkersOpt = Annotated[int | None, typer.Option(help="Data-loading worker processes.")]
SampleEveryOpt = Annotated[int | None, typer.Option(help="Steps between reconstruction grids.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override any field: --set model.z_channels=8")]
InitOpt = Annotated[
    Path | None,
    typer.Option(
        help="Start from the weights of this autoencoder checkpoint, or of builtin:photo-f4 (fine-tuning).",
        callback=resolve_builtin,
    ),
]


def command(
    ctx: typer.Context,
    data: DataOpt = None,
    out: OutDirOpt = Path("runs/ae"),
    kind: KindOpt = None,
    f: FOpt = None,
    size: SizeOpt = None,
    batch_size: BatchSizeOpt = None,
    max_steps: MaxStepsOpt = None,
    lr: LROpt = None,
    seed: SeedOpt = None,
    preset: PresetOpt = "small",
    perceptual: PerceptualOpt = None,
    lpips_weights: LpipsWeightsOpt = None,
    disc_start: DiscStartOpt = None,
    precision: AEPrecisionOpt = None,
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    sample_every: SampleEveryOpt = None,
    save_every: SaveEveryOpt = None,
    config: ConfigFileOpt = None,
    set_: SetOpt = None,
    init: InitOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Train a KL- or VQ-regularised autoencoder (L1 + LPIPS + PatchGAN)."""
    flags = config_flags(ctx.params, _FIELDS)
    flags["model"]["channel_mult"] = channel_mult_for_f(f, preset) if f else None
    cfg = ae_config(preset, config, flags, set_ or [])
    training_runtime(cfg.train.device, cfg.train.precision)
    run = partial(train_ae, cfg, out, resume=resume, lpips_weights=lpips_weights, init_from=init)
    summary = train_with_progress(run, total=cfg.train.max_steps, description="train-ae", shown=_SHOWN, out=out)
    if summary is None:  # under torchrun, rank 0 alone reports
        return
    err_console.print(
        f"{summary['steps']} steps, {summary['steps_per_s']} steps/s, scale factor {summary['scale_factor']:.4g}"
    )
    console.print(summary["checkpoint"], highlight=False)
