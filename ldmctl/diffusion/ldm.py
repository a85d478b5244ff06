"""``LatentDiffusion``: a frozen first stage, a UNet, a noise schedule, the objective. Composition only.

    image x ─ E ─ * scale_factor ─ z0 ─ q_sample(t, eps) ─ z_t ─ UNet(z_t, t, cond) ─ loss
    noise z_T ─ sampler(model_fn) ─ z0 ─ / scale_factor ─ D ─ image

The autoencoder is frozen (eval mode, no gradients). Training state (optimizer, EMA) lives in
``ldmctl.train``; classifier-free guidance wraps :meth:`LatentDiffusion.model_fn` from outside
(``ldmctl.samplers.guidance``); grids and progress bars in the CLI. A task (super-resolution,
:mod:`ldmctl.superres.task`; inpainting, :mod:`ldmctl.inpaint.task`; chosen by :func:`task_for`) may
add derived inputs to a batch and change what is diffused; the model calls it without knowing its
batch keys. The file format is :mod:`ldmctl.diffusion.io`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn

from ldmctl.conditioning.base import Cond, LatentSpec
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.config import ContrastConfig, LDMConfig
from ldmctl.diffusion.contrast import contrast_step
from ldmctl.diffusion.objective import Objective
from ldmctl.inpaint.task import InpaintTask
from ldmctl.superres.task import SuperresTask
from ldmctl.superres.task import task_for as superres_task_for
from ldmctl.unet import UNet

ModelFn = Callable[[Tensor, Tensor], Tensor]


def latent_spec(cfg: LDMConfig, autoencoder: nn.Module) -> LatentSpec:
    return LatentSpec(channels=cfg.unet.in_channels, size=cfg.latent_size, factor=autoencoder.config.downsample_factor)


def task_for(cfg: LDMConfig, input_keys: set[str]) -> InpaintTask | SuperresTask | None:
    """The task of a model config: inpainting (``inpaint``), super-resolution (``sr_scale > 0``, a
    residual model or one reading ``cond_latent``) or None, plain generation."""
    return InpaintTask(cfg, input_keys) if cfg.inpaint else superres_task_for(cfg, input_keys)


class LatentDiffusion(nn.Module):
    """Holds ``autoencoder`` (frozen), ``unet``, ``conditioners``, ``schedule`` and ``objective``."""

    def __init__(
        self,
        cfg: LDMConfig,
        autoencoder: nn.Module,
        unet: UNet | None = None,
        conditioners: ConditionerSet | None = None,
    ) -> None:
        super().__init__()
        self.config = cfg
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.unet = unet if unet is not None else UNet(cfg.unet)
        self.conditioners = (
            conditioners
            if conditioners is not None
            else ConditionerSet(cfg.conditioners, latent_spec(cfg, autoencoder))
        )
        self.objective = Objective(cfg.diffusion)
        self.schedule = self.objective.schedule
        self.task = task_for(cfg, {c.input_key for c in self.conditioners.items})

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

    def batch_keys(self) -> tuple[str, ...]:
        """The data keys a training batch must carry: every conditioner's input, and the task's."""
        keys = [c.input_key for c in self.conditioners.items]
        if self.task is not None:
            keys = [k for k in keys if k not in self.task.derived_keys()] + list(self.task.source_keys(keys))
        return tuple(dict.fromkeys(keys))

    def cond(
        self,
        batch: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
        train_dropout: bool = False,
        shard: tuple[int, int] = (0, 1),
        keep: Tensor | None = None,
    ) -> Cond | None:
        """The UNet's conditioning for a batch (None for an unconditional model); ``keep``: the
        rows that survive the training dropout, instead of drawing them."""
        if not len(self.conditioners):
            return None
        return self.conditioners(
            self.derived_inputs(batch), generator=generator, train_dropout=train_dropout, shard=shard, keep=keep
        )

    def derived_inputs(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """``batch`` with the inputs the model's task derives itself (none for plain generation)."""
        return batch if self.task is None else self.task.inputs(self, batch)

    def to_target(self, z0: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """What the diffusion process runs on (``z0`` itself unless the task says otherwise)."""
        return z0 if self.task is None else self.task.to_target(z0, batch)

    def from_target(self, z: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """The inverse of :meth:`to_target`: a sampled ``z`` back to scaled latents for :meth:`decode`."""
        return z if self.task is None else self.task.from_target(z, batch)

    def training_loss(
        self,
        batch: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
        net: Callable[[Tensor, Tensor, Cond], Tensor] | None = None,
        shard: tuple[int, int] = (0, 1),
        micro_batches: int = 1,
        backward: Callable[[Tensor], None] | None = None,
        amp: Callable[[], AbstractContextManager] = nullcontext,
        contrast: ContrastConfig | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """The loss of one batch holding scaled latents ``z0`` and the conditioners' inputs.

        1. derive the task's inputs (the frozen first stage runs outside ``amp``);
        2. the condition, with each spec's dropout, from ``generator``;
        3. the target, then timesteps and noise from ``generator``;
        4. the objective, with ``net`` (a DDP-wrapped or compiled copy of ``self.unet``) or the UNet.

        Random draws cover ``world`` times the batch, rows ``rank::world`` kept (``shard``), so
        data-parallel ranks together see what one process sees. ``amp`` gives the autocast
        context of the conditioners' and the UNet's forward passes.

        Without ``backward`` this returns the loss with its graph. With it (gradient accumulation)
        the batch is cut into ``micro_batches`` equal row chunks that share the draws of steps
        2-3; each chunk's loss, weighted by its share of the batch, goes to ``backward`` at once
        (one chunk's UNet activations live at a time; a ``net`` with ``no_sync``, i.e. DDP,
        all-reduces its gradients with the last chunk only), and the conditioners' graph is
        backpropagated once at the end. The gradients are the whole batch's, up to rounding.
        Then the returned loss is detached: the chunks' weighted sum; the logs are their mean.

        ``contrast`` (weight > 0): :func:`ldmctl.diffusion.contrast.contrast_step` instead (one chunk).
        """
        if contrast is not None and contrast.weight > 0:
            kw = {"generator": generator, "net": net, "shard": shard, "backward": backward, "amp": amp}
            return contrast_step(self, batch, contrast, micro_batches=micro_batches, **kw)
        batch = self.derived_inputs(batch)
        with amp():
            cond = self.cond(batch, generator=generator, train_dropout=True, shard=shard) or Cond()
        z0 = self.to_target(batch["z0"], batch)
        t, noise = self.objective.draw(z0, generator, shard=shard)
        unet = net if net is not None else self.unet
        if backward is None:
            if micro_batches != 1:
                raise ValueError("training_loss: micro_batches > 1 needs backward")
            with amp():
                return self.objective(lambda z_t, tt: unet(z_t, tt, cond), z0, t=t, noise=noise)
        return _accumulate(self.objective, unet, cond, z0, t, noise, micro_batches, backward, amp)

    def model_fn(self, cond: Cond | None = None, *, unet: nn.Module | None = None) -> ModelFn:
        """The ``model_fn(z_t, t)`` a sampler calls (guidance wraps it: ``ldmctl.samplers.guidance``)."""
        net = unet if unet is not None else self.unet
        c = cond or Cond()
        return lambda z_t, t: net(z_t, t, c)

    def initial_noise(
        self, n: int, generator: torch.Generator | None = None, latent_hw: tuple[int, int] | None = None
    ) -> Tensor:
        """z_T: ``n`` standard normal latents (``latent_hw``, default the trained size), drawn with
        ``generator`` on its own device and moved to the UNet's, so a CPU generator gives the same
        noise on every device."""
        h, w = latent_hw or (self.config.latent_size, self.config.latent_size)
        device = next(self.unet.parameters()).device
        noise = torch.randn(
            (n, self.latent_shape[0], h, w),
            generator=generator,
            device=generator.device if generator is not None else device,
        )
        return noise.to(device)

    @torch.no_grad()
    def sample_latents(
        self,
        sampler: Callable[..., Tensor],
        n: int,
        *,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        model_fn: ModelFn | None = None,
        callback: Callable[[int, int, Tensor], None] | None = None,
        latent_hw: tuple[int, int] | None = None,
        noise: Tensor | None = None,
        start: int | None = None,
        blend: Callable[[Tensor, int], Tensor] | None = None,
    ) -> Tensor:
        """Run ``sampler`` from z_T (drawn with ``generator``: :meth:`initial_noise`); returns scaled latents.

        Editing (:mod:`ldmctl.editing`) passes ``noise``, x at the sampler's first timestep ``<= start``
        (img2img), and ``blend`` (inpainting); see :mod:`ldmctl.samplers.common`.
        """
        if noise is None:
            noise = self.initial_noise(n, generator, latent_hw)
        extra = {} if start is None and blend is None else {"start": start, "blend": blend}
        return sampler(
            model_fn or self.model_fn(),
            self.schedule,
            noise,
            steps=steps,
            prediction=self.config.diffusion.prediction,
            eta=eta,
            generator=generator,
            callback=callback,
            **extra,
        )


def _rows(cond: Cond, idx: slice) -> Cond:
    return Cond(**{f.name: (v[idx] if (v := getattr(cond, f.name)) is not None else None) for f in fields(Cond)})


def _leaves(cond: Cond) -> tuple[Cond, list[tuple[Tensor, Tensor]]]:
    """Cut the conditioners' graph off the UNet's: the UNet's chunks backpropagate into leaf copies
    of the condition tensors, whose summed gradients then go through the conditioners once."""
    pairs, out = [], {}
    for f in fields(Cond):
        v = getattr(cond, f.name)
        if v is not None and v.requires_grad:
            leaf = v.detach().requires_grad_(True)
            pairs.append((v, leaf))
            v = leaf
        out[f.name] = v
    return Cond(**out), pairs


def _accumulate(
    objective: Objective,
    unet: Callable[..., Tensor],
    cond: Cond,
    z0: Tensor,
    t: Tensor,
    noise: Tensor,
    chunks: int,
    backward: Callable[[Tensor], None],
    amp: Callable[[], AbstractContextManager],
) -> tuple[Tensor, dict[str, float]]:
    """The chunked forward/backward of :meth:`LatentDiffusion.training_loss` (see there)."""
    cond_in, pairs = _leaves(cond)
    b = z0.shape[0]
    m = b // chunks
    if m * chunks != b:
        raise ValueError(f"a batch of {b} does not split into {chunks} micro-batches")
    total, parts = z0.new_zeros(()), []
    for i in range(chunks):
        rows, c = slice(i * m, (i + 1) * m), _rows(cond_in, slice(i * m, (i + 1) * m))
        last = i == chunks - 1
        no_sync = getattr(unet, "no_sync", None)
        with nullcontext() if last or no_sync is None else no_sync():
            with amp():
                loss, logs = objective(lambda z, tt, c=c: unet(z, tt, c), z0[rows], t=t[rows], noise=noise[rows])
            backward(loss * (m / b))
        total = total + loss.detach().float() * (m / b)
        parts.append(logs)
    if pairs:
        torch.autograd.backward(
            [v for v, _ in pairs], [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for _, leaf in pairs]
        )
    return total, {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}


__all__ = ["LatentDiffusion", "ModelFn", "latent_spec", "task_for"]
