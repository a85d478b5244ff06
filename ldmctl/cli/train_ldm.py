"""``ldmctl train-ldm``: train a latent diffusion model on a frozen autoencoder."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ldmctl.cli._console import (
    console,
    err_console,
    format_logs,
    save_grid,
    step_progress,
)
from ldmctl.cli._options import resolve_ldm_config
from ldmctl.config import LDMTrainingConfig
from ldmctl.errors import ConfigError
from ldmctl.train.ldm import train_ldm
from ldmctl.train.loop import Callbacks

_SHOWN = ("loss", "vlb", "lr", "steps_per_s")


def with_text_encoder(cfg: LDMTrainingConfig, encoder: str) -> LDMTrainingConfig:
    """Set the ``encoder`` option of every conditioner whose Config has one (the text conditioners)."""
    from ldmctl.conditioning.registry import get_conditioner

    specs, hit = [], False
    for spec in cfg.model.conditioners:
        names = {f.name for f in fields(get_conditioner(spec.name).cls.Config)}
        if "encoder" in names:
            spec, hit = replace(spec, options={**spec.options, "encoder": encoder}), True
        specs.append(spec)
    if not hit:
        raise ConfigError("--text-encoder needs a text conditioner: add --cond crossattn, --cond add or --cond tokens")
    return replace(cfg, model=replace(cfg.model, conditioners=tuple(specs)))


def command(
    ae: Annotated[Path | None, typer.Option(help="Autoencoder checkpoint from train-ae (its scale factor is used).")] = None,
    data: Annotated[str | None, typer.Option(help="Image folder or builtin:NAME (e.g. builtin:digits).")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, sample grids, logs.")] = Path("runs/ldm"),
    cond: Annotated[list[str] | None, typer.Option(help="Conditioning plugin, repeatable: --cond class --cond concat (ldmctl plugins lists them). Options go in --config \\[\\[model.conditioners]].")] = None,
    task: Annotated[str | None, typer.Option(help="generate (default) or superres: learn high-res images from their low-res versions (adds the concat conditioner; degradations in \\[superres]).")] = None,
    text_encoder: Annotated[str | None, typer.Option(help="Text encoder of the text conditioners: bert (trained jointly), minilm (frozen) or a local model folder.")] = None,
    preset: Annotated[str, typer.Option(help="Starting configuration: tiny, small or base.")] = "small",
    size: Annotated[int | None, typer.Option(help="Image size in pixels (latent side = size / f).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Total optimisation steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Latents per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate.")] = None,
    ema_decay: Annotated[float | None, typer.Option(help="EMA decay of the sampling weights.")] = None,
    prediction: Annotated[str | None, typer.Option(help="What the UNet predicts: eps, v or x0.")] = None,
    schedule: Annotated[str | None, typer.Option(help="Beta schedule: linear, sqrt_linear or cosine.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for init, data order, timesteps and noise.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 (autocast, CPU or GPU) or fp16 (autocast + gradient scaler, GPU).")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Split each step's batch into this many micro-batches (same result, less memory).")] = None,
    grad_checkpointing: Annotated[bool | None, typer.Option("--grad-checkpointing/--no-grad-checkpointing", help="Recompute UNet block activations in backward (less memory, ~30% slower).")] = None,
    device: Annotated[str | None, typer.Option(help="auto (this process's GPU if any, else CPU), cpu or cuda.")] = None,
    compile_: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the UNet for training.")] = None,
    sample_every: Annotated[int | None, typer.Option(help="Steps between EMA sample grids.")] = None,
    save_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    config: Annotated[Path | None, typer.Option(help="A .toml or .json file of config overrides.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any field: --set model.unet.model_channels=32")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
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
    cfg = resolve_ldm_config(preset, config, flags, set_ or [])
    if text_encoder is not None:
        cfg = with_text_encoder(cfg, text_encoder)
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 alone reports
        train_ldm(cfg, ae, out, resume=resume)
        return
    with step_progress(cfg.train.max_steps, description="train-ldm") as (progress, task):
        callbacks = Callbacks(
            on_step=lambda step, logs: progress.update(task, completed=step, stats=format_logs(logs, _SHOWN)),
            on_images=lambda step, name, rows: save_grid(rows, out / "samples" / f"{name}.png", max_cols=16),
            on_message=lambda text: progress.console.print(text),
        )
        summary = train_ldm(cfg, ae, out, resume=resume, callbacks=callbacks)
    if summary["skipped_files"]:
        err_console.print(f"[yellow]skipped {len(summary['skipped_files'])} unusable file(s)[/] (see {escape(str(out / 'summary.json'))})")
    err_console.print(f"{summary['steps']} steps, {summary['steps_per_s']} steps/s, final loss {summary['final'].get('loss', float('nan')):.4g}")
    console.print(summary["checkpoint"], highlight=False)
