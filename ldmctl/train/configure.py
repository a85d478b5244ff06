"""The one configuration pass of both trainers: preset -> file -> flags -> ``--set`` -> resolve.

    ae_config(preset, file, flags, sets)    the train-ae config the user asked for
    resolve_ae(cfg)                          ... checked (cross-field constraints)
    ldm_config(preset, file, flags, sets)   the train-ldm config the user asked for
    resolve_ldm(cfg, ae, dataset)            ... with everything derived, and its conditioners

Each layer overrides the one before; unknown keys are an error. ``resolve_ldm`` is the one place
that derives values, never written by hand: the latent channels, size and scale factor come from
the autoencoder; each conditioner fills its data-dependent options from the data set
(``Conditioner.configure``), then the conditioners are built **once** and their output widths set
the UNet's ``concat_channels``, ``add_dim``, ``context_dim`` and ``token_dim``; the super-resolution
task adds its conditioner and measures its residual scale, the inpainting task adds its two. The
trainer builds its model with that very :class:`~ldmctl.conditioning.compose.ConditionerSet`.

The dataclasses, presets and override layers are :mod:`ldmctl.config`; this module sits above
the autoencoder, the conditioners and the UNet because resolving needs them.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import check_memory, model_bytes
from ldmctl.conditioning.base import LatentSpec
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.conditioning.registry import get_conditioner
from ldmctl.config import (
    AETrainingConfig,
    ConditionerSpec,
    LDMTrainingConfig,
    TrainConfig,
    from_dict,
    ldm_preset,
    load_file,
    merge,
    parse_set,
    preset,
    to_dict,
)
from ldmctl.errors import ConfigError
from ldmctl.inpaint.task import with_inpaint_task
from ldmctl.superres.task import measure_residual_scale, with_task
from ldmctl.unet import UNet, check_unet_config, downsample_factor

T = TypeVar("T")
TRAIN_COPIES = 4  # weights, gradients and Adam's two moments: the least that training holds
Flags = dict[str, Any]  # section -> {field: value of a flag the user gave, or None}


def ae_config(preset_name: str, config_file: Path | None, flags: Flags, assignments: list[str]) -> AETrainingConfig:
    """The train-ae config: the preset, then the file, the flags and the ``--set`` pairs (see :func:`layered`)."""
    return layered(preset(preset_name), config_file, flags, assignments)


def ldm_config(
    preset_name: str, config_file: Path | None, flags: Flags, assignments: list[str], *, text_encoder: str | None = None
) -> LDMTrainingConfig:
    """The train-ldm config (see :func:`layered`); ``text_encoder`` then sets the ``encoder`` option of
    every text conditioner (``--text-encoder``)."""
    cfg = layered(ldm_preset(preset_name), config_file, flags, assignments)
    return cfg if text_encoder is None else with_text_encoder(cfg, text_encoder)


def layered(cfg: T, config_file: Path | None, flags: Flags, assignments: list[str]) -> T:
    """Apply, in order, on top of ``cfg``: a .toml/.json file, explicit flags, then ``--set`` pairs.

    ``flags`` maps a section (``model``, ``data``, ...) to the values of the flags the user
    actually gave; ``None`` values (flags left out) are dropped.
    """
    if config_file is not None:
        cfg = merge(cfg, load_file(config_file))
    given = _drop_none(flags)
    if given:
        cfg = merge(cfg, given)
    if assignments:
        cfg = merge(cfg, parse_set(assignments))
    return cfg


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Nested dict without None values (flags left out) and without sections left empty; a choice
    flag's enum member becomes its plain value."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value.value if isinstance(value, Enum) else value
    return out


def with_text_encoder(cfg: LDMTrainingConfig, encoder: str) -> LDMTrainingConfig:
    """Set the ``encoder`` option of every conditioner whose Config has one (the text conditioners)."""
    specs, hit = [], False
    for spec in cfg.model.conditioners:
        if "encoder" in {f.name for f in fields(get_conditioner(spec.name).cls.Config)}:
            spec, hit = replace(spec, options={**spec.options, "encoder": encoder}), True
        specs.append(spec)
    if not hit:
        raise ConfigError(
            "--text-encoder needs a text conditioner: add --cond text-crossattn, --cond text-pooled "
            "or --cond text-tokens"
        )
    return replace(cfg, model=replace(cfg.model, conditioners=tuple(specs)))


def resolve_ae(cfg: AETrainingConfig) -> AETrainingConfig:
    """Check the cross-field constraints of a train-ae config; return it unchanged if valid."""
    m, d = cfg.model, cfg.data
    widths = {m.base_channels * k for k in m.channel_mult}
    if any(w % m.norm_groups for w in widths):
        raise ConfigError(f"model.norm_groups={m.norm_groups} must divide every width {sorted(widths)}")
    if d.size % m.downsample_factor:
        raise ConfigError(f"data.size={d.size} is not a multiple of f={m.downsample_factor}")
    check_train(cfg.train)
    check_memory(model_bytes(lambda: build_autoencoder(m)), "training this autoencoder", copies=TRAIN_COPIES)
    check_batch_memory(cfg.train.batch_size, d.size, m.base_channels, "a train-ae batch")
    return cfg


def resolve_ldm(
    cfg: LDMTrainingConfig, ae: nn.Module, dataset: Any, *, measure: bool = True
) -> tuple[LDMTrainingConfig, ConditionerSet]:
    """Derive what the autoencoder, the data and the conditioners fix; validate; return the config
    and the conditioners, built once (seeded by ``train.seed``, so every rank builds the same).

    ``measure=False`` (on ``--resume``) keeps the stored ``model.residual_scale`` instead of
    measuring it again on the data.
    """
    cfg = with_inpaint_task(with_task(cfg))
    f, c = ae.config.downsample_factor, ae.config.latent_channels
    if cfg.data.size % f:
        raise ConfigError(f"data.size={cfg.data.size} is not a multiple of the autoencoder's f={f}")
    check_train(cfg.train)
    latent = cfg.data.size // f
    specs = tuple(configure_spec(s, dataset) for s in cfg.model.conditioners)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        conditioners = ConditionerSet(specs, LatentSpec(c, latent, f))
    unet = replace(cfg.model.unet, in_channels=c, **conditioners.unet_widths())
    check_unet_config(unet)
    check_memory(model_bytes(lambda: UNet(unet)), "training this UNet", copies=TRAIN_COPIES)
    micro = -(-cfg.train.batch_size // cfg.train.grad_accum)
    check_batch_memory(micro, latent, unet.model_channels, "a train-ldm micro-batch")
    if latent % downsample_factor(unet):
        raise ConfigError(
            f"latent side {latent} (= {cfg.data.size} px / f {f}) is not a multiple of the UNet's "
            f"{downsample_factor(unet)} (one 2x downsampling per unet.channel_mult level)",
            hint="use a larger --size or fewer unet.channel_mult levels",
        )
    model = replace(cfg.model, unet=unet, latent_size=latent, scale_factor=float(ae.scale_factor), conditioners=specs)
    cfg = replace(cfg, model=model)
    if measure:
        cfg = measure_residual_scale(cfg, ae, dataset)
    return cfg, conditioners


def configure_spec(spec: ConditionerSpec, dataset: Any) -> ConditionerSpec:
    """Let a conditioner fill data-dependent options (e.g. the number of classes) into its spec."""
    cls = get_conditioner(spec.name).cls
    try:
        options = from_dict(cls.Config, dict(spec.options))
    except ConfigError as err:
        raise ConfigError(
            f"conditioner {spec.name!r}: {err}", hint=f"its options: {[f.name for f in fields(cls.Config)]}"
        ) from None
    return replace(spec, options=to_dict(cls.configure(options, dataset)))


def check_batch_memory(batch: int, side: int, width: int, what: str) -> None:
    """ConfigError when one batch's first-layer activations alone (``batch`` x ``side``^2 x ``width``
    float32, twice: kept for backward on the way in and out) exceed this machine's memory: a lower
    bound, so a batch it refuses could never have run."""
    check_memory(batch * side * side * width * 4 * 2, f"{what} (its first layer's activations alone)")


def check_train(t: TrainConfig) -> None:
    """ConfigError for a batch size, step count or learning rate that cannot work."""
    for name in ("batch_size", "max_steps"):
        if getattr(t, name) <= 0:
            raise ConfigError(f"train.{name} must be positive, got {getattr(t, name)}")
    if not (t.lr > 0 and math.isfinite(t.lr)):
        raise ConfigError(f"train.lr must be a positive number, got {t.lr}")


__all__ = [
    "ae_config",
    "check_batch_memory",
    "check_train",
    "configure_spec",
    "layered",
    "ldm_config",
    "resolve_ae",
    "resolve_ldm",
    "with_text_encoder",
]
