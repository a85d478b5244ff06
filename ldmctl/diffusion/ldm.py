"""``LatentDiffusion``: a frozen first stage, a UNet, a noise schedule, the objective. Composition only.

    image x ─ E ─ * scale_factor ─ z0 ─ q_sample(t, eps) ─ z_t ─ UNet(z_t, t, cond) ─ loss
    noise z_T ─ sampler(model_fn) ─ z0 ─ / scale_factor ─ D ─ image

The autoencoder is frozen (eval mode, no gradients). Training state (optimizer, EMA) lives in
``ldmctl.train.ldm``; guidance in ``ldmctl.samplers.guidance``; grids and progress bars in the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmctl.conditioning.base import Cond, LatentSpec
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.config import LDMConfig
from ldmctl.diffusion.objective import Objective
from ldmctl.samplers.guidance import cfg_model_fn, plain_model_fn
from ldmctl.unet import UNet


DERIVED_KEYS = {"cond_latent": "cond_image"}  # batch key the model derives -> the key it is derived from


def upscale_image(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize of (B, C, H, W) images in [-1, 1] to ``size``, clamped."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x.float()
    return F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def latent_spec(cfg: LDMConfig, autoencoder: nn.Module) -> LatentSpec:
    return LatentSpec(channels=cfg.unet.in_channels, size=cfg.latent_size, factor=autoencoder.config.downsample_factor)


class LatentDiffusion(nn.Module):
    """Holds ``autoencoder`` (frozen), ``unet``, ``conditioners``, ``schedule`` and ``objective``."""

    def __init__(self, cfg: LDMConfig, autoencoder: nn.Module, unet: UNet | None = None,
                 conditioners: ConditionerSet | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.unet = unet if unet is not None else UNet(cfg.unet)
        self.conditioners = conditioners if conditioners is not None else ConditionerSet(
            cfg.conditioners, latent_spec(cfg, autoencoder))
        self.objective = Objective(cfg.diffusion)
        self.schedule = self.objective.schedule

    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        self.autoencoder.eval()  # the first stage stays frozen in eval mode
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.config.latent_size
        return (self.config.unet.in_channels, s, s)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] -> scaled latents z0 (posterior mode)."""
        return self.autoencoder.encode(x).float() * self.config.scale_factor

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents -> images in [-1, 1] (clamped)."""
        return self.autoencoder.decode(z.float() / self.config.scale_factor).clamp(-1, 1)

    def cond(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None,
             train_dropout: bool = False, shard: tuple[int, int] = (0, 1)) -> Cond | None:
        """The UNet's conditioning for a batch (None for an unconditional model)."""
        if not len(self.conditioners):
            return None
        return self.conditioners(self.derived_inputs(batch), generator=generator, train_dropout=train_dropout,
                                 shard=shard)

    def derived_inputs(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """Add the batch keys the model derives itself when a conditioner reads them (see DERIVED_KEYS):
        ``cond_latent`` = the first stage's latent of ``cond_image`` upscaled (bicubic) to the output size."""
        if "cond_latent" in batch or "cond_image" not in batch:
            return batch
        if not self.config.residual and not any(c.input_key == "cond_latent" for c in self.conditioners.items):
            return batch
        f = self.autoencoder.config.downsample_factor
        hw = batch.get("latent_hw") or (self.config.latent_size, self.config.latent_size)
        return {**batch, "cond_latent": self.encode(upscale_image(batch["cond_image"], (hw[0] * f, hw[1] * f)))}

    def to_target(self, z0: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """What the diffusion process runs on: ``z0`` itself, or for a residual super-resolution model
        (``config.residual``) its difference from ``batch["cond_latent"]`` (the latent of the bicubic
        upscale; see :meth:`derived_inputs`), times ``residual_scale``."""
        if not self.config.residual:
            return z0
        return (z0 - batch["cond_latent"].to(z0)) * self.config.residual_scale

    def from_target(self, z: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """The inverse of :meth:`to_target`: a sampled ``z`` back to scaled latents for :meth:`decode`."""
        if not self.config.residual:
            return z
        return z / self.config.residual_scale + batch["cond_latent"].to(z)

    def loss(self, z0: Tensor, cond: Cond | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """The training loss of one batch of scaled latents."""
        c = cond or Cond()
        return self.objective(lambda z_t, t: self.unet(z_t, t, c), z0, generator)

    def model_fn(self, cond: Cond | None = None, uncond: Cond | None = None, *, guidance: float = 1.0,
                 unet: nn.Module | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """The ``model_fn(z_t, t)`` a sampler calls, with guidance when ``uncond`` is given."""
        net = unet if unet is not None else self.unet
        if uncond is None or guidance == 1.0:
            return plain_model_fn(net, cond)
        return cfg_model_fn(net, cond or Cond(), uncond, guidance)

    @torch.no_grad()
    def sample_latents(self, sampler: Callable[..., Tensor], n: int, *, steps: int, eta: float = 0.0,
                       generator: torch.Generator | None = None, model_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                       callback: Callable[[int, int, Tensor], None] | None = None,
                       latent_size: int | None = None) -> Tensor:
        """Draw z_T with ``generator`` and run ``sampler`` from it; returns scaled latents."""
        c, s = self.latent_shape[0], latent_size or self.config.latent_size
        device = next(self.unet.parameters()).device
        noise = torch.randn((n, c, s, s), generator=generator,
                            device=generator.device if generator is not None else device).to(device)
        return sampler(model_fn or self.model_fn(), self.schedule, noise, steps=steps,
                       prediction=self.config.diffusion.prediction, eta=eta, generator=generator,
                       callback=callback)


__all__ = ["DERIVED_KEYS", "LatentDiffusion", "upscale_image"]
