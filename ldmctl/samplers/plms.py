"""Pseudo linear multistep sampling: PLMS (Liu et al. 2022, "Pseudo Numerical Methods for
Diffusion Models on Manifolds"), as LDM's ``PLMSSampler`` and diffusers' ``PNDMScheduler(
skip_prk_steps=True)`` run it."""

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

SPACING: tuple[Spacing, int] = ("leading", 1)  # (kind, offset) of :func:`~ldmctl.samplers.common.spacing`


def _transfer(x: Tensor, eps: Tensor, a_t: float, a_s: float) -> Tensor:
    """Move x from alpha_bar a_t to a_s along eps: the transfer part of PNDM (Liu et al. 2022, eq. 9).

    Algebraically the deterministic DDIM step; this arrangement avoids the cancellation of
    sqrt(1 - a_s) - sqrt(a_s (1 - a_t) / a_t) when a_s is close to a_t.
    """
    denom = a_t * math.sqrt(1.0 - a_s) + math.sqrt(a_t * (1.0 - a_t) * a_s)
    return math.sqrt(a_s / a_t) * x - ((a_s - a_t) / denom) * eps


def _multistep(eps: Tensor, history: list[Tensor]) -> Tensor:
    """The Adams-Bashforth combination of ``eps`` and the earlier predictions ``history`` (oldest
    first): of order 1 to 4 as the history holds 0 to 3 of them (Liu et al. 2022, eq. 12)."""
    if not history:
        return eps
    if len(history) == 1:
        return (3 * eps - history[-1]) / 2
    if len(history) == 2:
        return (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
    return (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24


@torch.no_grad()
def plms(
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
    """Sample x_0 from x_T = ``noise`` with PLMS (Liu et al. 2022, eq. 12-13), using ``steps + 1``
    model calls.

    Each step moves x along a 4th-order Adams-Bashforth combination of the current and up to
    three earlier noise predictions, with lower orders (2nd, 3rd) while the history fills.
    The first step has no history: it is a pseudo improved-Euler (Heun) step. It takes a DDIM
    step, calls the model again at the *next* timestep, and redoes the step from the start
    with the mean of the two predictions. That second prediction is then dropped: the next
    step calls the model again at the same timestep and keeps only the first step's
    prediction as history. A single step (``steps=1``) is a plain DDIM step.

    The history holds noise predictions, each converted from the model output at its own x and
    t, as LDM does for v-models. (diffusers' PNDMScheduler combines raw v outputs and converts
    the combination once, so for ``prediction="v"`` it differs; huggingface/diffusers#14816.)
    Timesteps are LDM's, as for DDIM. ``eta`` and ``generator`` are ignored. A late ``start``
    (img2img) warms up with the same Heun step at its first timestep.
    """
    check_prediction(prediction)
    ts = timesteps(schedule.num_timesteps, steps, *SPACING, start=start)
    n, x = len(ts), noise
    history: list[Tensor] = []  # earlier eps, oldest first, at most three
    for i, t in enumerate(ts):
        x = x if blend is None else blend(x, t)  # inpainting: the known region at level t
        a_t = alpha_bar(schedule, t)
        a_s = alpha_bar(schedule, ts[i + 1] if i + 1 < n else 0)
        eps, _ = predict(model_fn, schedule, x, t, prediction)
        if not history and n > 1:  # warm-up: Heun through the next timestep
            eps_next, _ = predict(model_fn, schedule, _transfer(x, eps, a_t, a_s), ts[i + 1], prediction)
            eps_step = (eps + eps_next) / 2
        else:
            eps_step = _multistep(eps, history)
        history = [*history[-2:], eps]
        x = _transfer(x, eps_step, a_t, a_s)
        if callback is not None:
            callback(i, n, x)
    return x
