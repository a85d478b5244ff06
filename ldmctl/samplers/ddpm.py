"""Ancestral sampling of DDPM (Ho et al. 2020, Algorithm 2), optionally on a subsequence of steps."""

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
    randn_like,
    timesteps,
)
from ldmctl.schedule import Schedule

SPACING: tuple[Spacing, int] = ("leading", 0)  # (kind, offset) of :func:`~ldmctl.samplers.common.spacing`


@torch.no_grad()
def ddpm(
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
    """Sample x_0 from x_T = ``noise`` with the DDPM reverse process (Ho et al. 2020, Algorithm 2).

    ``steps`` equal to the schedule's T runs the full chain. Fewer steps visit the "leading"
    timesteps ``(steps-1)k, ..., k, 0`` with ``k = T // steps`` and treat each jump t -> s as
    one transition with beta = 1 - a_t / a_s (a = alpha_bar): x_s is drawn from the posterior
    q(x_s | x_t, x_0) of that jump, variance beta~ ("fixed_small"), as diffusers'
    DDPMScheduler does. The last step (to a_s = 1) adds no noise and returns the predicted x_0.

    Every step but the last draws one ``randn(x.shape)`` from ``generator``. ``eta`` is ignored.
    ``start`` (img2img) and ``blend`` (inpainting) as for every sampler (:mod:`ldmctl.samplers.common`).
    """
    check_prediction(prediction)
    ts = timesteps(schedule.num_timesteps, steps, *SPACING, start=start)
    n, x = len(ts), noise
    for i, t in enumerate(ts):
        x = x if blend is None else blend(x, t)  # inpainting: the known region at level t
        a_t = alpha_bar(schedule, t)
        a_s = alpha_bar(schedule, ts[i + 1]) if i + 1 < n else 1.0
        alpha = a_t / a_s  # this jump's own alpha and beta
        beta = 1.0 - alpha
        _, x0 = predict(model_fn, schedule, x, t, prediction)
        # 1. posterior mean, Ho et al. eq. 7, with the jump's beta in place of beta_t
        coef_x0 = math.sqrt(a_s) * beta / (1.0 - a_t)
        coef_x = math.sqrt(alpha) * (1.0 - a_s) / (1.0 - a_t)
        x = coef_x0 * x0 + coef_x * x
        # 2. plus sigma z with sigma^2 = beta~ (eq. 7), floored like diffusers to keep sqrt finite
        if i + 1 < n:
            var = max((1.0 - a_s) / (1.0 - a_t) * beta, 1e-20)
            x = x + math.sqrt(var) * randn_like(x, generator)
        if callback is not None:
            callback(i, n, x)
    return x
