"""First-stage autoencoders (Rombach et al. 2022, §3.1): KL- and VQ-regularised, plus their loss.

``build_autoencoder(cfg)`` dispatches on ``cfg.kind``. Both models share the interface
``encode(x) -> z``, ``decode(z) -> x``, ``forward(x) -> AEOutput``, ``last_layer`` and the
``scale_factor`` buffer that the latent diffusion model multiplies latents by.
"""

from __future__ import annotations

from ldmctl.autoencoder.coders import AEOutput, Decoder, Encoder
from ldmctl.autoencoder.discriminator import NLayerDiscriminator
from ldmctl.autoencoder.kl import AutoencoderKL, DiagonalGaussianDistribution
from ldmctl.autoencoder.losses import AELoss, adaptive_weight
from ldmctl.autoencoder.perceptual import LPIPSDistance, build_perceptual, default_backbone_path
from ldmctl.autoencoder.vq import VectorQuantizer, VQModel
from ldmctl.config import AutoencoderConfig
from ldmctl.errors import ConfigError


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL | VQModel:
    """Build the autoencoder ``cfg`` describes (``cfg.kind`` is "kl" or "vq")."""
    if cfg.kind == "kl":
        return AutoencoderKL(cfg)
    if cfg.kind == "vq":
        return VQModel(cfg)
    raise ConfigError(f"model.kind={cfg.kind!r} is not one of ['kl', 'vq']")


__all__ = [
    "AELoss",
    "AEOutput",
    "AutoencoderKL",
    "Decoder",
    "DiagonalGaussianDistribution",
    "Encoder",
    "LPIPSDistance",
    "NLayerDiscriminator",
    "VQModel",
    "VectorQuantizer",
    "adaptive_weight",
    "build_autoencoder",
    "build_perceptual",
    "default_backbone_path",
]
