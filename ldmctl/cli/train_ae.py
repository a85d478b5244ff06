"""``ldmctl train-ae``: train a KL or VQ first-stage autoencoder."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmctl.cli._console import console, err_console, train_with_progress
from ldmctl.cli._vocab import AEKind, AEPrecision, Device, Perceptual, Preset
from ldmctl.config import channel_mult_for_f
from ldmctl.train.ae import train_ae
from ldmctl.train.configure import ae_config

_SHOWN = ("loss", "rec", "p", "kl", "vq", "perplexity", "g", "d", "steps_per_s")


def command(
    data: Annotated[Optional[str], typer.Option(help="Image folder or builtin:NAME (photos, digits, fashion, synthetic; see docs/data.md). Default: the preset's, builtin:photos.")] = None,
    out: Annotated[Path, typer.Option("--out-dir", "--out", help="Run folder: checkpoints, grids, logs.")] = Path("runs/ae"),
    kind: Annotated[Optional[AEKind], typer.Option(help="Regularisation: KL or VQ.")] = None,
    f: Annotated[Optional[int], typer.Option("--f", help="Downsampling factor: 4, 8 or 16.")] = None,
    size: Annotated[Optional[int], typer.Option(help="Training crop size in pixels.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Total optimisation steps.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for init, data order and sampling.")] = None,
    preset: Annotated[Preset, typer.Option(help="Starting configuration.")] = "small",
    perceptual: Annotated[Optional[Perceptual], typer.Option(help="Perceptual term of the loss.")] = None,
    lpips_weights: Annotated[Optional[Path], typer.Option(help="torchvision ImageNet backbone weights for LPIPS (default: the torch hub cache).")] = None,
    disc_start: Annotated[Optional[int], typer.Option(help="Step at which the PatchGAN term starts.")] = None,
    precision: Annotated[Optional[AEPrecision], typer.Option(help="bf16: autocast.")] = None,
    device: Annotated[Optional[Device], typer.Option(help="auto: this process's GPU if any, else CPU.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Data-loading worker processes.")] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="Steps between reconstruction grids.")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Steps between checkpoints.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="A .toml or .json file of config overrides.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any field: --set model.z_channels=8")] = None,
    init: Annotated[Optional[Path], typer.Option(help="Start from the weights of this autoencoder checkpoint (fine-tuning).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out-dir from its last checkpoint.")] = False,
) -> None:
    """Train a KL- or VQ-regularised autoencoder (L1 + LPIPS + PatchGAN)."""
    flags = {
        "model": {"kind": kind, "channel_mult": channel_mult_for_f(f, preset) if f else None},
        "loss": {"perceptual": perceptual, "disc_start": disc_start},
        "data": {"source": data, "size": size},
        "train": {"batch_size": batch_size, "max_steps": max_steps, "lr": lr, "seed": seed,
                  "precision": precision, "num_workers": workers, "sample_every": sample_every,
                  "save_every": save_every, "device": device},
    }
    cfg = ae_config(preset, config, flags, set_ or [])
    run = partial(train_ae, cfg, out, resume=resume, lpips_weights=lpips_weights, init_from=init)
    summary = train_with_progress(run, total=cfg.train.max_steps, description="train-ae", shown=_SHOWN, out=out)
    if summary is None:  # under torchrun, rank 0 alone reports
        return
    err_console.print(f"{summary['steps']} steps, {summary['steps_per_s']} steps/s, scale factor {summary['scale_factor']:.4g}")
    console.print(summary["checkpoint"], highlight=False)
