"""``ldmctl export``: an inference-only copy of an LDM checkpoint (EMA weights, fp16, pruned vocabulary) or
of an autoencoder (fp16), or a diffusers folder (``--format diffusers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ldmctl.cli._console import console, err_console
from ldmctl.cli._options import OverwriteOpt
from ldmctl.config import DataConfig
from ldmctl.errors import ConfigError
from ldmctl.files import check_output


def command(
    ckpt: Annotated[
        Path, typer.Argument(help="LDM checkpoint (train-ldm, convert) or autoencoder checkpoint (train-ae) to export.")
    ],
    out: Annotated[Path, typer.Argument(help="Where to write the exported .safetensors (a new folder for diffusers).")],
    format_: Annotated[
        Literal["ldmctl", "diffusers"],
        typer.Option(
            "--format",
            help="ldmctl: a sampling-only .safetensors; diffusers: a folder diffusers loads (StableDiffusionPipeline "
            "for clip-text models, else the model classes).",
        ),
    ] = "ldmctl",
    half: Annotated[
        bool, typer.Option("--half/--fp32", help="Store the weights in fp16 (they load back as fp32).")
    ] = True,
    prune_vocab: Annotated[
        bool, typer.Option(help="Keep only the text-embedding rows of tokens in the training captions.")
    ] = False,
    captions_from: Annotated[
        str | None,
        typer.Option(
            help="Data set whose captions give the kept vocabulary (default: the one the model was trained on)."
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a small sampling-only copy of CKPT (an LDM's EMA weights, or an autoencoder), or a diffusers folder.

    An LDM keeps its EMA UNet, conditioners and autoencoder; an autoencoder keeps its weights."""
    from ldmctl.export import checkpoint_kind, export_autoencoder, export_ldm

    if out.resolve() == ckpt.resolve():
        raise ConfigError("the export would overwrite its source checkpoint, one of its inputs; choose another OUT")
    if format_ == "diffusers":
        _diffusers(ckpt, out)
        return
    check_output(out, inputs=[ckpt], overwrite=overwrite, option="OUT")
    if checkpoint_kind(ckpt) == "autoencoder":
        if prune_vocab or captions_from:
            raise ConfigError("--prune-vocab and --captions-from apply to LDM checkpoints; this is an autoencoder")
        summary = export_autoencoder(ckpt, out, half=half)
    else:
        data = DataConfig(source=captions_from) if captions_from else None
        summary = export_ldm(ckpt, out, half=half, prune_vocab=prune_vocab, captions_from=data)
    kept = ", ".join(f"{k}: {v} tokens kept" for k, v in summary["kept_tokens"].items())
    err_console.print(
        f"{summary['src_bytes'] / 1e6:.1f} MB -> {summary['dst_bytes'] / 1e6:.1f} MB" + (f" ({kept})" if kept else "")
    )
    console.print(str(out), highlight=False)


def _diffusers(ckpt: Path, out: Path) -> None:
    from ldmctl.convert.export import export_diffusers

    summary = export_diffusers(ckpt, out)
    if summary["kind"] == "ldm" and not summary["pipeline"]:
        names = ", ".join(summary["conditioners"]) or "none"
        err_console.print(
            f"wrote unet/, vae/ and scheduler/ (diffusers model classes); the conditioners ({names}) have no "
            "diffusers class and stay in the ldmctl checkpoint"
        )
    console.print(str(out), highlight=False)
