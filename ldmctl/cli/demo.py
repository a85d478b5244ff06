"""``ldmctl demo``: the whole pipeline in a few minutes on a laptop CPU.

Trains a small autoencoder and a text-conditional LDM (cross-attention on a jointly trained
BERT-style encoder) on ``builtin:shapes`` at 32 x 32, then samples a grid for a few prompts,
scores it with the shapes checker and writes ``OUT/demo.png``. The configs are the recipes in
``ldmctl/recipes/demo-*.toml``, so every step can be rerun and extended with the normal commands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from ldmctl.cli._console import console, err_console, format_logs, save_grid, step_progress
from ldmctl.cli._options import DeviceOpt, runtime
from ldmctl.cli._vocab import AEPrecision
from ldmctl.files import check_writable
from ldmctl.train.configure import ae_config, ldm_config
from ldmctl.train.loop import Callbacks

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PROMPTS = (
    "a red circle",
    "a blue square to the left of a yellow triangle",
    "a green triangle above a purple circle",
    "a cyan square below a red square",
)


def _callbacks(progress, task, keys):
    return Callbacks(
        on_step=lambda step, logs: progress.update(task, completed=step, stats=format_logs(logs, keys)),
        on_message=lambda text: progress.console.print(text),
    )


def _reconstruction_match(ae_path: Path, size: int, seed: int, device: torch.device) -> float:
    """Share of fresh builtin:shapes images (a seed training never uses) the checker still
    accepts after the autoencoder: the ceiling of what the LDM on its latents can reach."""
    from ldmctl.autoencoder.apply import reconstruct
    from ldmctl.checkpoint import load_autoencoder
    from ldmctl.config import DataConfig
    from ldmctl.data.shapes import ShapesDataset
    from ldmctl.eval.shapes_check import score

    ds = ShapesDataset(DataConfig(source="builtin:shapes", size=size), seed=seed + 54321, length=96)
    items = [ds[i] for i in range(len(ds))]
    with torch.no_grad():
        rec = reconstruct(load_autoencoder(ae_path).to(device), torch.stack([it["image"] for it in items]))
    return score(rec, [it["caption"] for it in items])["match"]


OutDirOpt = Annotated[Path, typer.Option("--out-dir", "--out", help="Run folder for the two models and the grid.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of both trainings and of the samples.")]
SamplesPerPromptOpt = Annotated[int, typer.Option(help="Samples per prompt in the grid.")]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Also write the figures (shapes-checker matches, time) as JSON here.")
]
DemoPrecisionOpt = Annotated[
    AEPrecision | None,
    typer.Option(help="Training precision of both models (default: the recipes' bf16); the samples are drawn in fp32."),
]


def _train(out: Path, seed: int, device: torch.device, precision: str | None) -> tuple[Path, float, str]:
    """Train the autoencoder, then the text-to-image LDM on its latents, on ``device``: the LDM
    checkpoint, the share of shapes images the checker still accepts after the autoencoder, and
    the training precision."""
    from ldmctl.train.ae import train_ae
    from ldmctl.train.ldm import train_ldm

    seed_flags = {"train": {"seed": seed, "device": str(device), "precision": precision}}
    ae_cfg = ae_config("small", RECIPES / "demo-ae.toml", seed_flags, [])
    with step_progress(ae_cfg.train.max_steps, description="1/2 autoencoder") as (progress, task):
        train_ae(ae_cfg, out / "ae", callbacks=_callbacks(progress, task, ("rec", "steps_per_s")))
    recon = _reconstruction_match(out / "ae" / "ae.safetensors", ae_cfg.data.size, seed, device)
    err_console.print(
        f"autoencoder: {100 * recon:.0f} % of 96 fresh shapes images still match their caption "
        "after encoding and decoding"
    )
    ldm_cfg = ldm_config("small", RECIPES / "demo-ldm.toml", seed_flags, [])
    with step_progress(ldm_cfg.train.max_steps, description="2/2 text-to-image LDM") as (progress, task):
        callbacks = _callbacks(progress, task, ("loss", "steps_per_s"))
        summary = train_ldm(ldm_cfg, out / "ae" / "ae.safetensors", out / "ldm", callbacks=callbacks)
    return Path(summary["checkpoint"]), recon, ldm_cfg.train.precision


def _draw(ckpt: Path, prompts: list[str], seed: int, device: torch.device) -> torch.Tensor:
    """One sample per prompt (DPM-Solver++, 20 steps, guidance 3, fp32), all in one batch, on ``device``."""
    from ldmctl.diffusion.io import load_ldm
    from ldmctl.samplers import dpmpp
    from ldmctl.sampling import generate, sampling_conditions

    model = load_ldm(ckpt, device=device)
    conditions = sampling_conditions(model, len(prompts), {"caption": prompts})
    n = len(prompts)
    chunks = generate(model, dpmpp, n, steps=20, seed=seed, conditions=conditions, guidance=3.0, batch_size=n)
    return torch.cat([x for x, _ in chunks])


def command(
    out: OutDirOpt = Path("runs/demo"),
    seed: SeedOpt = 0,
    samples_per_prompt: SamplesPerPromptOpt = 6,
    json_out: JsonOpt = None,
    device: DeviceOpt = "auto",
    precision: DemoPrecisionOpt = None,
) -> None:
    """Train a tiny text-to-image LDM on builtin:shapes and draw a grid for a few prompts."""
    from ldmctl.eval.report import write_json
    from ldmctl.eval.shapes_check import score

    if json_out is not None:
        check_writable(json_out)  # before the long part, not after it
    dev = runtime(device, precision)
    started = time.time()
    ckpt, recon, train_precision = _train(out, seed, dev, precision)
    prompts = [p for p in PROMPTS for _ in range(samples_per_prompt)]
    images = _draw(ckpt, prompts, seed, dev)
    rows = {p: images[i * samples_per_prompt : (i + 1) * samples_per_prompt] for i, p in enumerate(PROMPTS)}
    grid = save_grid(rows, out / "demo.png", max_cols=samples_per_prompt)
    result = score(images, prompts)
    err_console.print(
        f"demo finished in {time.time() - started:.0f} s; the shapes checker says "
        f"{100 * result['match']:.0f} % of the {len(prompts)} samples match their prompt"
    )
    for p in PROMPTS:
        err_console.print(f"  row: {p}")
    console.print(str(grid), highlight=False)
    if json_out is not None:
        figures = {
            "grid": str(grid),
            "seconds": time.time() - started,
            "reconstruction_match": recon,
            "sample_match": result["match"],
            "samples": len(prompts),
            "seed": seed,
            "device": str(dev),
            "precision": "fp32",  # of the samples
            "train_precision": train_precision,
        }
        write_json(figures, json_out)
        console.print(str(json_out), highlight=False)
