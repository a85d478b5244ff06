"""DPM-Solver++(2M): the second-order multistep solver of Lu et al. 2022 ("DPM-Solver++: Fast
Solver for Guided Sampling of Diffusion Probabilistic Models", Algorithm 2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ldmctl.samplers.common import (
    BlendFn,
    ModelFn,
    Spacing,
    StepCallback,
    alpha_bar,
    check_prediction,
    predict,
    timesteps,
)
from ldmctl.schedule import Schedule

SPACING: tuple[Spacing, int] = ("linspace", 0)  # (kind, offset) of :func:`~ldmctl.samplers.common.spacing`


def _half_log_snr(a: float) -> float:
    """lambda = log(alpha / sigma) with alpha^2 = alpha_bar = a and sigma^2 = 1 - a."""
    return 0.5 * (math.log(a) - math.log1p(-a))


@torch.no_grad()
def dpmpp(
    model_fn: ModelFn,
    schedule: Schedule,
    noise: Tensor,
    *,
    steps: int = 50,
    prediction: str = "eps",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    start: int | None = None,
    blend: BlendFn | None = None,
) -> Tensor:
    """Sample x_0 from x_T = ``noise`` with DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2).

    The solver integrates the diffusion ODE in data-prediction (x0) form over the half log-SNR
    lambda = log(alpha_t / sigma_t). With h = lambda_s - lambda_t for a step t -> s:

        x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^-h) D,
        D = (1 + 1 / 2r) x0_t - (1 / 2r) x0_prev,   r = h_prev / h,

    a first-order step (D = x0_t, which is DDIM) when there is no previous x0 yet (so also the first
    step after a late ``start``). Timesteps are "linspace" (999, 899, ..., 100 for 10 of 1000); the last
    step goes to sigma = 0, where the first-order update returns x0_t itself: the defaults of diffusers'
    ``DPMSolverMultistepScheduler`` (solver_order=2, final_sigmas_type="zero", lower_order_final=True).
    One model call per step; ``eta`` and ``generator`` are ignored.
    """
    check_prediction(prediction)
    ts = timesteps(schedule.num_timesteps, steps, *SPACING, start=start)
    n, x, x0_prev, lam_prev = len(ts), noise, None, 0.0
    for i, t in enumerate(ts):
        x = x if blend is None else blend(x, t)  # inpainting: the known region at level t
        a_t = alpha_bar(schedule, t)
        lam_t = _half_log_snr(a_t)
        _, x0 = predict(model_fn, schedule, x, t, prediction)
        if i + 1 == n:
            x = x0  # sigma_s = 0: the first-order update reduces to x0
        else:
            a_s = alpha_bar(schedule, ts[i + 1])
            h = _half_log_snr(a_s) - lam_t
            if x0_prev is None:
                d = x0
            else:
                half_inv_r = 0.5 * h / (lam_t - lam_prev)  # 1 / 2r
                d = (1.0 + half_inv_r) * x0 - half_inv_r * x0_prev
            x = math.sqrt((1.0 - a_s) / (1.0 - a_t)) * x + (math.sqrt(a_s) * -math.expm1(-h)) * d
        x0_prev, lam_prev = x0, lam_t
        if callback is not None:
            callback(i, n, x)
    return x
