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

:func:`load_ldm` builds the UNet and the autoencoder uninitialised (:func:`~ldmctl.checkpoint.empty_module`)
and copies the file's tensors in one at a time from the open file, so a Stable Diffusion-size model
(1 B parameters) loads in about its own memory, without a random initialisation; the tensors of the
weights not asked for (the raw UNet when sampling with EMA) are never read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import Checkpoint, empty_module, load_state_lazily, open_checkpoint, save_checkpoint
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.config import AutoencoderConfig, LDMConfig, from_dict, to_dict
from ldmctl.device import lower_weights, resolve_device
from ldmctl.diffusion.ldm import LatentDiffusion, latent_spec
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.text.encoders import legacy_keep_tokens
from ldmctl.unet import UNet

log = logging.getLogger(__name__)

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


def load_ldm(
    path: str | Path,
    *,
    weights: str = "ema",
    device: torch.device | str | None = None,
    unet_dtype: torch.dtype | None = None,
) -> LatentDiffusion:
    """Rebuild a LatentDiffusion from one checkpoint; ``weights`` = ema (default) or raw UNet weights.
    The model is on ``device`` (a ``--device`` spelling or a torch.device; default: the CPU). With
    ``unet_dtype`` (sampling only: :func:`~ldmctl.device.inference_weights_dtype`), the UNet's linear
    and convolution weights are stored in it, read from the file straight into that dtype."""
    if weights not in ("ema", "raw"):
        raise ConfigError(f"--weights {weights!r}: choose ema or raw")
    with open_checkpoint(path, expect_kind="ldm") as ckpt:
        cfg, ae_cfg = stored_configs(ckpt)
        where = str(ckpt.path)
        groups = _prefix_counts(ckpt.tensors, where)
        if weights == "raw" and not groups["unet"] and groups["ema"]:
            raise CheckpointError(
                f"{where!r} is an exported checkpoint: it holds the EMA weights only",
                hint="use --weights ema, or the training checkpoint for the raw weights",
            )
        ae = empty_module(lambda: build_autoencoder(ae_cfg))
        load_state_lazily(ae, ckpt.tensors, f"{where} (autoencoder)", prefix="ae.")
        unet = empty_module(lambda: UNet(cfg.unet))
        if unet_dtype is not None:
            lower_weights(unet, unet_dtype)
        unet_prefix = "ema." if weights == "ema" else "unet."
        load_state_lazily(unet, ckpt.tensors, f"{where} ({weights} UNet)", prefix=unet_prefix)
        packages = {name: p.get("package", "") for name, p in ckpt.config.get("plugins", {}).items()}
        conds = ConditionerSet(cfg.conditioners, latent_spec(cfg, ae), packages)  # built normally: small
        cond_prefix = "ema_cond." if weights == "ema" and groups["ema_cond"] else "cond."
        load_state_lazily(conds, ckpt.tensors, f"{where} (conditioners)", prefix=cond_prefix)
    model = LatentDiffusion(cfg, ae, unet, conds).eval()
    return model if device is None else model.to(resolve_device(device) if isinstance(device, str) else device)


def stored_configs(ckpt: Checkpoint) -> tuple[LDMConfig, AutoencoderConfig]:
    """The model and autoencoder configs a checkpoint stores, as this version builds them."""
    try:
        cfg, ae_cfg = from_dict(LDMConfig, ckpt.config["ldm"]), from_dict(AutoencoderConfig, ckpt.config["autoencoder"])
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{str(ckpt.path)!r}: stored config is invalid: {err}") from None
    return _legacy_vocab(cfg, ckpt), ae_cfg


def _legacy_vocab(cfg: LDMConfig, ckpt: Checkpoint) -> LDMConfig:
    """Text encoders trained on a vocab.txt with the five-row vocabulary of transformers 5
    (:func:`~ldmctl.text.encoders.legacy_keep_tokens`) load as they were trained, with a warning."""
    specs, tensors = list(cfg.conditioners), ckpt.tensors
    shape = getattr(tensors, "shape", lambda k: tuple(tensors[k].shape))  # LazyTensors reads the header only
    for i, spec in enumerate(specs):
        keys = [k for k in (f"{p}items.{i}.text.model.tokens.weight" for p in ("cond.", "ema_cond.")) if k in tensors]
        vocab = spec.options.get("vocab")
        if not vocab or spec.options.get("keep_tokens") or not keys:
            continue
        keep = legacy_keep_tokens(vocab, shape(keys[0])[0])
        if keep is not None:
            log.warning(
                "%s: its text encoder was trained when ldmctl read %s as five special tokens (every word "
                "[UNK], a transformers 5 change); it reads prompts that way still: retrain it for words",
                ckpt.path,
                vocab,
            )
            specs[i] = replace(spec, options={**spec.options, "keep_tokens": list(keep)})
    return replace(cfg, conditioners=tuple(specs))


def _prefix_counts(tensors: Mapping[str, Tensor], where: str) -> dict[str, int]:
    """How many tensors each group holds (every group present), refusing keys of no group; reads no tensor."""
    counts = dict.fromkeys(PREFIXES, 0)
    for key in tensors:
        prefix = key.partition(".")[0]
        if prefix not in counts:
            raise CheckpointError(f"{where!r}: unexpected tensor {key!r}", hint="the file may have been tampered with")
        counts[prefix] += 1
    return counts


def split_tensors(tensors: Mapping[str, Tensor], where: str) -> dict[str, dict[str, Tensor]]:
    """Group a checkpoint's tensors by prefix (every group present, maybe empty)."""
    parts: dict[str, dict[str, Tensor]] = {p: {} for p in PREFIXES}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise CheckpointError(f"{where!r}: unexpected tensor {key!r}", hint="the file may have been tampered with")
        parts[prefix][rest] = value
    return parts


__all__ = ["PREFIXES", "load_ldm", "save_ldm", "split_tensors", "stored_configs", "write_ldm"]
