"""The forward (noising) process of DDPM (Ho et al. 2020) and its closed forms.

Beta schedules, by the names ldmctl uses (CompVis' code names them differently; see the table):

=============  ==================================================  ======================  ==============
ldmctl         betas                                               CompVis ``make_beta_``  diffusers
=============  ==================================================  ======================  ==============
linear         linspace(start, end, T) (DDPM: 1e-4 .. 2e-2)        ``sqrt_linear``         ``linear``
sqrt_linear    linspace(sqrt(start), sqrt(end), T) ** 2 (LDM's     ``linear``              ``scaled_linear``
               default, 0.00085 .. 0.012)
cosine         Nichol & Dhariwal 2021, s = 0.008, betas <= 0.999   ``cosine``              ``squaredcos_cap_v2``
=============  ==================================================  ======================  ==============

"sqrt_linear" here means linear in sqrt(beta), which is what the LDM paper's default schedule is;
the CompVis repository calls that one "linear" and uses "sqrt_linear" for plain linear betas.

All buffers are float64 (the closed forms lose precision in float32 near t = 0); :func:`extract`
gathers them per sample and casts to the input's dtype. Model outputs are one of three
parameterisations: ``eps`` (the noise), ``x0`` (the clean sample) or ``v`` (Salimans & Ho 2022,
v = sqrt(a) eps - sqrt(1 - a) x0); :meth:`Schedule.to_eps` / :meth:`to_x0` / :meth:`to_v` convert
exactly between them given x_t.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

BetaSchedule = Literal["linear", "sqrt_linear", "cosine"]
Prediction = Literal["eps", "x0", "v"]


def make_betas(kind: str, timesteps: int, start: float = 0.00085, end: float = 0.012, cosine_s: float = 8e-3) -> Tensor:
    """Return the float64 betas of schedule ``kind`` (see the module table)."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if kind == "linear":
        return torch.linspace(start, end, timesteps, dtype=torch.float64)
    if kind == "sqrt_linear":
        return torch.linspace(start**0.5, end**0.5, timesteps, dtype=torch.float64) ** 2
    if kind == "cosine":
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((t + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r}; choose linear, sqrt_linear or cosine")


def extract(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """Gather ``values[t]`` for a batch of timesteps and shape it to broadcast against ``like``.
    The cast to ``like``'s dtype happens before the move, so float64 never reaches a device
    without it (Apple's MPS)."""
    out = values.to(like.dtype).to(like.device)[t.long()]
    return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))


class Schedule:
    """Every per-timestep constant of the forward process, float64, indexed 0 .. T-1."""

    def __init__(self, betas: Tensor) -> None:
        b = torch.as_tensor(betas).to(torch.float64)
        if b.ndim != 1 or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        alphas = 1.0 - b
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        values = {
            "betas": b,
            "alphas": alphas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_variance)  (Ho et al. eq. 7)
            "posterior_variance": post_var,
            # log of the variance with the t = 0 entry (which is 0) replaced by the t = 1 one
            "posterior_log_variance_clipped": torch.log(torch.cat([post_var[1:2], post_var[1:]])),
            "posterior_mean_coef1": b * ac_prev.sqrt() / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
        }
        for name, value in values.items():
            setattr(self, name, value)

    # attributes set in __init__, declared for readers and type checkers
    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    @classmethod
    def make(
        cls, kind: str = "sqrt_linear", timesteps: int = 1000, start: float = 0.00085, end: float = 0.012
    ) -> Schedule:
        return cls(make_betas(kind, timesteps, start, end))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at integer timesteps ``t`` (float64)."""
        ac = self.alphas_cumprod[t.long().cpu()]
        return (ac / (1.0 - ac)).to(t.device)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(a_bar) x_0, (1 - a_bar) I) with the given noise."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * x0 + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = extract(self.posterior_mean_coef1, t, x_t) * x0 + extract(self.posterior_mean_coef2, t, x_t) * x_t
        return (mean, extract(self.posterior_variance, t, x_t), extract(self.posterior_log_variance_clipped, t, x_t))

    # ---- exact conversions between parameterisations, given x_t -------------------------------

    def to_x0(self, x_t: Tensor, t: Tensor, out: Tensor, prediction: str) -> Tensor:
        """The x_0 implied by model output ``out`` of parameterisation ``prediction``."""
        a, s = extract(self.sqrt_alphas_cumprod, t, x_t), extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if prediction == "eps":
            return (x_t - s * out) / a
        if prediction == "x0":
            return out
        if prediction == "v":
            return a * x_t - s * out
        raise ValueError(f"unknown prediction {prediction!r}; choose eps, x0 or v")

    def to_eps(self, x_t: Tensor, t: Tensor, out: Tensor, prediction: str) -> Tensor:
        """The noise implied by model output ``out`` of parameterisation ``prediction``."""
        a, s = extract(self.sqrt_alphas_cumprod, t, x_t), extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if prediction == "eps":
            return out
        if prediction == "x0":
            return (x_t - a * out) / s
        if prediction == "v":
            return s * x_t + a * out
        raise ValueError(f"unknown prediction {prediction!r}; choose eps, x0 or v")

    def to_v(self, x_t: Tensor, t: Tensor, out: Tensor, prediction: str) -> Tensor:
        """The velocity v = sqrt(a_bar) eps - sqrt(1 - a_bar) x_0 implied by ``out``."""
        a, s = extract(self.sqrt_alphas_cumprod, t, x_t), extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if prediction == "v":
            return out
        eps, x0 = self.to_eps(x_t, t, out, prediction), self.to_x0(x_t, t, out, prediction)
        return a * eps - s * x0

    def target(self, x0: Tensor, noise: Tensor, t: Tensor, prediction: str) -> Tensor:
        """The regression target of parameterisation ``prediction`` for x_t = q_sample(x0, t, noise)."""
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        if prediction == "v":
            return (
                extract(self.sqrt_alphas_cumprod, t, x0) * noise
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
            )
        raise ValueError(f"unknown prediction {prediction!r}; choose eps, x0 or v")


__all__ = ["BetaSchedule", "Prediction", "Schedule", "extract", "make_betas"]
