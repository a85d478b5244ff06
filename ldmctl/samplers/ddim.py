"""Denoising diffusion implicit models: DDIM sampling (Song et al. 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ldmctl.errors import ConfigError
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

SPACING: tuple[Spacing, int] = ("leading", 1)  # (kind, offset) of :func:`~ldmctl.samplers.common.spacing`


@torch.no_grad()
def ddim(
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
    """Sample x_0 from x_T = ``noise`` with DDIM (Song et al. 2021, eq. 12 and 16).

    ``start`` and ``blend`` as for every sampler (:mod:`ldmctl.samplers.common`): begin at the
    largest timestep of the spacing that is <= ``start``, with ``noise`` being x at that timestep
    (SDEdit / img2img), and rewrite x before each step with ``blend(x, t)`` (inpainting).

    ``eta = 0`` is the deterministic sampler (an ODE solver); ``eta = 1`` gives each step the
    DDPM posterior variance. Timesteps are LDM's: "leading" spacing with offset 1
    (``1, 21, ..., 981`` for 50 of 1000), and the last step lands on alpha_bar[0] rather
    than 1, so the result is the t = 0 sample (diffusers: ``set_alpha_to_one=False``,
    ``steps_offset=1``). With ``eta > 0`` every step, the last included, draws one
    ``randn(x.shape)`` from ``generator``.
    """
    check_prediction(prediction)
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(
            f"eta={eta} is outside [0, 1]", hint="eta = 0 is deterministic DDIM, eta = 1 matches DDPM's variance"
        )
    ts = timesteps(schedule.num_timesteps, steps, *SPACING, start=start)
    n, x = len(ts), noise
    for i, t in enumerate(ts):
        x = x if blend is None else blend(x, t)  # inpainting: the known region at level t
        a_t = alpha_bar(schedule, t)
        a_s = alpha_bar(schedule, ts[i + 1] if i + 1 < n else 0)
        eps, x0 = predict(model_fn, schedule, x, t, prediction)
        # 1. eq. 16: sigma = eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s)
        sigma = eta * math.sqrt((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s))
        # 2. eq. 12: x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z
        x = math.sqrt(a_s) * x0 + math.sqrt(1.0 - a_s - sigma**2) * eps
        if eta > 0:
            x = x + sigma * randn_like(x, generator)
        if callback is not None:
            callback(i, n, x)
    return x
