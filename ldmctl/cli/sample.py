"""``ldmctl sample``: draw images from a trained latent diffusion checkpoint, or edit an image with it
(img2img, inpainting, outpainting: :mod:`ldmctl.editing`, docs/editing.md)."""

from __future__ import annotations

import re
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
    OverwriteOpt,
    PrecisionOpt,
    SamplerOpt,
    StepsOpt,
    UNetBatchOpt,
    WeightsOpt,
    runtime,
)
from ldmctl.device import inference_weights_dtype
from ldmctl.diffusion.io import load_ldm
from ldmctl.editing import Edit, check_edit_options, latent_grid, prepare_edit
from ldmctl.errors import ConfigError
from ldmctl.files import atomic_write, check_output, ensure_folder
from ldmctl.samplers import get_sampler
from ldmctl.sampling import check_expert, check_options, default_guidance, generate, parse_pairs, sampling_conditions

GRID_BYTES = 256 << 20  # the grid PNG holds the first samples that fit this (float32); --out-dir gets all
TENSOR_BYTES = 2 << 30  # --save-tensor holds every sample in memory: at most this much

CheckpointArg = Annotated[
    Path | None,
    typer.Argument(
        help="LDM checkpoint (.safetensors from train-ldm or export); default: the built-in builtin:shapes "
        "text-to-image model."
    ),
]
ExpertOpt = Annotated[
    str | None,
    typer.Option(
        help="High-noise expert: a second LDM checkpoint (or builtin:NAME) on the same autoencoder, schedule and "
        "prediction that denoises the steps at timesteps >= --expert-from; the model does the rest (eDiff-I's "
        "expert denoisers). Default: none, except builtin:shapes-layout with the built-in shapes model; "
        "'none' turns it off."
    ),
]
ExpertFromOpt = Annotated[
    int, typer.Option(help="First timestep (of T) the --expert denoises; below it the model does.")
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
OutDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Also write each sample as its own PNG in this folder, batch by batch (needed when the grid cannot "
        "hold --n samples: it keeps the first 256 MiB of them)."
    ),
]
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


def _load(ckpt: Path | None, weights: str, device: torch.device, loras: list[str] | None, precision: str) -> Any:
    """The LDM checkpoint on ``device`` with its ``--lora`` adapters (its UNet weights stored in
    bf16 for ``--precision bf16`` on the CPU); by default the built-in builtin:shapes model, named on stderr."""
    if ckpt is None:
        from ldmctl.models import SHIPPED, shipped_model

        ckpt = shipped_model("shapes")
        err_console.print(f"built-in model: {SHIPPED['shapes'].about}")
    model = load_ldm(ckpt, weights=weights, device=device, unet_dtype=inference_weights_dtype(precision, device))
    if loras:
        from ldmctl.lora.merge import apply_loras

        apply_loras(model, loras, ckpt)
        model.to(next(model.unet.parameters()).device)  # the adapters join the model's device
    return model


def _save_grid(images: torch.Tensor, out: Path, save_tensor: Path | None) -> None:
    """The grid PNG of the samples kept and, when asked for, the tensor of all samples."""
    atomic_write(out, lambda tmp: to_uint8_image(_grid(images)).save(tmp, format="PNG"))
    if save_tensor is not None:
        atomic_write(save_tensor, lambda tmp: torch.save(images.clone(), tmp))


def _writer(out_dir: Path | None) -> Any:
    """``write(first_index, images)``: each sample of a batch as its own PNG in ``out_dir``, as the
    batch is made (nothing without ``out_dir``)."""

    def write(first: int, images: torch.Tensor) -> None:
        for i, img in enumerate(images, start=first):
            atomic_write(out_dir / f"{i:05d}.png", lambda tmp, im=img: to_uint8_image(im).save(tmp, format="PNG"))

    return write if out_dir is not None else (lambda first, images: None)


def _check_outputs(p: Mapping[str, Any]) -> None:
    """Refuse, before the model loads, outputs that would destroy an input or cannot be written."""
    inputs = [p["ckpt"], p["init_image"], p["mask"]]
    overwrite = p["overwrite"]
    check_output(p["out"], inputs=inputs, overwrite=overwrite, suffixes={".png"}, option="--out-file")
    if p["save_tensor"] is not None:
        check_output(p["save_tensor"], inputs=inputs, overwrite=overwrite, suffixes={".pt"}, option="--save-tensor")
    if p["out_dir"] is not None:
        taken = [i for i in inputs if i is not None and Path(i).resolve().parent == Path(p["out_dir"]).resolve()]
        if any(re.fullmatch(r"\d{5,}\.png", Path(i).name) for i in taken):
            raise ConfigError(f"--out-dir {str(p['out_dir'])!r}: a sample would overwrite one of its inputs")


def _edit(model: Any, p: Mapping[str, Any]) -> Edit | None:
    """The edit of ``--init-image`` (None: sampling from noise), from the command's option values."""
    if p["init_image"] is None:
        needs_image = getattr(getattr(model, "task", None), "editing_inputs", None)
        if needs_image is not None and not p["input_"]:  # --input may give its image and mask instead
            needs_image(None, None)  # an inpainting model: an error naming --init-image and --mask
        return None
    edits = {k: p[k] for k in ("mask", "pad", "height", "width", "strength", "blend")}
    return prepare_edit(model, p["init_image"], **edits)


def _generate(
    model: Any, fn: Any, conditions: dict, scale: float, edit: Edit | None, p: Mapping[str, Any], write: Any
) -> Any:
    """Make the samples batch by batch with a progress bar, handing each batch to ``write(first, x)``
    as it comes; return only the samples :func:`_kept` allows, so memory does not grow with --n."""
    n, steps = p["n"], p["steps"]
    hw = None if edit is not None else latent_grid(model, p["height"], p["width"])
    runs = steps if edit is None else edit.steps_run(fn, model.schedule.num_timesteps, steps)
    kept, done = [], 0
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
            expert=_expert(model, conditions, p),
        )
        keep = 0
        for x, _ in chunks:
            keep = keep or _kept(n, x[0].numel() * x.element_size(), p)  # the first batch gives the size
            write(done, x)
            if done < keep:
                kept.append(x[: keep - done])
            done += x.shape[0]
    return torch.cat(kept)


def _expert(model: Any, conditions: Mapping[str, Any], p: Mapping[str, Any]) -> tuple[Any, int] | None:
    """``(expert LDM, first timestep)`` of ``--expert`` on the model's device, checked; None without it
    or with ``--expert none``. The built-in shapes model (no checkpoint given) comes with its shipped
    layout expert unless ``--expert none``."""
    name = "builtin:shapes-layout" if p["expert"] is None and p["ckpt"] is None and conditions else p["expert"]
    if name is None or name == "none":
        return None
    from ldmctl.models import SHIPPED, resolve_builtin

    device = next(model.unet.parameters()).device
    dtype = inference_weights_dtype(p["precision"], device)  # as the model's own UNet (bf16 on the CPU)
    expert = load_ldm(resolve_builtin(name), weights=p["weights"], device=device, unet_dtype=dtype)
    if name == "builtin:shapes-layout":
        err_console.print(f"high-noise expert from t {p['expert_from']}: {SHIPPED['shapes-layout'].about}")
    check_expert(model, expert, p["expert_from"], conditions)
    return expert, p["expert_from"]


def _kept(n: int, per_image: int, p: Mapping[str, Any]) -> int:
    """How many samples to keep in memory (the grid's, or every one for ``--save-tensor``); a
    ConfigError, before anything is written, when that would pass its bound or throw samples away."""
    if p["save_tensor"] is not None:
        if n * per_image > TENSOR_BYTES:
            raise ConfigError(
                f"--save-tensor would hold {n} samples, {n * per_image / 2**20:,.0f} MiB, in memory "
                f"(at most {TENSOR_BYTES >> 20} MiB)",
                hint="lower --n, or write each sample as it is made with --out-dir",
            )
        return n
    keep = max(1, GRID_BYTES // per_image)
    if p["out_dir"] is None and n > keep:
        raise ConfigError(
            f"--n {n}: the grid holds the first {keep} samples of this size; the others would be thrown away",
            hint="add --out-dir DIR: each sample is written there as its batch is made, in bounded memory",
        )
    return keep


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
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    expert: ExpertOpt = None,
    expert_from: ExpertFromOpt = 500,
) -> None:
    """Sample images from a latent diffusion checkpoint (or edit --init-image): a grid, optionally one PNG each."""
    check_options(n, steps, eta, batch_size, guidance)
    check_edit_options(init_image, mask, pad, strength, blend)
    dev = runtime(device, precision)
    inputs = parse_pairs(input_, caption=prompt, label=label)
    fn = get_sampler(sampler)
    _check_outputs(ctx.params)  # before the long part, not after it
    model = _load(ckpt, weights, dev, lora, precision)
    edit = _edit(model, ctx.params)
    conditions = sampling_conditions(model, n, inputs, defaults=edit.inputs if edit is not None else None)
    if out_dir is not None:
        ensure_folder(out_dir)
    scale = default_guidance(conditions, guidance)
    images = _generate(model, fn, conditions, scale, edit, ctx.params, _writer(out_dir))
    _save_grid(images, out, save_tensor)
    about = f", guidance {scale}" if conditions else ""
    err_console.print(f"{n} samples, {sampler} {steps} steps, seed {seed}{about}, on {dev} in {precision}")
    console.print(str(out), highlight=False)
