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
from ldmctl.samplers.common import ModelFn, Sampler, StepCallback, spacing
from ldmctl.samplers.ddim import ddim
from ldmctl.samplers.ddpm import ddpm
from ldmctl.samplers.dpmpp import dpmpp
from ldmctl.samplers.plms import plms

SAMPLERS: dict[str, Sampler] = {"ddpm": ddpm, "ddim": ddim, "plms": plms, "dpmpp": dpmpp}


def get_sampler(name: str) -> Sampler:
    """Return the sampler registered as ``name``; ConfigError naming the choices otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}",
            hint="ddim is deterministic and a good default; dpmpp needs the fewest steps",
        ) from None


__all__ = ["SAMPLERS", "ModelFn", "Sampler", "StepCallback", "ddim", "ddpm", "dpmpp", "get_sampler", "plms", "spacing"]
