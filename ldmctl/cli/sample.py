"""``ldmctl sample``: draw images from a trained latent diffusion checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ldmctl.cli._console import console, err_console, grid_shape, step_progress, to_uint8_image
from ldmctl.cli._options import EtaOpt, GuidanceOpt, SamplerOpt, StepsOpt, UNetBatchOpt, WeightsOpt
from ldmctl.diffusion.io import load_ldm
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


def _grid(images: torch.Tensor) -> torch.Tensor:
    rows, cols = grid_shape(images.shape[0])
    pad = rows * cols - images.shape[0]
    x = torch.nn.functional.pad(images, (1, 1, 1, 1), value=1.0)
    if pad:
        x = torch.cat([x, torch.ones((pad, *x.shape[1:]))])
    x = x.reshape(rows, cols, *x.shape[1:]).permute(2, 0, 3, 1, 4)  # (3, rows, H, cols, W)
    return x.reshape(x.shape[0], rows * x.shape[2], cols * x.shape[4])


def _load(ckpt: Path | None, weights: str) -> Any:
    """The LDM checkpoint; by default the built-in builtin:shapes model, named on stderr."""
    if ckpt is None:
        from ldmctl.models import SHIPPED, shipped_model

        ckpt = shipped_model("shapes")
        err_console.print(f"built-in model: {SHIPPED['shapes'].about}")
    return load_ldm(ckpt, weights=weights)


def _save(images: torch.Tensor, out: Path, out_dir: Path | None, save_tensor: Path | None) -> None:
    """The grid PNG; one PNG per sample in ``out_dir`` and the tensor, when asked for."""
    atomic_write(out, lambda tmp: to_uint8_image(_grid(images)).save(tmp, format="PNG"))
    if out_dir is not None:
        for i, img in enumerate(images):
            atomic_write(out_dir / f"{i:05d}.png", lambda tmp, im=img: to_uint8_image(im).save(tmp, format="PNG"))
    if save_tensor is not None:
        atomic_write(save_tensor, lambda tmp: torch.save(images.clone(), tmp))


def command(
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
    out: OutFileOpt = Path("samples.png"),
    out_dir: OutDirOpt = None,
    save_tensor: SaveTensorOpt = None,
) -> None:
    """Sample images from a latent diffusion checkpoint: a grid, and optionally one PNG each."""
    check_options(n, steps, eta, batch_size, guidance)
    inputs = parse_pairs(input_, caption=prompt, label=label)
    fn = get_sampler(sampler)
    for target in [out] + ([save_tensor] if save_tensor else []):
        check_writable(target)  # before the long part, not after it
    model = _load(ckpt, weights)
    conditions = sampling_conditions(model, n, inputs)
    if out_dir is not None:
        ensure_folder(out_dir)
    scale = default_guidance(conditions, guidance)
    with step_progress(n * steps, description=f"sample {sampler}") as (progress, task):
        chunks = generate(
            model,
            fn,
            n,
            steps=steps,
            eta=eta,
            seed=seed,
            conditions=conditions,
            guidance=scale,
            batch_size=batch_size,
            negative_prompt=negative_prompt,
            on_progress=lambda done: progress.update(task, completed=done),
        )
        images = torch.cat([x for x, _ in chunks])
    _save(images, out, out_dir, save_tensor)
    about = f", guidance {scale}" if conditions else ""
    err_console.print(f"{n} samples, {sampler} {steps} steps, seed {seed}{about}")
    console.print(str(out), highlight=False)
