"""Super-resolution as a task of the composed model: what it adds to a batch and what it diffuses.

An LDM-SR model (``LDMConfig.sr_scale > 0``) is an ordinary :class:`~ldmctl.diffusion.ldm.LatentDiffusion`
with a conditioner that reads the low-res image. This module is the one place that knows the batch
keys of that task:

* ``cond_image``  (B, 3, h, w) in [-1, 1]: the low-res input (:class:`~ldmctl.superres.degrade.SuperresDataset`
  adds it to training items; ``upscale`` passes the user's image);
* ``cond_latent`` (B, C, H/f, W/f): the first stage's latent of the bicubic upscale of ``cond_image``,
  derived here when a conditioner reads it (``concat-latent``) or the model is residual.

A residual model (``LDMConfig.residual``) diffuses ``(z0 - cond_latent) * residual_scale`` instead of
``z0``; :meth:`SuperresTask.to_target` and :meth:`SuperresTask.from_target` map between the two.
The composed model calls these through its ``task`` (duck-typed, so this module imports no model code).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmctl.config import ConditionerSpec, LDMConfig, LDMTrainingConfig
from ldmctl.errors import ConfigError

LOW_RES_KEY = "cond_image"  # the low-res input image
LATENT_KEY = "cond_latent"  # the latent of its bicubic upscale, derived from LOW_RES_KEY
READS_LOW_RES = frozenset({LOW_RES_KEY, LATENT_KEY})  # input keys of the super-resolution conditioners


def upscale_image(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize of (B, C, H, W) images in [-1, 1] to ``size``, clamped."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x.float()
    return F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


class SuperresTask:
    """Derived inputs and the residual target of a super-resolution model (see the module doc)."""

    def __init__(self, cfg: LDMConfig, input_keys: set[str]) -> None:
        self.residual, self.residual_scale = cfg.residual, cfg.residual_scale
        self.needs_latent = cfg.residual or LATENT_KEY in input_keys

    def derived_keys(self) -> frozenset[str]:
        """Batch keys this task derives itself (a data set never has to provide them)."""
        return frozenset({LATENT_KEY})

    def source_keys(self, input_keys: list[str]) -> tuple[str, ...]:
        """The data keys the derived inputs are made from, when they are needed."""
        return (LOW_RES_KEY,) if self.needs_latent else ()

    def inputs(self, model: Any, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """``batch`` plus ``cond_latent`` when the model needs it and it is not there yet."""
        if not self.needs_latent or LATENT_KEY in batch or LOW_RES_KEY not in batch:
            return batch
        f = model.autoencoder.config.downsample_factor
        hw = batch.get("latent_hw") or (model.config.latent_size, model.config.latent_size)
        return {**batch, LATENT_KEY: model.encode(upscale_image(batch[LOW_RES_KEY], (hw[0] * f, hw[1] * f)))}

    def to_target(self, z0: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """What the diffusion process runs on: ``z0``, or a residual model's scaled difference."""
        if not self.residual:
            return z0
        return (z0 - batch[LATENT_KEY].to(z0)) * self.residual_scale

    def from_target(self, z: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """The inverse of :meth:`to_target`: a sampled ``z`` back to scaled latents."""
        if not self.residual:
            return z
        return z / self.residual_scale + batch[LATENT_KEY].to(z)


def task_for(cfg: LDMConfig, input_keys: set[str]) -> SuperresTask | None:
    """The task object of a model config (None: plain generation)."""
    if cfg.sr_scale <= 0 and not cfg.residual and LATENT_KEY not in input_keys:
        return None
    return SuperresTask(cfg, input_keys)


def with_task(cfg: LDMTrainingConfig) -> LDMTrainingConfig:
    """For ``task = superres``: record the scale in the model and make sure a conditioner reads
    the low-res image (a ``concat`` one, without condition dropout, is added when none does)."""
    if cfg.task != "superres":
        if cfg.model.residual:
            raise ConfigError("model.residual = true is for super-resolution models", hint='set task = "superres"')
        return cfg
    scale = cfg.superres.scale
    if scale < 1 or cfg.data.size % scale:
        raise ConfigError(f"data.size={cfg.data.size} is not a multiple of superres.scale={scale}")
    from ldmctl.conditioning.registry import canonical_name

    specs = cfg.model.conditioners
    if not any(canonical_name(s.name) in ("image-concat", "latent-concat") for s in specs):
        specs = (ConditionerSpec("concat", {"channels": 3}, dropout=0.0), *specs)
    return replace(cfg, model=replace(cfg.model, conditioners=specs, sr_scale=scale))


@torch.no_grad()
def measure_residual_scale(cfg: LDMTrainingConfig, ae: nn.Module, dataset: Any, n: int = 64) -> LDMTrainingConfig:
    """For ``model.residual``: set ``residual_scale`` to 1/std of (z0 - latent of the bicubic
    upscale) over the first ``n`` training pairs, so the diffusion runs on unit-variance residuals."""
    if not cfg.model.residual:
        return cfg
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    x = torch.stack([it["image"] for it in items]).float()
    lr = torch.stack([it[LOW_RES_KEY] for it in items]).float()
    sf = cfg.model.scale_factor
    diff = (ae.encode(x).float() - ae.encode(upscale_image(lr, tuple(x.shape[-2:]))).float()) * sf
    std = float(diff.std())
    if not math.isfinite(std) or std <= 0:
        raise ConfigError(
            f"cannot scale the super-resolution residuals (std {std}): are the low-res inputs identical to the targets?"
        )
    return replace(cfg, model=replace(cfg.model, residual_scale=1.0 / std))


__all__ = [
    "LATENT_KEY",
    "LOW_RES_KEY",
    "READS_LOW_RES",
    "SuperresTask",
    "measure_residual_scale",
    "task_for",
    "upscale_image",
    "with_task",
]
