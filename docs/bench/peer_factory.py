"""ldmctl models for ``../shared/bench/diffusers_baseline.py --peer-factory`` (side-by-side timing).

    python ../shared/bench/diffusers_baseline.py --groups side_by_side \\
        --peer-factory docs/bench/peer_factory.py:build --peer-kinds vae

``build(kind, config)`` receives a bench config name and the diffusers constructor kwargs and
returns the ldmctl model with the same architecture, or None for kinds ldmctl does not have yet.
"""

from __future__ import annotations

import torch
from torch import nn

from ldmctl.autoencoder import build_autoencoder
from ldmctl.config import AutoencoderConfig


class VAEAdapter(nn.Module):
    """``model(x) -> (recon, kl)``: encode, sample the posterior, decode (the bench convention)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.inner.posterior(x)
        return self.inner.decode(posterior.sample()), posterior.kl()


def vae_config(config: dict) -> AutoencoderConfig:
    """Translate diffusers AutoencoderKL kwargs into the equivalent AutoencoderConfig."""
    widths = tuple(config["block_out_channels"])
    base = widths[0]
    return AutoencoderConfig(kind="kl", in_channels=config.get("in_channels", 3), base_channels=base,
                             channel_mult=tuple(w // base for w in widths),
                             num_res_blocks=config.get("layers_per_block", 1),
                             z_channels=config.get("latent_channels", 4),
                             norm_groups=config.get("norm_num_groups", 32))


def build(kind: str, config: dict) -> nn.Module | None:
    torch.manual_seed(0)
    if kind == "vae":
        return VAEAdapter(build_autoencoder(vae_config(config)))
    return None  # the UNet arrives with the diffusion core
