"""``ldmctl sample``: draw images from a trained latent diffusion checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from ldmctl.files import atomic_write, check_writable, ensure_folder
from ldmctl.cli._console import (
    console,
    err_console,
    grid_shape,
    step_progress,
    to_uint8_image,
)
from ldmctl.cli._vocab import Sampler, Weights
from ldmctl.samplers import get_sampler
from ldmctl.diffusion.io import load_ldm
from ldmctl.sampling import check_options, default_guidance, generate, parse_pairs, sampling_conditions

INPUT_HELP = ("An input of the model's conditioners as KEY=VALUE, repeatable; several values of one key are cycled "
              "over the samples (e.g. --input label=3, --input cond_image=lr.png; `ldmctl plugins` lists the keys).")


def _grid(images: torch.Tensor) -> torch.Tensor:
    rows, cols = grid_shape(images.shape[0])
    pad = rows * cols - images.shape[0]
    x = torch.nn.functional.pad(images, (1, 1, 1, 1), value=1.0)
    if pad:
        x = torch.cat([x, torch.ones((pad, *x.shape[1:]))])
    x = x.reshape(rows, cols, *x.shape[1:]).permute(2, 0, 3, 1, 4)  # (3, rows, H, cols, W)
    return x.reshape(x.shape[0], rows * x.shape[2], cols * x.shape[4])


def command(
    ckpt: Annotated[Path | None, typer.Argument(help="LDM checkpoint (.safetensors from train-ldm or export); default: the built-in builtin:shapes text-to-image model.")] = None,
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 16,
    sampler: Annotated[Sampler, typer.Option(help="dpmpp: DPM-Solver++ 2M.")] = "ddim",
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 50,
    eta: Annotated[float, typer.Option(help="DDIM stochasticity (0: deterministic).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise and of every random draw.")] = 0,
    prompt: Annotated[list[str] | None, typer.Option(help="Prompt(s) for text-conditional models, repeatable; cycled over the samples (= --input caption=...).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Prompt for the unconditional branch of guidance (default: the empty prompt).")] = None,
    label: Annotated[list[int] | None, typer.Option(help="Class label(s) for class-conditional models, repeatable; cycled over the samples (default: all classes in turn; = --input label=...).")] = None,
    input_: Annotated[list[str] | None, typer.Option("--input", help=INPUT_HELP)] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (1 = none; default 3 for conditional models).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per UNet batch.")] = 64,
    weights: Annotated[Weights, typer.Option(help="The EMA or the raw UNet weights.")] = "ema",
    out: Annotated[Path, typer.Option("--out-file", "-o", "--out", help="Grid PNG of all samples.")] = Path("samples.png"),
    out_dir: Annotated[Path | None, typer.Option(help="Also write each sample as its own PNG in this folder.")] = None,
    save_tensor: Annotated[Path | None, typer.Option(help="Also save the samples as a .pt tensor (N, 3, H, W) in [-1, 1].")] = None,
) -> None:
    """Sample images from a latent diffusion checkpoint: a grid, and optionally one PNG each."""
    check_options(n, steps, eta, batch_size, guidance)
    inputs = parse_pairs(input_, caption=prompt, label=label)
    fn = get_sampler(sampler)
    for target in [out] + ([save_tensor] if save_tensor else []):
        check_writable(target)  # before the long part, not after it
    if ckpt is None:
        from ldmctl.models import SHIPPED, shipped_model

        ckpt = shipped_model("shapes")
        err_console.print(f"built-in model: {SHIPPED['shapes'].about}")
    model = load_ldm(ckpt, weights=weights)
    conditions = sampling_conditions(model, n, inputs)
    if out_dir is not None:
        ensure_folder(out_dir)
    scale = default_guidance(conditions, guidance)
    with step_progress(n * steps, description=f"sample {sampler}") as (progress, task):
        chunks = [images for images, _ in generate(
            model, fn, n, steps=steps, eta=eta, seed=seed, conditions=conditions, guidance=scale,
            batch_size=batch_size, negative_prompt=negative_prompt,
            on_progress=lambda done: progress.update(task, completed=done))]
    images = torch.cat(chunks)
    atomic_write(out, lambda tmp: to_uint8_image(_grid(images)).save(tmp, format="PNG"))
    if out_dir is not None:
        for i, img in enumerate(images):
            atomic_write(out_dir / f"{i:05d}.png", lambda tmp, im=img: to_uint8_image(im).save(tmp, format="PNG"))
    if save_tensor is not None:
        atomic_write(save_tensor, lambda tmp: torch.save(images.clone(), tmp))
    err_console.print(f"{n} samples, {sampler} {steps} steps, seed {seed}" + (f", guidance {scale}" if conditions else ""))
    console.print(str(out), highlight=False)
