"""The LDM file format: one ``.safetensors`` file that rebuilds a :class:`LatentDiffusion` alone.

Tensors are grouped by prefix::

    unet.*       the raw UNet weights (training checkpoints only)
    ema.*        the EMA UNet weights, used for sampling
    ae.*         the frozen first stage (so one file samples)
    cond.*       the conditioners' weights
    ema_cond.*   their EMA (training checkpoints of models with trainable conditioners)

The metadata (:mod:`ldmctl.checkpoint`) has kind ``ldm`` and a config of ``{"ldm": LDMConfig,
"autoencoder": AutoencoderConfig, "plugins": {name: {package, version}}}``, so loading where a
conditioner's plugin is missing names the package to install. :func:`write_ldm` is the one writer
(training checkpoints, ``ldmctl export``), :func:`load_ldm` the one reader of every command.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import load_state, read_checkpoint, save_checkpoint
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.config import AutoencoderConfig, LDMConfig, from_dict, to_dict
from ldmctl.device import resolve_device
from ldmctl.diffusion.ldm import LatentDiffusion, latent_spec
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.unet import UNet

PREFIXES = ("unet", "ema", "ae", "cond", "ema_cond")


def write_ldm(
    path: str | Path,
    parts: Mapping[str, Mapping[str, Tensor]],
    *,
    config: LDMConfig,
    autoencoder: AutoencoderConfig,
    conditioners: ConditionerSet,
    extra: dict[str, Any],
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the tensors of ``parts`` (prefix -> state dict) and the configs; floating-point tensors
    are cast to ``dtype`` when given (exports in fp16; loading casts back to fp32)."""
    tensors: dict[str, Tensor] = {}
    for prefix, state in parts.items():
        if prefix not in PREFIXES:
            raise ValueError(f"unknown LDM tensor group {prefix!r}")
        for k, v in state.items():
            tensors[f"{prefix}.{k}"] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    meta = {"ldm": to_dict(config), "autoencoder": to_dict(autoencoder), "plugins": conditioners.plugins()}
    return save_checkpoint(path, tensors, kind="ldm", config=meta, extra=extra)


def save_ldm(
    model: LatentDiffusion,
    ema: nn.Module | Any,
    path: str | Path,
    *,
    extra: dict[str, Any],
    cond_ema: Any | None = None,
) -> Path:
    """Write a training checkpoint of ``model``: raw and EMA UNet, autoencoder, conditioners (and
    their EMA). ``ema`` / ``cond_ema`` are anything with a ``state_dict()`` of the same keys."""
    parts = {
        "unet": model.unet.state_dict(),
        "ema": ema.state_dict(),
        "ae": model.autoencoder.state_dict(),
        "cond": model.conditioners.state_dict(),
    }
    if cond_ema is not None:
        parts["ema_cond"] = cond_ema.state_dict()
    return write_ldm(
        path,
        parts,
        config=model.config,
        autoencoder=model.autoencoder.config,
        conditioners=model.conditioners,
        extra=extra,
    )


def load_ldm(path: str | Path, *, weights: str = "ema", device: torch.device | str | None = None) -> LatentDiffusion:
    """Rebuild a LatentDiffusion from one checkpoint; ``weights`` = ema (default) or raw UNet weights.
    The model is on ``device`` (a ``--device`` spelling or a torch.device; default: the CPU)."""
    if weights not in ("ema", "raw"):
        raise ConfigError(f"--weights {weights!r}: choose ema or raw")
    ckpt = read_checkpoint(path, expect_kind="ldm")
    try:
        cfg = from_dict(LDMConfig, ckpt.config["ldm"])
        ae_cfg = from_dict(AutoencoderConfig, ckpt.config["autoencoder"])
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{str(ckpt.path)!r}: stored config is invalid: {err}") from None
    parts = split_tensors(ckpt.tensors, str(ckpt.path))
    if weights == "raw" and not parts["unet"] and parts["ema"]:
        raise CheckpointError(
            f"{str(ckpt.path)!r} is an exported checkpoint: it holds the EMA weights only",
            hint="use --weights ema, or the training checkpoint for the raw weights",
        )
    ae = build_autoencoder(ae_cfg)
    load_state(ae, parts["ae"], f"{ckpt.path} (autoencoder)")
    unet = UNet(cfg.unet)
    load_state(unet, parts["ema" if weights == "ema" else "unet"], f"{ckpt.path} ({weights} UNet)")
    packages = {name: p.get("package", "") for name, p in ckpt.config.get("plugins", {}).items()}
    conds = ConditionerSet(cfg.conditioners, latent_spec(cfg, ae), packages)
    use_ema = weights == "ema" and parts["ema_cond"]
    load_state(conds, parts["ema_cond" if use_ema else "cond"], f"{ckpt.path} (conditioners)")
    model = LatentDiffusion(cfg, ae, unet, conds).eval()
    return model if device is None else model.to(resolve_device(device) if isinstance(device, str) else device)


def split_tensors(tensors: Mapping[str, Tensor], where: str) -> dict[str, dict[str, Tensor]]:
    """Group a checkpoint's tensors by prefix (every group present, maybe empty)."""
    parts: dict[str, dict[str, Tensor]] = {p: {} for p in PREFIXES}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise CheckpointError(f"{where!r}: unexpected tensor {key!r}", hint="the file may have been tampered with")
        parts[prefix][rest] = value
    return parts


__all__ = ["PREFIXES", "load_ldm", "save_ldm", "split_tensors", "write_ldm"]
