"""``ldmctl train-ldm``: train a latent diffusion model on a frozen autoencoder."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from ldmctl.cli._console import console, err_console, train_with_progress
from ldmctl.cli._vocab import Device, Precision, Prediction, Preset, Schedule, Task
from ldmctl.train.configure import ldm_config
from ldmctl.train.ldm import train_ldm

_SHOWN = ("loss", "vlb", "lr", "steps_per_s")


def command(
    ae: Annotated[Path | None, typer.Option(help="Autoencoder checkpoint from train-ae (its scale factor is used).")] = None,
    data: Annotated[str | None, typer.Option(help="Image folder or builtin:NAME (e.g. builtin:digits).")] = None,
    out: Annotated[Path, typer.Option("--out-dir", "--out", help="Run folder: checkpoints, sample grids, logs.")] = Path("runs/ldm"),
    cond: Annotated[list[str] | None, typer.Option(help="Conditioning plugin, repeatable: --cond class --cond concat (ldmctl plugins lists them). Options go in --config \\[\\[model.conditioners]].")] = None,
    task: Annotated[Task | None, typer.Option(help="generate (default) or superres: learn high-res images from their low-res versions (adds the concat conditioner; degradations in \\[superres]).")] = None,
    text_encoder: Annotated[str | None, typer.Option(help="Text encoder of the text conditioners: bert (trained jointly), minilm (frozen) or a local model folder.")] = None,
    preset: Annotated[Preset, typer.Option(help="Starting configuration.")] = "small",
    size: Annotated[int | None, typer.Option(help="Image size in pixels (latent side = size / f).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Total optimisation steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Latents per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate.")] = None,
    ema_decay: Annotated[float | None, typer.Option(help="EMA decay of the sampling weights.")] = None,
    prediction: Annotated[Prediction | None, typer.Option(help="What the UNet predicts: the noise, v or x0.")] = None,
    schedule: Annotated[Schedule | None, typer.Option(help="Beta schedule.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for init, data order, timesteps and noise.")] = None,
    precision: Annotated[Precision | None, typer.Option(help="bf16: autocast, CPU or GPU; fp16: autocast + gradient scaler, GPU.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Split each step's batch into this many micro-batches (same result, less memory).")] = None,
    grad_checkpointing: Annotated[bool | None, typer.Option("--grad-checkpointing/--no-grad-checkpointing", help="Recompute UNet block activations in backward (less memory, ~30% slower).")] = None,
    device: Annotated[Device | None, typer.Option(help="auto: this process's GPU if any, else CPU.")] = None,
    compile_: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the UNet for training.")] = None,
    sample_every: Annotated[int | None, typer.Option(help="Steps between EMA sample grids.")] = None,
    save_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    config: Annotated[Path | None, typer.Option(help="A .toml or .json file of config overrides.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any field: --set model.unet.model_channels=32")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out-dir from its last checkpoint.")] = False,
) -> None:
    """Train a latent diffusion model (UNet + DDPM objective + EMA) on an autoencoder's latents."""
    flags = {
        "model": {"diffusion": {"prediction": prediction, "schedule": schedule},
                  "unet": {"checkpointing": grad_checkpointing},
                  "conditioners": [{"name": name} for name in cond] if cond else None},
        "data": {"source": data, "size": size},
        "train": {"batch_size": batch_size, "max_steps": max_steps, "lr": lr, "seed": seed, "precision": precision,
                  "grad_accum": grad_accum, "device": device, "compile": compile_,
                  "sample_every": sample_every, "save_every": save_every},
        "ema": {"decay": ema_decay},
        "task": task,
    }
    cfg = ldm_config(preset, config, flags, set_ or [], text_encoder=text_encoder)
    summary = train_with_progress(partial(train_ldm, cfg, ae, out, resume=resume), total=cfg.train.max_steps,
                                  description="train-ldm", shown=_SHOWN, out=out, max_cols=16)
    if summary is None:  # under torchrun, rank 0 alone reports
        return
    err_console.print(f"{summary['steps']} steps, {summary['steps_per_s']} steps/s, final loss {summary['final'].get('loss', float('nan')):.4g}")
    console.print(summary["checkpoint"], highlight=False)
