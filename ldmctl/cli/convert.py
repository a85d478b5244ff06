"""``ldmctl convert``: a Stable Diffusion / CompVis / diffusers model into one ldmctl checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ldmctl.cli._console import console, err_console
from ldmctl.errors import ConfigError
from ldmctl.files import check_writable


def command(
    src: Annotated[
        Path,
        typer.Argument(
            help="A diffusers folder (StableDiffusionPipeline, UNet2DConditionModel or AutoencoderKL), a Stable "
            "Diffusion 1.x/2.x single file (.safetensors, or a .ckpt of plain tensors) or a CompVis first-stage file."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The ldmctl checkpoint to write (.safetensors).")],
    config: Annotated[
        Path | None,
        typer.Option(help="The original model's config (CompVis YAML, e.g. v2-inference-v.yaml) for single files."),
    ] = None,
    prediction: Annotated[
        Literal["eps", "v", "x0"] | None,
        typer.Option(help="What the UNet predicts, where the source cannot tell (SD 2.x single files: eps or v)."),
    ] = None,
    clip_layer: Annotated[
        Literal["last", "penultimate"],
        typer.Option(help="The CLIP hidden state used as context (penultimate = CLIP skip 1)."),
    ] = "last",
    vae: Annotated[Path | None, typer.Option(help="For a UNet folder alone: its AutoencoderKL folder.")] = None,
    text_encoder: Annotated[
        Path | None,
        typer.Option(
            help="For a UNet folder alone: its CLIP text encoder folder (with the tokenizer files). For a single file: "
            "a folder holding the CLIP tokenizer (default: built from open_clip's packaged BPE vocabulary)."
        ),
    ] = None,
    half: Annotated[
        bool | None,
        typer.Option("--half/--fp32", help="Store fp16 or fp32 weights (default: as the source stores them)."),
    ] = None,
) -> None:
    """Convert a pretrained latent diffusion model (or its autoencoder) into a self-contained ldmctl checkpoint."""
    from ldmctl.convert import convert

    if out.resolve() == src.resolve() or out.resolve().is_relative_to(src.resolve()) and src.is_dir():
        raise ConfigError(f"OUT {str(out)!r} would be written inside or over its source", hint="choose another OUT")
    check_writable(out)
    summary = convert(
        src, out, config=config, prediction=prediction, layer=clip_layer, vae=vae, text_encoder=text_encoder, half=half
    )
    err_console.print(f"{summary['kind']} checkpoint, {summary['parameters'] / 1e6:.1f} M parameters")
    console.print(str(out), highlight=False)
