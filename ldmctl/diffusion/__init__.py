"""Diffusion in latent space: the noise schedule, the training objective and the weight EMA."""

from ldmctl.diffusion.schedule import Schedule, extract, make_betas

__all__ = ["Schedule", "extract", "make_betas"]
