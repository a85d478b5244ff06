"""The options several commands share, declared once: one spelling, one type, one help text.

A command names an option's type and gives its default, ``steps: StepsOpt = 50``, so two
commands that take the same option cannot drift apart (``--eta`` of ``sample``, ``eval`` and
``superres`` is one declaration). Options of a single command are declared the same way at the
top of its own module. ``XxxOpt`` is an option, ``XxxArg`` a positional argument; the values of
the choices (``Sampler``, ``Preset``...) are the ``Literal`` types of :mod:`ldmctl.cli._vocab`.

A command with many options reads them by name from ``ctx.params`` (the values Typer passes to
it) rather than listing each one again: :func:`config_flags` maps options onto the config fields
they set (train-ae, train-ldm), :func:`options_of` fills a dataclass of them (eval).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
import typer

from ldmctl.cli._vocab import Precision, Preset, Sampler, Weights
from ldmctl.device import parse_device, resolve_device, resolve_precision
from ldmctl.errors import ConfigError
from ldmctl.models import resolve_builtin

T = TypeVar("T")


def _device_spelling(text: str) -> str:
    """``--device``'s value checked for spelling (a usage error, as for choices); whether this
    machine has that device is checked when the command starts (:func:`runtime`)."""
    try:
        parse_device(text)
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from None
    return text.strip().lower()


# --- devices: every command that runs a model (training: None keeps the config's train.device) ---
DEVICE_HELP = (
    "auto: a GPU if there is one (CUDA, else Apple MPS), else the CPU; cuda:N: GPU N (under torchrun, cuda is each "
    "process's own GPU)."
)
DeviceOpt = Annotated[
    str | None, typer.Option(parser=_device_spelling, metavar="auto|cpu|cuda[:N]|mps", help=DEVICE_HELP)
]
PrecisionOpt = Annotated[
    Precision | None,
    typer.Option(
        help="fp32, or autocast of the networks to bf16 (CPU or GPU) or fp16 (GPU; training: CUDA, with a gradient "
        "scaler). Samplers and outputs stay float32."
    ),
]


def runtime(device: str | None, precision: str | None) -> torch.device:
    """The torch.device of ``--device``, after checking that ``--precision`` can run on it: both
    before any long step (ConfigError naming the fix: exit 1, no traceback)."""
    dev = resolve_device(device or "auto")
    resolve_precision(precision or "fp32", dev)
    return dev


def training_runtime(device: str, precision: str) -> None:
    """Refuse, before any data is read, a ``train.device`` this machine lacks or a ``train.precision``
    that cannot train there (fp16 needs CUDA); training resolves the device again per process."""
    from ldmctl.train.loop import autocast

    autocast(precision, resolve_device(device, local_rank=int(os.environ.get("LOCAL_RANK", "0"))))


# --- sampling: sample, eval, compare samplers, superres, eval-sr ---
SamplerOpt = Annotated[Sampler, typer.Option(help="dpmpp: DPM-Solver++ 2M.")]
StepsOpt = Annotated[int, typer.Option(help="Sampling steps.")]
EtaOpt = Annotated[float, typer.Option(help="DDIM stochasticity (0: deterministic).")]
GuidanceOpt = Annotated[
    float | None, typer.Option(help="Classifier-free guidance scale (1 = none; default 3 for conditional models).")
]
UNetBatchOpt = Annotated[int, typer.Option(help="Images per UNet batch.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Allow replacing an existing checkpoint file with the output.")
]
WeightsOpt = Annotated[Weights, typer.Option(help="The EMA or the raw UNet weights.")]

# --- reports: every command that prints figures ---
JsonReportOpt = Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")]

# --- generative evaluation: eval, compare ---
RefLimitOpt = Annotated[int, typer.Option(help="Use at most this many reference images, drawn at random (0: all).")]
InceptionOpt = Annotated[
    Path | None, typer.Option(help="FID Inception weights (default: $LDMCTL_INCEPTION, then the torch hub cache).")
]

# --- reconstruction evaluation: eval-ae, eval-sr ---
RECONSTRUCTION_METRICS_HELP = (
    "auto (default: psnr, ssim, and lpips when its weights are on this machine) or psnr, ssim, lpips, "
    "comma-separated or repeated."
)
ReconstructionMetricsOpt = Annotated[list[str] | None, typer.Option("--metrics", help=RECONSTRUCTION_METRICS_HELP)]
LimitOpt = Annotated[int, typer.Option(help="Evaluate at most this many images (0: all).")]
LpipsWeightsOpt = Annotated[Path | None, typer.Option(help="LPIPS backbone weights (default: torch hub cache).")]

# --- autoencoders: reconstruct, eval-ae (tiles in pixels of the image) ---
AECheckpointArg = Annotated[
    Path,
    typer.Argument(
        help="Autoencoder checkpoint (.safetensors from train-ae), or builtin:photo-f4 (the shipped photo autoencoder).",
        callback=resolve_builtin,
    ),
]
AE_TILE_HELP = (
    "Tile side in pixels: images with a side over it run in overlapping tiles (a multiple of f; 0: always whole)."
)
AETilePxOpt = Annotated[int, typer.Option("--tile-px", "--tile", help=AE_TILE_HELP)]
AEOverlapPxOpt = Annotated[
    int, typer.Option("--overlap-px", "--overlap", help="Overlap of neighbouring tiles in pixels.")
]

# --- super-resolution: superres, eval-sr (tiles in pixels of the upscaled image) ---
SRModelOpt = Annotated[Path | None, typer.Option(help="LDM-SR checkpoint (default: the built-in x4 photo model).")]
SRStepsOpt = Annotated[
    int,
    typer.Option(
        help="Sampling steps. 1 (default): the posterior mean, the highest PSNR/SSIM; more steps draw sharper, "
        "partly invented detail."
    ),
]
SRSeedOpt = Annotated[int, typer.Option(help="Seed of the initial noise.")]
DetailTransferOpt = Annotated[
    bool,
    typer.Option(
        "--detail-transfer/--no-detail-transfer",
        help="Residual models: output bicubic + D(z) - D(z_bicubic), cancelling the autoencoder's error on the "
        "bicubic content.",
    ),
]
EnsembleOpt = Annotated[
    int,
    typer.Option(
        help="Average 1, 2, 4 or 8 runs on flipped/transposed copies of the input (geometric self-ensemble; that "
        "many times slower)."
    ),
]
BackProjectOpt = Annotated[
    int,
    typer.Option(
        help="Rounds of iterative back-projection on the result (0: off): correct it until, downscaled, it "
        "gives back the input."
    ),
]
SR_TILE_HELP = (
    "Tile side in pixels of the upscaled image, a multiple of f x the UNet's downsampling (default: 64 latent "
    "cells, 128 px for the built-in model). Memory grows with its square."
)
SR_OVERLAP_HELP = (
    "Overlap of neighbouring tiles in pixels of the upscaled image, a multiple of f (default: 16 latent "
    "cells, 32 px for the built-in model)."
)
SRTilePxOpt = Annotated[int | None, typer.Option("--tile-px", help=SR_TILE_HELP)]
SROverlapPxOpt = Annotated[int | None, typer.Option("--overlap-px", help=SR_OVERLAP_HELP)]

# --- training: train-ae, train-ldm (None: the value of the preset or --config) ---
PresetOpt = Annotated[Preset, typer.Option(help="Starting configuration.")]
MaxStepsOpt = Annotated[int | None, typer.Option(help="Total optimisation steps.")]
SaveEveryOpt = Annotated[int | None, typer.Option(help="Steps between checkpoints.")]
ConfigFileOpt = Annotated[Path | None, typer.Option(help="A .toml or .json file of config overrides.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue the run in --out-dir from its last checkpoint.")]


def config_flags(values: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, Any]:
    """The flags of :func:`ldmctl.train.configure.layered` (section -> {field: value}) from the
    values of a command's options; ``fields`` maps an option's parameter name to the dotted config
    field it sets, e.g. ``{"lr": "train.lr", "task": "task"}``. ``None`` (not given) is kept here
    and dropped by ``layered``."""
    flags: dict[str, Any] = {}
    for name, dotted in fields.items():
        *sections, key = dotted.split(".")
        node = flags
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = values[name]
    return flags


def options_of(cls: type[T], params: Mapping[str, Any], **given: Any) -> T:
    """An instance of the dataclass ``cls`` from a command's option values (``ctx.params``): each
    field not in ``given`` takes the value of the option whose parameter has the field's name."""
    return cls(**{f.name: params[f.name] for f in fields(cls) if f.name not in given}, **given)
