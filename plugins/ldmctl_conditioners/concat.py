"""``concat``: a spatial condition (low-res image, mask, map) resized to the latent grid and joined
to z_t on the channel axis (LDM §3.3; the super-resolution and inpainting models)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ldmctl.conditioning import CondOutput, Conditioner, LatentSpec
from ldmctl.errors import DataError


class ImageConcat(Conditioner):
    """Reads ``batch["cond_image"]`` (B, C, H, W) in [-1, 1]; outputs (B, C, h, w) on the latent grid.

    The target grid is ``batch["latent_hw"]`` when given (sampling at another size), else the
    training latent size. Resizing is bilinear with antialiasing; the null condition is zeros.
    """

    name = "image-concat"
    aliases = ("concat",)
    kind = "concat"
    input_key = "cond_image"

    @dataclass(frozen=True)
    class Config:
        channels: int = 3  # channels of the conditioning image

    def __init__(self, config: Config, latent: LatentSpec) -> None:
        super().__init__(config, latent)

    @property
    def out_dim(self) -> int:
        return self.config.channels

    def _hw(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        hw = batch.get("latent_hw")
        return tuple(hw) if hw is not None else (self.latent.size, self.latent.size)

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        x = batch.get(self.input_key)
        if x is None:
            raise DataError(f"the concat conditioner needs batch[{self.input_key!r}], which is missing")
        if x.ndim != 4 or x.shape[1] != self.config.channels:
            raise DataError(f"concat expects (B, {self.config.channels}, H, W) images, got {tuple(x.shape)}")
        h, w = self._hw(batch)
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return CondOutput(x)

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        """Zeros on the training latent grid (the composer uses zeros of the conditional shape)."""
        s = self.latent.size
        return CondOutput(torch.zeros(batch_size, self.config.channels, s, s, device=device))


class LatentConcat(Conditioner):
    """Reads ``batch["cond_latent"]``: the first stage's latent of the conditioning image upscaled
    (bicubic) to the output size, which the model derives from ``batch["cond_image"]``
    (``LatentDiffusion.derived_inputs``). Joined to z_t on the channel axis, it hands the UNet the
    upscaled input already in latent coordinates, so super-resolution only has to learn the
    difference (a latent-space analogue of predicting the residual over bicubic). Null: zeros.
    """

    name = "latent-concat"
    aliases = ("concat-latent",)
    kind = "concat"
    input_key = "cond_latent"

    @dataclass(frozen=True)
    class Config:
        pass

    @property
    def out_dim(self) -> int:
        return self.latent.channels

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        z = batch.get(self.input_key)
        if z is None:
            raise DataError(f"the concat-latent conditioner needs batch[{self.input_key!r}] (or 'cond_image' "
                            "for the model to derive it), which is missing")
        if z.ndim != 4 or z.shape[1] != self.latent.channels:
            raise DataError(f"concat-latent expects (B, {self.latent.channels}, h, w) latents, got {tuple(z.shape)}")
        hw = batch.get("latent_hw") or (self.latent.size, self.latent.size)
        if tuple(z.shape[-2:]) != tuple(hw):
            z = F.interpolate(z.float(), size=tuple(hw), mode="bilinear", align_corners=False)
        return CondOutput(z.float())

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        s = self.latent.size
        return CondOutput(torch.zeros(batch_size, self.latent.channels, s, s, device=device))
