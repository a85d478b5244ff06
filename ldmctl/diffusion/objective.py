"""The DDPM training objective: L_simple + lambda * L_vlb, with optional min-SNR and offset noise.

``L_simple`` is the mean squared (or absolute) error between the UNet output and the target of its
parameterisation (eps, x0 or v; Ho et al. 2020, eq. 14). ``L_vlb`` reweights the same per-sample
error by the DDPM variational-bound weights, so that ``sum_t w_t * error_t`` is the KL term
``L_{t-1}`` of eq. 5 in nats per dimension (x 2 sigma_t^2 cancelled):

* eps: w_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - a_bar_t))      (CompVis' ``lvlb_weights``)
* x0:  w_t = beta_t^2 a_bar_{t-1} / (2 sigma_t^2 (1 - a_bar_t)^2)
* v:   w_t = that x0 weight * (1 - a_bar_t)                       (an x0 error is sqrt(1 - a_bar) v error)

with sigma_t^2 the posterior variance; w_0 (where sigma_0 = 0) is set to w_1 as CompVis does.
CompVis' own x0 formula has an operator-precedence slip (``2. * 1 - a_bar``) and its v weights are
all ones; the weights here are the derived ones.

min-SNR-gamma (Hang et al. 2023) multiplies L_simple by min(SNR, gamma) / SNR for eps,
min(SNR, gamma) for x0 and min(SNR, gamma) / (SNR + 1) for v. Offset noise adds
``offset * N(0, 1)`` constant over each channel's spatial extent to the training noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ldmctl.config import DiffusionConfig
from ldmctl.schedule import Schedule, extract


def schedule_from_config(cfg: DiffusionConfig) -> Schedule:
    """Build the noise schedule a diffusion config describes."""
    return Schedule.make(cfg.schedule, cfg.timesteps, cfg.linear_start, cfg.linear_end)


def vlb_weights(schedule: Schedule, prediction: str) -> Tensor:
    """Per-timestep weights turning the squared error of ``prediction`` into L_{t-1} (float64, (T,))."""
    s = schedule
    var = s.posterior_variance.clone()
    var[0] = var[1] if len(var) > 1 else 1.0  # sigma_0 = 0; the t = 0 weight is replaced below
    if prediction == "eps":
        w = s.betas**2 / (2 * var * s.alphas * (1 - s.alphas_cumprod))
    elif prediction in ("x0", "v"):
        w = s.betas**2 * s.alphas_cumprod_prev / (2 * var * (1 - s.alphas_cumprod) ** 2)
        if prediction == "v":
            w = w * (1 - s.alphas_cumprod)
    else:
        raise ValueError(f"unknown prediction {prediction!r}")
    if len(w) > 1:
        w[0] = w[1]
    return w


def min_snr_weights(schedule: Schedule, t: Tensor, prediction: str, gamma: float) -> Tensor:
    """Per-sample min-SNR-gamma loss weights for the given parameterisation. (B,)"""
    snr = schedule.snr(t)
    clipped = snr.clamp(max=gamma)
    w = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]
    return w.float()


def sample_noise(
    z0: Tensor, cfg: DiffusionConfig, generator: torch.Generator | None, shard: tuple[int, int] = (0, 1)
) -> Tensor:
    """N(0, I) noise shaped like z0, plus offset noise when configured. Drawn on the generator's
    device and moved to z0's. With ``shard = (rank, world)`` the noise of ``world`` times the
    batch is drawn and rows ``rank::world`` kept (data-parallel ranks share one stream)."""
    rank, world = shard
    gen_device = generator.device if generator is not None else z0.device
    shape = (z0.shape[0] * world, *z0.shape[1:])
    noise = torch.randn(shape, generator=generator, device=gen_device, dtype=z0.dtype)
    if cfg.offset_noise > 0:
        offset = torch.randn((shape[0], shape[1], 1, 1), generator=generator, device=gen_device, dtype=z0.dtype)
        noise = noise + cfg.offset_noise * offset
    return noise[rank::world].to(z0.device)


class Objective:
    """The loss of one training batch; holds the schedule and the precomputed VLB weights."""

    def __init__(self, cfg: DiffusionConfig, schedule: Schedule | None = None) -> None:
        self.cfg = cfg
        self.schedule = schedule or schedule_from_config(cfg)
        self.lvlb = vlb_weights(self.schedule, cfg.prediction)

    def draw(
        self, z0: Tensor, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)
    ) -> tuple[Tensor, Tensor]:
        """The timesteps and noise of a batch (see :func:`sample_noise` for ``shard``)."""
        rank, world = shard
        gen_device = generator.device if generator is not None else z0.device
        t = torch.randint(
            0, self.schedule.num_timesteps, (z0.shape[0] * world,), generator=generator, device=gen_device
        )
        return t[rank::world].to(z0.device), sample_noise(z0, self.cfg, generator, shard)

    def __call__(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        z0: Tensor,
        generator: torch.Generator | None = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Run ``model(z_t, t)`` at timesteps ``t`` with ``noise`` (drawn from ``generator`` when
        not given) and return (loss, logs)."""
        cfg = self.cfg
        if t is None or noise is None:
            t, noise = self.draw(z0, generator)
        z_t = self.schedule.q_sample(z0, t, noise)
        out = model(z_t, t)
        target = self.schedule.target(z0, noise, t, cfg.prediction)
        err = out.float() - target.float()
        err = err.abs() if cfg.loss == "l1" else err.square()
        per_sample = err.mean(dim=tuple(range(1, err.ndim)))  # (B,)
        simple = per_sample
        if cfg.min_snr_gamma > 0:
            simple = simple * min_snr_weights(self.schedule, t, cfg.prediction, cfg.min_snr_gamma)
        loss_simple = simple.mean()
        loss_vlb = (extract(self.lvlb, t, per_sample[:, None]).squeeze(1) * per_sample).mean()
        loss = loss_simple + cfg.vlb_weight * loss_vlb if cfg.vlb_weight else loss_simple
        return loss, {
            "loss": float(loss.detach()),
            "simple": float(loss_simple.detach()),
            "vlb": float(loss_vlb.detach()),
        }


__all__ = ["Objective", "min_snr_weights", "sample_noise", "schedule_from_config", "vlb_weights"]
