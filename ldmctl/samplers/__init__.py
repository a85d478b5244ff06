"""Samplers: free functions with one signature that turn x_T into x_0 (see :mod:`.common`).

=======  ==========================================  ===================  ======================
name     method                                      model calls          diffusers equivalent
=======  ==========================================  ===================  ======================
ddpm     ancestral sampling (Ho et al. 2020)         steps                DDPMScheduler
ddim     DDIM, eta-stochastic (Song et al. 2021)     steps                DDIMScheduler
plms     pseudo linear multistep (Liu et al. 2022)   steps + 1            PNDMScheduler (PLMS)
dpmpp    DPM-Solver++(2M) (Lu et al. 2022)           steps                DPMSolverMultistep
=======  ==========================================  ===================  ======================

The registry lives here rather than in ``common`` because it names the sampler functions,
which import ``common``.
"""

from __future__ import annotations

from ldmctl.errors import ConfigError
from ldmctl.samplers.common import BlendFn, ModelFn, Sampler, Spacing, StepCallback, spacing, timesteps
from ldmctl.samplers.ddim import SPACING as DDIM_SPACING
from ldmctl.samplers.ddim import ddim
from ldmctl.samplers.ddpm import SPACING as DDPM_SPACING
from ldmctl.samplers.ddpm import ddpm
from ldmctl.samplers.dpmpp import SPACING as DPMPP_SPACING
from ldmctl.samplers.dpmpp import dpmpp
from ldmctl.samplers.plms import SPACING as PLMS_SPACING
from ldmctl.samplers.plms import plms

SAMPLERS: dict[str, Sampler] = {"ddpm": ddpm, "ddim": ddim, "plms": plms, "dpmpp": dpmpp}
SPACINGS: dict[str, tuple[Spacing, int]] = {
    "ddpm": DDPM_SPACING,
    "ddim": DDIM_SPACING,
    "plms": PLMS_SPACING,
    "dpmpp": DPMPP_SPACING,
}  # name -> (kind, offset) of the timesteps the sampler visits


def get_sampler(name: str) -> Sampler:
    """Return the sampler registered as ``name``; ConfigError naming the choices otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}",
            hint="ddim is deterministic and a good default; dpmpp needs the fewest steps",
        ) from None


def sampler_timesteps(sampler: Sampler | str, num_train: int, steps: int, start: int | None = None) -> list[int]:
    """The timesteps ``sampler`` (a function of :data:`SAMPLERS` or its name) runs for ``steps`` steps
    of a ``num_train``-step schedule, with ``start`` only those ``<= start`` (ConfigError if none)."""
    name = sampler if isinstance(sampler, str) else next((k for k, v in SAMPLERS.items() if v is sampler), None)
    if name not in SPACINGS:
        raise ValueError(f"{sampler!r} is not a sampler of ldmctl.samplers.SAMPLERS")
    return timesteps(num_train, steps, *SPACINGS[name], start=start)


__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "BlendFn",
    "ModelFn",
    "Sampler",
    "StepCallback",
    "ddim",
    "ddpm",
    "dpmpp",
    "get_sampler",
    "plms",
    "sampler_timesteps",
    "spacing",
]
