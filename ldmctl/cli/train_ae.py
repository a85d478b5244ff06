"""``ldmctl train-ae``: train a KL or VQ first-stage autoencoder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ldmctl.cli._console import console, err_console, format_logs, save_grid, step_progress
from ldmctl.cli._options import resolve_ae_config
from ldmctl.config import channel_mult_for_f
from ldmctl.train.ae import train_ae
from ldmctl.train.loop import Callbacks

_SHOWN = ("loss", "rec", "p", "kl", "vq", "perplexity", "g", "d", "steps_per_s")


def command(
    data: Annotated[Optional[str], typer.Option(help="Image folder or builtin:NAME (photos, digits, fashion, synthetic; see docs/data.md). Default: the preset's, builtin:photos.")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, grids, logs.")] = Path("runs/ae"),
    kind: Annotated[Optional[str], typer.Option(help="Regularisation: kl or vq.")] = None,
    f: Annotated[Optional[int], typer.Option("--f", help="Downsampling factor: 4, 8 or 16.")] = None,
    size: Annotated[Optional[int], typer.Option(help="Training crop size in pixels.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Total optimisation steps.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for init, data order and sampling.")] = None,
    preset: Annotated[str, typer.Option(help="Starting configuration: tiny, small or base.")] = "small",
    perceptual: Annotated[Optional[str], typer.Option(help="Perceptual term: lpips or none.")] = None,
    lpips_weights: Annotated[Optional[Path], typer.Option(help="torchvision ImageNet backbone weights for LPIPS (default: the torch hub cache).")] = None,
    disc_start: Annotated[Optional[int], typer.Option(help="Step at which the PatchGAN term starts.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32 or bf16 (autocast).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (this process's GPU if any, else CPU), cpu or cuda.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Data-loading worker processes.")] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="Steps between reconstruction grids.")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Steps between checkpoints.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="A .toml or .json file of config overrides.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any field: --set model.z_channels=8")] = None,
    init: Annotated[Optional[Path], typer.Option(help="Start from the weights of this autoencoder checkpoint (fine-tuning).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
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
    cfg = resolve_ae_config(preset, config, flags, set_ or [])
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 alone reports
        train_ae(cfg, out, resume=resume, lpips_weights=lpips_weights, init_from=init)
        return
    with step_progress(cfg.train.max_steps, description="train-ae") as (progress, task):
        callbacks = Callbacks(
            on_step=lambda step, logs: progress.update(task, completed=step, stats=format_logs(logs, _SHOWN)),
            on_images=lambda step, name, rows: save_grid(rows, out / "samples" / f"{name}.png"),
            on_message=lambda text: progress.console.print(text),
        )
        summary = train_ae(cfg, out, resume=resume, lpips_weights=lpips_weights, init_from=init,
                           callbacks=callbacks)
    if summary["skipped_files"]:
        err_console.print(f"[yellow]skipped {len(summary['skipped_files'])} unusable file(s)[/] (see {escape(str(out / 'summary.json'))})")
    err_console.print(f"{summary['steps']} steps, {summary['steps_per_s']} steps/s, scale factor {summary['scale_factor']:.4g}")
    console.print(summary["checkpoint"], highlight=False)
