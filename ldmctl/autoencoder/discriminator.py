"""PatchGAN discriminator (Isola et al. 2017, pix2pix), as used by VQGAN and LDM first stages.

A stack of 4x4 convolutions: ``n_layers`` stride-2 layers widening the channels (capped at
8x), one stride-1 layer, and a stride-1 conv to one logit per overlapping patch. BatchNorm and
LeakyReLU(0.2) as in pix2pix; conv weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02).
"""

from __future__ import annotations

from torch import Tensor, nn

from ldmctl.errors import ConfigError


def _init_weights(module: nn.Module) -> None:
    """pix2pix initialisation: conv ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """Images (B, in_channels, H, W) -> patch logits (B, 1, H', W').

    Needs H, W >= 3 * 2**n_layers (each stride-2 layer halves the size, the two final 4x4
    stride-1 layers each remove one pixel).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 1 or channels < 1:
            raise ConfigError(f"loss.disc_layers={n_layers} and loss.disc_channels={channels} must both be >= 1")
        self.n_layers = n_layers
        self.min_size = 3 * 2**n_layers
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = channels
        for n in range(1, n_layers + 1):
            out = channels * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last widening layer keeps the size
            layers += [
                nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))  # one logit per patch
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ConfigError(
                f"images of size {tuple(x.shape[-2:])} are too small for a "
                f"{self.n_layers}-layer PatchGAN (needs >= {self.min_size})",
                hint="lower loss.disc_layers or train on larger crops",
            )
        return self.main(x)


__all__ = ["NLayerDiscriminator"]
