"""ldmctl models for ``../shared/bench/diffusers_baseline.py --peer-factory`` (side-by-side timing).

    python ../shared/bench/diffusers_baseline.py --groups side_by_side \\
        --peer-factory bench/peer_factory.py:build --peer-kinds unet_small,vae

``build(kind, config)`` receives a bench config name and the diffusers constructor kwargs and
returns the ldmctl model with the same architecture, or None for kinds ldmctl does not have yet.
"""

from __future__ import annotations

import torch
from torch import nn

from ldmctl.autoencoder import build_autoencoder
from ldmctl.conditioning import Cond
from ldmctl.config import AutoencoderConfig, UNetConfig
from ldmctl.unet import UNet


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
    return AutoencoderConfig(
        kind="kl",
        in_channels=config.get("in_channels", 3),
        base_channels=base,
        channel_mult=tuple(w // base for w in widths),
        num_res_blocks=config.get("layers_per_block", 1),
        z_channels=config.get("latent_channels", 4),
        norm_groups=config.get("norm_num_groups", 32),
    )


class UNetAdapter(nn.Module):
    """``model(x, t, context) -> prediction``: the bench's call convention on top of ``UNet``."""

    def __init__(self, inner: UNet) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.inner(x, t, Cond(context=context))


def unet_config(config: dict) -> UNetConfig:
    """Translate diffusers UNet2DConditionModel kwargs into the equivalent UNetConfig.

    diffusers' ``attention_head_dim`` is really the number of heads per level (diffusers #2011);
    the bench configs give 32 channels per head everywhere, which is ldmctl's ``head_channels``.
    """
    widths = tuple(config["block_out_channels"])
    heads = config["attention_head_dim"]
    head_channels = {w // h for w, h in zip(widths, heads, strict=True)}
    if len(head_channels) != 1:
        raise ValueError(f"per-level head widths differ: {head_channels}")
    return UNetConfig(
        in_channels=config["in_channels"],
        out_channels=config["out_channels"],
        model_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=config["layers_per_block"],
        attention_levels=tuple(i for i, b in enumerate(config["down_block_types"]) if b.startswith("CrossAttn")),
        head_channels=head_channels.pop(),
        context_dim=config["cross_attention_dim"],
        norm_groups=config["norm_num_groups"],
    )


def build(kind: str, config: dict) -> nn.Module | None:
    torch.manual_seed(0)
    if kind == "vae":
        return VAEAdapter(build_autoencoder(vae_config(config)))
    if kind.startswith("unet"):
        return UNetAdapter(UNet(unet_config(config)))
    return None
