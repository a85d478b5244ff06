"""What every sampler shares: the one signature, timestep spacing and model-output conversion.

A sampler is a free function with the signature of :class:`Sampler`. It turns x_T (``noise``)
into x_0 by calling ``model_fn(x_t, t)`` a fixed number of times; the caller wraps guidance and
conditioning inside ``model_fn``, so samplers know nothing about them. State (PLMS history,
DPM-Solver buffers) lives in local variables.

Editing (:mod:`ldmctl.editing`) uses two optional arguments every sampler takes alike: ``start``
begins at the sampler's first timestep ``<= start`` with ``noise`` being x there (img2img), and
``blend(x, t)`` rewrites the sample before each step (inpainting by latent blending). Left at
their defaults they change nothing: the timesteps and every operation are those of plain sampling.

Numerics: tensors stay in ``noise.dtype`` on ``noise.device``. The per-step coefficients are
computed from the float64 schedule constants as Python floats (float64) and only then applied
to the tensors, which casts them to the tensor's dtype, as :func:`~ldmctl.diffusion.extract`
does. Every step of a batch shares one timestep, so a coefficient is a scalar and nothing is
copied to the device per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from ldmctl.errors import ConfigError
from ldmctl.schedule import Schedule

ModelFn = Callable[[Tensor, Tensor], Tensor]
"""``(x_t (B, C, H, W), t (B,) int64) -> raw network output`` in the sampler's ``prediction``."""

StepCallback = Callable[[int, int, Tensor], None]
"""``(i, n, x)``: called after step ``i`` (0-based) of ``n`` with the current sample."""

BlendFn = Callable[[Tensor, int], Tensor]
"""``(x_t, t) -> x_t``: called on the sample at the start of each step, before the model sees it at
timestep ``t``; what it returns replaces the sample. Inpainting by latent blending (the CompVis DDIM
``mask``/``x0`` mechanism) passes one that puts the known latent, noised to level ``t``, outside the mask."""

Spacing = Literal["leading", "linspace"]
PREDICTIONS = ("eps", "x0", "v")


class Sampler(Protocol):
    """The signature every sampler in :data:`ldmctl.samplers.SAMPLERS` has."""

    def __call__(
        self,
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
    ) -> Tensor: ...


def spacing(num_train: int, steps: int, kind: Spacing = "leading", offset: int = 0) -> Tensor:
    """Return the ``steps`` training timesteps a sampler visits, descending, as int64.

    ``leading`` (DDIM, Song et al. 2021, and diffusers' default for DDPM/DDIM/PNDM): the
    multiples of ``num_train // steps`` from 0, plus ``offset``. LDM's DDIM and PLMS use
    offset 1 (``1, 21, ..., 981`` for 50 of 1000), DDPM offset 0. ``linspace`` (DPM-Solver):
    ``steps + 1`` points evenly spread over ``[0, num_train - 1]``, rounded, the last (0)
    dropped because the solver's last step goes to sigma = 0 instead.

    Raises ConfigError when ``steps`` does not give distinct timesteps in ``[0, num_train)``.
    """
    if steps < 1:
        raise _steps_error(num_train, steps, kind, offset)
    if kind == "leading":
        t = np.arange(steps)[::-1] * (num_train // steps) + offset
    elif kind == "linspace":
        # numpy's linspace, not torch's: the two round differently at .5 ties (for 26 of 1000
        # steps, say), and which integer timestep a tie lands on is part of the convention.
        t = np.linspace(0, num_train - 1, steps + 1).round()[::-1][:-1] + offset
    else:
        raise ValueError(f"unknown spacing {kind!r}; choose leading or linspace")
    ts = torch.from_numpy(t.astype(np.int64))  # (steps,)
    if ts[0] >= num_train or ts[-1] < 0 or bool((ts[:-1] <= ts[1:]).any()):
        raise _steps_error(num_train, steps, kind, offset)
    return ts


def timesteps(num_train: int, steps: int, kind: Spacing, offset: int = 0, start: int | None = None) -> list[int]:
    """The timesteps a sampler runs: :func:`spacing`, and with ``start`` only those ``<= start``.

    ``start`` is how every sampler begins at an intermediate noise level (SDEdit / img2img): its
    ``noise`` argument is then x at the first timestep kept, and the spacing stays that of
    ``steps`` over the whole schedule, so fewer steps run. ConfigError when none is ``<= start``.
    """
    ts = spacing(num_train, steps, kind, offset).tolist()
    if start is None:
        return ts
    kept = [t for t in ts if t <= start]
    if not kept:
        raise ConfigError(
            f"start={start} is below every timestep of {steps} steps (the lowest is {ts[-1]})",
            hint="start higher (a larger --strength) or take more --steps",
        )
    return kept


def _steps_error(num_train: int, steps: int, kind: str, offset: int) -> ConfigError:
    most = num_train if kind == "leading" and offset == 0 else num_train - 1
    return ConfigError(
        f"steps={steps} does not fit a schedule of {num_train} timesteps ({kind} spacing, offset {offset})",
        hint=f"choose steps between 1 and {most}",
    )


def check_prediction(prediction: str) -> None:
    """Raise ConfigError unless ``prediction`` is one of eps, x0 and v."""
    if prediction not in PREDICTIONS:
        raise ConfigError(
            f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}",
            hint="use the parameterisation the model was trained with",
        )


def alpha_bar(schedule: Schedule, t: int) -> float:
    """alpha_bar at integer timestep ``t`` as a float64 Python scalar."""
    return float(schedule.alphas_cumprod[t])


def predict(model_fn: ModelFn, schedule: Schedule, x: Tensor, t: int, prediction: str) -> tuple[Tensor, Tensor]:
    """Call the model on the whole batch at timestep ``t``; return the (eps, x0) it implies."""
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
    out = model_fn(x, tt).to(x.dtype)
    return schedule.to_eps(x, tt, out, prediction), schedule.to_x0(x, tt, out, prediction)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, in its dtype, drawn from ``generator``.

    The draw happens on the generator's device and is moved to ``x``'s, so a CPU generator can
    drive a CUDA sampler reproducibly (diffusers' ``randn_tensor`` does the same). When the two
    devices agree, this is exactly ``torch.randn(x.shape, generator=..., dtype=x.dtype)``.
    """
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


__all__ = [
    "PREDICTIONS",
    "BlendFn",
    "ModelFn",
    "Sampler",
    "Spacing",
    "StepCallback",
    "alpha_bar",
    "check_prediction",
    "predict",
    "randn_like",
    "spacing",
    "timesteps",
]
