"""``ldmctl train-lora`` and ``ldmctl lora merge``: LoRA adapters on the attention layers (docs/lora.md)."""

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
    ResumeOpt,
    SaveEveryOpt,
    config_flags,
    training_runtime,
)
from ldmctl.errors import ConfigError
from ldmctl.files import check_writable

app = typer.Typer(name="lora", help="LoRA adapters: merge them into a checkpoint (train them with train-lora).")

_FIELDS = {
    "data": "data.source",
    "size": "data.size",
    "rank": "lora.rank",
    "alpha": "lora.alpha",
    "targets": "lora.targets",
    "layers": "lora.layers",
    "text": "lora.text",
    "rank_stabilised": "lora.rank_stabilised",
    "batch_size": "train.batch_size",
    "max_steps": "train.max_steps",
    "lr": "train.lr",
    "warmup_steps": "train.warmup_steps",
    "seed": "train.seed",
    "precision": "train.precision",
    "device": "train.device",
    "sample_every": "train.sample_every",
    "save_every": "train.save_every",
}
BaseArg = Annotated[
    Path | None,
    typer.Argument(
        help="The base LDM checkpoint (train-ldm, convert, export); default: the built-in builtin:shapes model."
    ),
]
ListOpt = Annotated[list[str] | None, typer.Option()]


def _base(ckpt: Path | None) -> str:
    if ckpt is not None:
        return str(ckpt)
    from ldmctl.models import SHIPPED, shipped_model

    err_console.print(f"built-in model: {SHIPPED['shapes'].about}")
    return str(shipped_model("shapes"))


def train(
    ctx: typer.Context,
    ckpt: BaseArg = None,
    data: Annotated[str | None, typer.Option(help="Captioned image folder or builtin:NAME.")] = None,
    out: Annotated[Path, typer.Option("--out-dir", help="Run folder.")] = Path("runs/lora"),
    rank: Annotated[int | None, typer.Option(help="Rank r of each adapter (default 8).")] = None,
    alpha: Annotated[float | None, typer.Option(help="Scale = alpha / rank (default alpha = 8).")] = None,
    targets: Annotated[
        list[str] | None, typer.Option(help="Projections to adapt, repeatable: to_q, to_k, to_v, to_out (default all).")
    ] = None,
    layers: Annotated[
        list[str] | None, typer.Option(help="attn1 (self-attention), attn2 (cross-attention); default both.")
    ] = None,
    text: Annotated[
        bool | None, typer.Option("--text/--no-text", help="Also adapt the CLIP text encoder (clip-text models).")
    ] = None,
    rank_stabilised: Annotated[
        bool | None, typer.Option("--rank-stabilised/--no-rank-stabilised", help="rsLoRA: scale = alpha / sqrt(rank).")
    ] = None,
    size: Annotated[int | None, typer.Option(help="Image size (default: the base model's).")] = None,
    max_steps: MaxStepsOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate (default 1e-4).")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear learning-rate warm-up steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the adapters' init, data order, timesteps, noise.")] = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = None,
    sample_every: Annotated[int | None, typer.Option(help="Steps between preview grids.")] = None,
    save_every: SaveEveryOpt = None,
    config: ConfigFileOpt = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any field: --set lora.dropout=0.1")] = None,
    resume: ResumeOpt = False,
) -> None:
    """Train LoRA adapters on the attention layers of a text-to-image model; the base stays frozen."""
    from ldmctl.train.configure import layered
    from ldmctl.train.lora import LoRATrainingConfig, train_lora

    flags = config_flags({**ctx.params, "targets": targets or None, "layers": layers or None}, _FIELDS)
    flags["base"] = None if resume and ckpt is None else _base(ckpt)
    cfg = layered(LoRATrainingConfig(), config, flags, set_ or [])
    training_runtime(cfg.train.device, cfg.train.precision)
    summary = train_with_progress(
        partial(train_lora, cfg, out, resume=resume),
        total=cfg.train.max_steps,
        description="train-lora",
        shown=("loss", "lr", "steps_per_s"),
        out=out,
        max_cols=8,
    )
    _report(summary)


def _report(summary: dict | None) -> None:
    if summary is None:  # under torchrun, rank 0 alone reports
        return
    err_console.print(f"{summary['steps']} steps, {summary.get('adapter_parameters', 0):,} adapter parameters")
    console.print(summary["checkpoint"], highlight=False)


@app.command("merge")
def merge(
    ckpt: Annotated[Path, typer.Argument(help="The base LDM checkpoint.")],
    loras: Annotated[list[str], typer.Argument(help="Adapters as FILE[:SCALE], then OUT (the merged checkpoint).")],
) -> None:
    """Fold adapters into a plain checkpoint: ldmctl lora merge CKPT LORA[:SCALE]... OUT."""
    from ldmctl.lora.merge import merge_checkpoint

    if len(loras) < 2:
        raise ConfigError("lora merge CKPT LORA[:SCALE]... OUT: give at least one adapter and the output file")
    *specs, out = loras
    target = Path(out)
    if target.resolve() == ckpt.resolve() or any(target.resolve() == Path(s).resolve() for s in specs):
        raise ConfigError(f"OUT {out!r} is one of the inputs; choose a new file")
    check_writable(target)
    summary = merge_checkpoint(ckpt, specs, target)
    err_console.print(f"merged {', '.join(summary['adapters'])} into {ckpt.name}")
    console.print(str(target), highlight=False)
