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

Timestep bias (diffusers' ``timestep_bias_strategy="range"``): a share ``timestep_bias_portion``
of each batch draws t uniformly from ``[timestep_bias_begin, timestep_bias_end)`` instead of all of
T, so the high-noise steps, where a sample's layout is decided, get more of the training. Their
loss is weighted as any other row's (note that min-SNR gives the high-noise rows almost no weight).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ldmctl.config import DiffusionConfig
from ldmctl.errors import ConfigError
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


def timestep_bias_range(cfg: DiffusionConfig, num_timesteps: int) -> tuple[int, int]:
    """[begin, end) of the timestep bias (``end`` 0 means T); a ConfigError unless 0 <= begin < end <= T."""
    begin, end = cfg.timestep_bias_begin, cfg.timestep_bias_end or num_timesteps
    if cfg.timestep_bias_portion > 0 and not 0 <= begin < end <= num_timesteps:
        raise ConfigError(
            f"model.diffusion.timestep_bias_begin/end = {begin}/{end}: need 0 <= begin < end <= timesteps ({num_timesteps})"
        )
    return begin, end


class Objective:
    """The loss of one training batch; holds the schedule and the precomputed VLB weights."""

    def __init__(self, cfg: DiffusionConfig, schedule: Schedule | None = None) -> None:
        self.cfg = cfg
        self.schedule = schedule or schedule_from_config(cfg)
        self.lvlb = vlb_weights(self.schedule, cfg.prediction)
        self.bias_range = timestep_bias_range(cfg, self.schedule.num_timesteps)

    def draw(
        self, z0: Tensor, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)
    ) -> tuple[Tensor, Tensor]:
        """The timesteps and noise of a batch (see :func:`sample_noise` for ``shard``)."""
        rank, world = shard
        gen_device = generator.device if generator is not None else z0.device
        n = z0.shape[0] * world
        t = torch.randint(0, self.schedule.num_timesteps, (n,), generator=generator, device=gen_device)
        if self.cfg.timestep_bias_portion > 0:  # extra draws only then: unbiased runs keep their stream
            pick = torch.rand(n, generator=generator, device=gen_device) < self.cfg.timestep_bias_portion
            t = torch.where(pick, torch.randint(*self.bias_range, (n,), generator=generator, device=gen_device), t)
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
        if t is None or noise is None:
            t, noise = self.draw(z0, generator)
        out = model(self.schedule.q_sample(z0, t, noise), t)
        return self.reduce(self.per_sample_error(out, z0, noise, t), t)

    def per_sample_error(self, out: Tensor, z0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The unweighted error (L2 or L1) of the UNet output ``out`` against its target, per sample. (B,)"""
        err = out.float() - self.schedule.target(z0, noise, t, self.cfg.prediction).float()
        err = err.abs() if self.cfg.loss == "l1" else err.square()
        return err.mean(dim=tuple(range(1, err.ndim)))

    def reduce(self, per_sample: Tensor, t: Tensor) -> tuple[Tensor, dict[str, float]]:
        """L_simple (min-SNR weighted when configured) + lambda * L_vlb of per-sample errors at ``t``."""
        cfg = self.cfg
        simple = per_sample
        if cfg.min_snr_gamma > 0:
            simple = simple * min_snr_weights(self.schedule, t, cfg.prediction, cfg.min_snr_gamma).to(per_sample.device)
        loss_simple = simple.mean()
        loss_vlb = (extract(self.lvlb, t, per_sample[:, None]).squeeze(1) * per_sample).mean()
        loss = loss_simple + cfg.vlb_weight * loss_vlb if cfg.vlb_weight else loss_simple
        return loss, {
            "loss": float(loss.detach()),
            "simple": float(loss_simple.detach()),
            "vlb": float(loss_vlb.detach()),
        }


__all__ = ["Objective", "min_snr_weights", "sample_noise", "schedule_from_config", "timestep_bias_range", "vlb_weights"]
