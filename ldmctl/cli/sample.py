"""``ldmctl sample``: draw images from a trained latent diffusion checkpoint, or edit an image with it
(img2img, inpainting, outpainting: :mod:`ldmctl.editing`, docs/editing.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ldmctl.cli._console import console, err_console, grid_shape, step_progress, to_uint8_image
from ldmctl.cli._options import (
    DeviceOpt,
    EtaOpt,
    GuidanceOpt,
    PrecisionOpt,
    SamplerOpt,
    StepsOpt,
    UNetBatchOpt,
    WeightsOpt,
    runtime,
)
from ldmctl.diffusion.io import load_ldm
from ldmctl.editing import Edit, check_edit_options, latent_grid, prepare_edit
from ldmctl.files import atomic_write, check_writable, ensure_folder
from ldmctl.samplers import get_sampler
from ldmctl.sampling import check_options, default_guidance, generate, parse_pairs, sampling_conditions

CheckpointArg = Annotated[
    Path | None,
    typer.Argument(
        help="LDM checkpoint (.safetensors from train-ldm or export); default: the built-in builtin:shapes "
        "text-to-image model."
    ),
]
NOpt = Annotated[int, typer.Option("--n", help="Number of images.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the initial noise and of every random draw.")]
PromptOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Prompt(s) for text-conditional models, repeatable; cycled over the samples (= --input caption=...)."
    ),
]
NegativePromptOpt = Annotated[
    str | None, typer.Option(help="Prompt for the unconditional branch of guidance (default: the empty prompt).")
]
LabelOpt = Annotated[
    list[int] | None,
    typer.Option(
        help="Class label(s) for class-conditional models, repeatable; cycled over the samples (default: all classes "
        "in turn; = --input label=...)."
    ),
]
InputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        help="An input of the model's conditioners as KEY=VALUE, repeatable; several values of one key are cycled "
        "over the samples (e.g. --input label=3, --input cond_image=lr.png; `ldmctl plugins` lists the keys).",
    ),
]
OutFileOpt = Annotated[Path, typer.Option("--out-file", "-o", "--out", help="Grid PNG of all samples.")]
OutDirOpt = Annotated[Path | None, typer.Option(help="Also write each sample as its own PNG in this folder.")]
SaveTensorOpt = Annotated[
    Path | None, typer.Option(help="Also save the samples as a .pt tensor (N, 3, H, W) in [-1, 1].")
]
InitImageOpt = Annotated[
    Path | None,
    typer.Option(
        help="Edit this image instead of sampling from noise: img2img (--strength), inpainting (--mask), "
        "outpainting (--pad). The output has its size (sides: multiples of f x the UNet's downsampling)."
    ),
]
StrengthOpt = Annotated[
    float | None,
    typer.Option(
        help="How much of --init-image to redo, 0..1: the sampler starts at its first timestep <= strength x T "
        "(0: the autoencoder's reconstruction; 1: plain sampling). Default 0.75, or 1 with --mask or --pad."
    ),
]
MaskOpt = Annotated[
    Path | None,
    typer.Option(
        help="Inpainting: an image the size of --init-image, white (>= 50 %) = repaint. Outside it (beyond a "
        "feather of f pixels) the output keeps the init image's pixels exactly."
    ),
]
PadOpt = Annotated[
    str | None,
    typer.Option(
        metavar="L,R,T,B",
        help="Outpainting: grow the canvas of --init-image by these pixels (multiples of f) left, right, top, "
        "bottom and paint the new border.",
    ),
]
BlendOpt = Annotated[
    bool | None,
    typer.Option(
        "--blend/--no-blend",
        help="Inpainting by latent blending: keep the latent outside the mask on the init image's at every step "
        "(default: on, off for an inpainting model that reads the mask itself).",
    ),
]
LoraOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--lora",
        metavar="FILE[:SCALE]",
        help="A LoRA adapter (train-lora, diffusers/peft or kohya layout) at this scale (default 1), repeatable: "
        "several adapters add.",
    ),
]
HeightOpt = Annotated[
    int | None,
    typer.Option(
        help="Image height in pixels (default: the trained size; with --init-image: resize it to this). A multiple "
        "of f x the UNet's downsampling."
    ),
]
WidthOpt = Annotated[int | None, typer.Option(help="Image width in pixels; as --height.")]


def _grid(images: torch.Tensor) -> torch.Tensor:
    rows, cols = grid_shape(images.shape[0])
    pad = rows * cols - images.shape[0]
    x = torch.nn.functional.pad(images, (1, 1, 1, 1), value=1.0)
    if pad:
        x = torch.cat([x, torch.ones((pad, *x.shape[1:]))])
    x = x.reshape(rows, cols, *x.shape[1:]).permute(2, 0, 3, 1, 4)  # (3, rows, H, cols, W)
    return x.reshape(x.shape[0], rows * x.shape[2], cols * x.shape[4])


def _load(ckpt: Path | None, weights: str, device: torch.device | None = None, loras: list[str] | None = None) -> Any:
    """The LDM checkpoint on ``device`` with its ``--lora`` adapters; by default the built-in
    builtin:shapes model, named on stderr."""
    if ckpt is None:
        from ldmctl.models import SHIPPED, shipped_model

        ckpt = shipped_model("shapes")
        err_console.print(f"built-in model: {SHIPPED['shapes'].about}")
    model = load_ldm(ckpt, weights=weights, device=device)
    if loras:
        from ldmctl.lora.merge import apply_loras

        apply_loras(model, loras, ckpt)
        model.to(next(model.unet.parameters()).device)  # the adapters join the model's device
    return model


def _save(images: torch.Tensor, out: Path, out_dir: Path | None, save_tensor: Path | None) -> None:
    """The grid PNG; one PNG per sample in ``out_dir`` and the tensor, when asked for."""
    atomic_write(out, lambda tmp: to_uint8_image(_grid(images)).save(tmp, format="PNG"))
    if out_dir is not None:
        for i, img in enumerate(images):
            atomic_write(out_dir / f"{i:05d}.png", lambda tmp, im=img: to_uint8_image(im).save(tmp, format="PNG"))
    if save_tensor is not None:
        atomic_write(save_tensor, lambda tmp: torch.save(images.clone(), tmp))


def _edit(model: Any, p: Mapping[str, Any]) -> Edit | None:
    """The edit of ``--init-image`` (None: sampling from noise), from the command's option values."""
    if p["init_image"] is None:
        needs_image = getattr(getattr(model, "task", None), "editing_inputs", None)
        if needs_image is not None and not p["input_"]:  # --input may give its image and mask instead
            needs_image(None, None)  # an inpainting model: an error naming --init-image and --mask
        return None
    edits = {k: p[k] for k in ("mask", "pad", "height", "width", "strength", "blend")}
    return prepare_edit(model, p["init_image"], **edits)


def _generate(model: Any, fn: Any, conditions: dict, scale: float, edit: Edit | None, p: Mapping[str, Any]) -> Any:
    """All samples as one (N, 3, H, W) tensor, with a progress bar of the sample-steps that run."""
    n, steps = p["n"], p["steps"]
    hw = None if edit is not None else latent_grid(model, p["height"], p["width"])
    runs = steps if edit is None else edit.steps_run(fn, model.schedule.num_timesteps, steps)
    with step_progress(n * runs, description=f"sample {p['sampler']}") as (progress, task):
        chunks = generate(
            model,
            fn,
            n,
            steps=steps,
            eta=p["eta"],
            seed=p["seed"],
            conditions=conditions,
            guidance=scale,
            batch_size=p["batch_size"],
            negative_prompt=p["negative_prompt"],
            on_progress=lambda done: progress.update(task, completed=done),
            precision=p["precision"],
            latent_hw=hw,
            edit=edit,
        )
        return torch.cat([x for x, _ in chunks])


def command(
    ctx: typer.Context,
    ckpt: CheckpointArg = None,
    n: NOpt = 16,
    sampler: SamplerOpt = "ddim",
    steps: StepsOpt = 50,
    eta: EtaOpt = 0.0,
    seed: SeedOpt = 0,
    prompt: PromptOpt = None,
    negative_prompt: NegativePromptOpt = None,
    label: LabelOpt = None,
    input_: InputOpt = None,
    guidance: GuidanceOpt = None,
    batch_size: UNetBatchOpt = 64,
    weights: WeightsOpt = "ema",
    lora: LoraOpt = None,
    init_image: InitImageOpt = None,
    strength: StrengthOpt = None,
    mask: MaskOpt = None,
    pad: PadOpt = None,
    blend: BlendOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    out: OutFileOpt = Path("samples.png"),
    out_dir: OutDirOpt = None,
    save_tensor: SaveTensorOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Sample images from a latent diffusion checkpoint (or edit --init-image): a grid, optionally one PNG each."""
    check_options(n, steps, eta, batch_size, guidance)
    check_edit_options(init_image, mask, pad, strength, blend)
    dev = runtime(device, precision)
    inputs = parse_pairs(input_, caption=prompt, label=label)
    fn = get_sampler(sampler)
    for target in [out] + ([save_tensor] if save_tensor else []):
        check_writable(target)  # before the long part, not after it
    model = _load(ckpt, weights, dev, lora)
    edit = _edit(model, ctx.params)
    conditions = sampling_conditions(model, n, inputs, defaults=edit.inputs if edit is not None else None)
    if out_dir is not None:
        ensure_folder(out_dir)
    scale = default_guidance(conditions, guidance)
    images = _generate(model, fn, conditions, scale, edit, ctx.params)
    _save(images, out, out_dir, save_tensor)
    about = f", guidance {scale}" if conditions else ""
    err_console.print(f"{n} samples, {sampler} {steps} steps, seed {seed}{about}, on {dev} in {precision}")
    console.print(str(out), highlight=False)
