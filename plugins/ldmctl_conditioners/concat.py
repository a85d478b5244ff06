"""``concat``: a spatial condition (low-res image, mask, map) resized to the latent grid and joined
to z_t on the channel axis (LDM §3.3; the super-resolution and inpainting models)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ldmctl.conditioning import Conditioner, CondOutput, LatentSpec
from ldmctl.data import load_image, pil_to_tensor
from ldmctl.errors import DataError, InputError


def read_image(path: str, channels: int, who: str) -> torch.Tensor:
    """An image file as a (channels, H, W) tensor in [-1, 1]: RGB for 3 channels, grey for 1."""
    if channels not in (1, 3):
        raise InputError(
            f"{who} with {channels} channels cannot read an image file",
            hint="only 1- and 3-channel conditions can be given as images",
        )
    x = pil_to_tensor(load_image(path))  # (3, H, W); DataError names a missing or unreadable file
    return x.mean(0, keepdim=True) if channels == 1 else x


class ImageConcat(Conditioner):
    """Reads ``batch["cond_image"]`` (B, C, H, W) in [-1, 1]; outputs (B, C, h, w) on the latent grid.

    The target grid is ``batch["latent_hw"]`` when given (sampling at another size), else the
    training latent size. Resizing is bilinear with antialiasing; the null condition is zeros.
    At sample time the input is the path of an image file (``--input cond_image=lr.png``).
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

    def parse_input(self, text: str) -> torch.Tensor:
        """An image file -> (C, H, W) in [-1, 1] (RGB for 3 channels, grey for 1)."""
        return read_image(text, self.config.channels, self.name)

    def describe_input(self) -> str:
        return "the path of an image file"

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


class DerivedLatentConcat(Conditioner):
    """Base of the conditioners that read a latent the model derives from an image (``derived_from``,
    which is what a user gives at sample time: ``--input KEY=PATH``): (B, C, h, w), resized to the
    latent grid and joined to z_t on the channel axis. Null: zeros."""

    kind = "concat"
    derived_from: str  # the batch key(s) the model derives the latent from, for messages
    image_about: str  # what the image given at sample time is, for messages

    @dataclass(frozen=True)
    class Config:
        pass

    @property
    def out_dim(self) -> int:
        return self.latent.channels

    def parse_input(self, text: str) -> torch.Tensor:
        """The image file the model derives this latent from -> (3, H, W) in [-1, 1]."""
        return read_image(text, 3, self.name)

    def describe_input(self) -> str:
        return f"the path of {self.image_about} (the model derives the latent from it)"

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        return latent_on_grid(self, batch, derived_from=self.derived_from)

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        s = self.latent.size
        return CondOutput(torch.zeros(batch_size, self.latent.channels, s, s, device=device))


class LatentConcat(DerivedLatentConcat):
    """Reads ``batch["cond_latent"]``: the first stage's latent of the conditioning image upscaled
    (bicubic) to the output size, which the model derives from ``batch["cond_image"]``
    (``LatentDiffusion.derived_inputs``). Joined to z_t on the channel axis, it hands the UNet the
    upscaled input already in latent coordinates, so super-resolution only has to learn the
    difference (a latent-space analogue of predicting the residual over bicubic). Null: zeros.
    It has no sample-time input of its own: the model derives it from ``cond_image``, so at sample
    time this conditioner reads that image (``--input cond_image=PATH``) when no other does.
    """

    name = "latent-concat"
    aliases = ("concat-latent",)
    input_key = "cond_latent"
    derived_from = "'cond_image'"
    image_about = "the low-res image"


def latent_on_grid(c: Conditioner, batch: Mapping[str, Any], *, derived_from: str) -> CondOutput:
    """``batch[c.input_key]``, a (B, C, h, w) latent the model derives ``derived_from``, resized
    (bilinear) to the batch's latent grid (``latent_hw``, else the training size); DataError if it is
    missing or is not a latent of the model's channels."""
    z = batch.get(c.input_key)
    if z is None:
        raise DataError(
            f"the {c.name} conditioner needs batch[{c.input_key!r}] (or {derived_from} for the model to derive it), "
            "which is missing"
        )
    if z.ndim != 4 or z.shape[1] != c.latent.channels:
        raise DataError(f"{c.name} expects (B, {c.latent.channels}, h, w) latents, got {tuple(z.shape)}")
    hw = tuple(batch.get("latent_hw") or (c.latent.size, c.latent.size))
    if tuple(z.shape[-2:]) != hw:
        z = F.interpolate(z.float(), size=hw, mode="bilinear", align_corners=False)
    return CondOutput(z.float())
