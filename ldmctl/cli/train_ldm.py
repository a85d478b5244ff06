"""``ldmctl train-ldm``: train a latent diffusion model on a frozen autoencoder."""

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
    PrecisionOpt,
    PresetOpt,
    ResumeOpt,
    SaveEveryOpt,
    config_flags,
    training_runtime,
)
from ldmctl.cli._vocab import Prediction, Schedule, Task
from ldmctl.errors import ConfigError
from ldmctl.models import resolve_builtin
from ldmctl.train.configure import ldm_config
from ldmctl.train.ldm import train_ldm

_SHOWN = ("loss", "vlb", "lr", "steps_per_s")

# the options that each set one config field (None, not given: the preset's or --config's value)
_FIELDS = {
    "prediction": "model.diffusion.prediction",
    "schedule": "model.diffusion.schedule",
    "grad_checkpointing": "model.unet.checkpointing",
    "data": "data.source",
    "size": "data.size",
    "batch_size": "train.batch_size",
    "max_steps": "train.max_steps",
    "lr": "train.lr",
    "seed": "train.seed",
    "precision": "train.precision",
    "grad_accum": "train.grad_accum",
    "device": "train.device",
    "compile_": "train.compile",
    "sample_every": "train.sample_every",
    "save_every": "train.save_every",
    "ema_decay": "ema.decay",
    "task": "task",
    "init": "init",
    "train_only": "train_only",
    "freeze_conditioners": "freeze_conditioners",
}
_ARCHITECTURE = ("cond", "task", "text_encoder", "prediction", "schedule")  # fixed by --init's checkpoint

AEOpt = Annotated[
    Path | None,
    typer.Option(
        help="Autoencoder checkpoint from train-ae (its scale factor is used), builtin:photo-f4 (the shipped photo "
        "autoencoder), or an LDM checkpoint whose autoencoder to use (e.g. one made by ldmctl convert from Stable "
        "Diffusion).",
        callback=resolve_builtin,
    ),
]
InitOpt = Annotated[
    str | None,
    typer.Option(
        help="Fine-tune: start from this LDM checkpoint (train-ldm, convert or export): its architecture, autoencoder, "
        "conditioners and EMA weights; new data, same model."
    ),
]
TrainOnlyOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Train only the UNet parameters whose names match this glob, repeatable (e.g. '*attn2*' for the "
        "cross-attention); the rest stays frozen."
    ),
]
FreezeCondOpt = Annotated[
    bool | None,
    typer.Option(
        "--freeze-conditioners/--train-conditioners",
        help="Keep the conditioners' weights fixed (e.g. a jointly trained text encoder); frozen encoders stay frozen.",
    ),
]
DataOpt = Annotated[str | None, typer.Option(help="Image folder or builtin:NAME (e.g. builtin:digits).")]
OutDirOpt = Annotated[Path, typer.Option("--out-dir", "--out", help="Run folder: checkpoints, sample grids, logs.")]
CondOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Conditioning plugin, repeatable: --cond class --cond concat (ldmctl plugins lists them). Options go in "
        "--config \\[\\[model.conditioners]]."
    ),
]
TaskOpt = Annotated[
    Task | None,
    typer.Option(
        help="generate (default); superres: learn high-res images from their low-res versions (adds the concat "
        "conditioner; degradations in \\[superres]); inpaint: learn to fill random masks (adds the mask and the "
        "masked image's latent to the UNet input; masks in \\[inpaint])."
    ),
]
TextEncoderOpt = Annotated[
    str | None,
    typer.Option(
        help="Text encoder of the text conditioners: bert (trained jointly), minilm (frozen) or a local model folder."
    ),
]
SizeOpt = Annotated[int | None, typer.Option(help="Image size in pixels (latent side = size / f).")]
BatchSizeOpt = Annotated[int | None, typer.Option(help="Latents per step.")]
LROpt = Annotated[float | None, typer.Option(help="Peak AdamW learning rate.")]
EMADecayOpt = Annotated[float | None, typer.Option(help="EMA decay of the sampling weights.")]
PredictionOpt = Annotated[Prediction | None, typer.Option(help="What the UNet predicts: the noise, v or x0.")]
ScheduleOpt = Annotated[Schedule | None, typer.Option(help="Beta schedule.")]
SeedOpt = Annotated[int | None, typer.Option(help="Seed for init, data order, timesteps and noise.")]
GradAccumOpt = Annotated[
    int | None, typer.Option(help="Split each step's batch into this many micro-batches (same result, less memory).")
]
GradCheckpointingOpt = Annotated[
    bool | None,
    typer.Option(
        "--grad-checkpointing/--no-grad-checkpointing",
        help="Recompute UNet block activations in backward (less memory, ~30% slower).",
    ),
]
CompileOpt = Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the UNet for training.")]
SampleEveryOpt = Annotated[int | None, typer.Option(help="Steps between EMA sample grids.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override any field: --set model.unet.model_channels=32")
]


def _check_init(params: dict) -> None:
    given = [f"--{k.replace('_', '-')}" for k in _ARCHITECTURE if params[k]]
    if params["init"] is not None and given:
        raise ConfigError(f"{', '.join(given)} and --init: the architecture comes from the --init checkpoint")


def command(
    ctx: typer.Context,
    ae: AEOpt = None,
    init: InitOpt = None,
    data: DataOpt = None,
    out: OutDirOpt = Path("runs/ldm"),
    cond: CondOpt = None,
    task: TaskOpt = None,
    text_encoder: TextEncoderOpt = None,
    preset: PresetOpt = "small",
    size: SizeOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LROpt = None,
    ema_decay: EMADecayOpt = None,
    prediction: PredictionOpt = None,
    schedule: ScheduleOpt = None,
    seed: SeedOpt = None,
    precision: PrecisionOpt = None,
    grad_accum: GradAccumOpt = None,
    grad_checkpointing: GradCheckpointingOpt = None,
    device: DeviceOpt = None,
    compile_: CompileOpt = None,
    sample_every: SampleEveryOpt = None,
    save_every: SaveEveryOpt = None,
    config: ConfigFileOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    train_only: TrainOnlyOpt = None,
    freeze_conditioners: FreezeCondOpt = None,
) -> None:
    """Train a latent diffusion model (UNet + DDPM objective + EMA) on an autoencoder's latents, or fine-tune one."""
    _check_init(ctx.params)
    flags = config_flags({**ctx.params, "train_only": train_only or None}, _FIELDS)
    flags["model"]["conditioners"] = [{"name": name} for name in cond] if cond else None
    cfg = ldm_config(preset, config, flags, set_ or [], text_encoder=text_encoder)
    training_runtime(cfg.train.device, cfg.train.precision)
    summary = train_with_progress(
        partial(train_ldm, cfg, ae, out, resume=resume),
        total=cfg.train.max_steps,
        description="train-ldm",
        shown=_SHOWN,
        out=out,
        max_cols=16,
    )
    if summary is None:  # under torchrun, rank 0 alone reports
        return
    loss = summary["final"].get("loss", float("nan"))
    err_console.print(f"{summary['steps']} steps, {summary['steps_per_s']} steps/s, final loss {loss:.4g}")
    console.print(summary["checkpoint"], highlight=False)
