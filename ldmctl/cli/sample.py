"""``ldmctl sample``: draw images from a trained latent diffusion checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import torch
import typer

from ldmctl.samplers.guidance import cfg_model_fn
from ldmctl.files import atomic_write, check_writable, ensure_folder
from ldmctl.cli._console import (
    console,
    err_console,
    grid_shape,
    step_progress,
    to_uint8_image,
)
from ldmctl.errors import ConfigError
from ldmctl.samplers import get_sampler
from ldmctl.diffusion.io import load_ldm


def check_options(n: int, steps: int, eta: float, batch_size: int, guidance: float | None) -> None:
    """Refuse sampler options that cannot work, before any long step (shared with ``eval``)."""
    if n < 1 or steps < 1 or batch_size < 1:
        raise ConfigError("--n, --steps and --batch-size must be positive")
    if not (math.isfinite(eta) and eta >= 0):
        raise ConfigError(f"--eta must be a finite number >= 0, got {eta}")
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise ConfigError(f"--guidance must be a finite number >= 0, got {guidance}")


def sampling_conditions(model, n: int, labels: list[int] | None, prompts: list[str] | None = None) -> dict:
    """The batch entries the model's conditioners read, for ``n`` samples (empty if unconditional)."""
    keys = {c.input_key: c for c in model.conditioners.items}
    out: dict = {}
    for key, c in keys.items():
        if key == "label":
            classes = labels or list(range(c.config.num_classes))
            out[key] = torch.tensor([classes[i % len(classes)] for i in range(n)])
        elif key == "caption":
            if not prompts:
                raise ConfigError("this model is text-conditional: give --prompt \"...\"")
            out[key] = [prompts[i % len(prompts)] for i in range(n)]
        else:
            raise ConfigError(f"this model's {c.name!r} conditioner reads {key!r}, which `sample` cannot provide yet")
    if labels and "label" not in out:
        raise ConfigError("--label was given but this model is not class-conditional")
    if prompts and "caption" not in out:
        raise ConfigError("--prompt was given but this model is not text-conditional")
    return out


def generate(model, sampler_fn, n: int, *, steps: int, eta: float = 0.0, seed: int = 0,
             conditions: dict | None = None, guidance: float = 1.0, batch_size: int = 64,
             negative_prompt: str | None = None,
             on_progress: Callable[[int], None] | None = None) -> Iterator[tuple[torch.Tensor, dict]]:
    """Yield ``(images (B, 3, H, W) in [-1, 1], that batch's conditions)`` for ``n`` samples.

    One generator seeded with ``seed`` draws every batch in turn, so the samples depend on
    ``seed`` and ``batch_size`` only. ``on_progress(done)`` counts sample-steps (of ``n * steps``).
    """
    conditions = conditions or {}
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch_size):
        done, size = start * steps, min(batch_size, n - start)
        batch = {k: v[start:start + size] for k, v in conditions.items()}
        model_fn = None
        if conditions:
            cond = model.cond(batch)
            negative = {"caption": [negative_prompt] * size} if negative_prompt is not None else None
            model_fn = cfg_model_fn(model.unet, cond, model.conditioners.null(size, like=cond, negative=negative), guidance)
        callback = None if on_progress is None else (
            lambda i, total, z, d=done: on_progress(d + (i + 1) * z.shape[0]))
        with torch.no_grad():
            z = model.sample_latents(sampler_fn, size, steps=steps, eta=eta, generator=g, model_fn=model_fn,
                                     callback=callback)
            images = model.decode(z)
        yield images, batch


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
    sampler: Annotated[str, typer.Option(help="ddim, plms, ddpm or dpmpp (DPM-Solver++ 2M).")] = "ddim",
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 50,
    eta: Annotated[float, typer.Option(help="DDIM stochasticity (0: deterministic).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise and of every random draw.")] = 0,
    prompt: Annotated[list[str] | None, typer.Option(help="Prompt(s) for text-conditional models, repeatable; cycled over the samples.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Prompt for the unconditional branch of guidance (default: the empty prompt).")] = None,
    label: Annotated[list[int] | None, typer.Option(help="Class label(s) for class-conditional models, repeatable; cycled over the samples (default: all classes in turn).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (1 = none; default 3 for conditional models).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per UNet batch.")] = 64,
    weights: Annotated[str, typer.Option(help="ema (default) or raw UNet weights.")] = "ema",
    out: Annotated[Path, typer.Option(help="Grid PNG of all samples.")] = Path("samples.png"),
    out_dir: Annotated[Path | None, typer.Option(help="Also write each sample as its own PNG here.")] = None,
    save_tensor: Annotated[Path | None, typer.Option(help="Also save the samples as a .pt tensor (N, 3, H, W) in [-1, 1].")] = None,
) -> None:
    """Sample images from a latent diffusion checkpoint: a grid, and optionally one PNG each."""
    check_options(n, steps, eta, batch_size, guidance)
    fn = get_sampler(sampler)
    for target in [out] + ([save_tensor] if save_tensor else []):
        check_writable(target)  # before the long part, not after it
    if ckpt is None:
        from ldmctl.models import SHIPPED, shipped_model

        ckpt = shipped_model("shapes")
        err_console.print(f"built-in model: {SHIPPED['shapes'].about}")
    model = load_ldm(ckpt, weights=weights)
    conditions = sampling_conditions(model, n, label, prompt)
    if out_dir is not None:
        ensure_folder(out_dir)
    scale = guidance if guidance is not None else (3.0 if conditions else 1.0)
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
