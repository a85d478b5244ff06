"""The inpainting conditioners (Stable Diffusion's inpainting UNet): the mask and the latent of the
masked image, joined to z_t on the channel axis. With a 4-channel first stage the UNet reads
4 (z_t) + 1 (mask) + 4 (masked latent) = 9 channels.

Both are inputs of the task, not conditions to guide by: an inpainting model trains them without
condition dropout (``ldmctl.inpaint.task.with_inpaint_task``), and the unconditional branch of
guidance keeps them. The model derives ``masked_latent`` itself from the image to inpaint and the
mask (``ldmctl.inpaint.task.InpaintTask``), so at sample time the user gives those two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ldmctl.conditioning import Conditioner, CondOutput, LatentSpec
from ldmctl.errors import DataError
from ldmctl_conditioners.concat import DerivedLatentConcat, read_image


def _latent_hw(batch: Mapping[str, Any], latent: LatentSpec) -> tuple[int, int]:
    hw = batch.get("latent_hw")
    return (int(hw[0]), int(hw[1])) if hw is not None else (latent.size, latent.size)


class MaskConcat(Conditioner):
    """Reads ``batch["inpaint_mask"]`` (B, 1, H, W), 1 = repaint, 0 = keep; outputs (B, 1, h, w): the
    fraction of each latent cell's pixels to repaint (area resize to the latent grid,
    ``batch["latent_hw"]`` when given). At sample time: a mask image, white = repaint. Null: zeros."""

    name = "mask-concat"
    kind = "concat"
    input_key = "inpaint_mask"

    @dataclass(frozen=True)
    class Config:
        pass

    @property
    def out_dim(self) -> int:
        return 1

    def parse_input(self, text: str) -> torch.Tensor:
        """A mask image file -> (1, H, W) in {0, 1}: pixels brighter than mid-grey are repainted."""
        return (read_image(text, 1, self.name) > 0).float()

    def describe_input(self) -> str:
        return "the path of a mask image (white = repaint)"

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        m = batch.get(self.input_key)
        if m is None:
            raise DataError(f"the {self.name} conditioner needs batch[{self.input_key!r}], which is missing")
        if m.ndim != 4 or m.shape[1] != 1:
            raise DataError(f"{self.name} expects (B, 1, H, W) masks, got {tuple(m.shape)}")
        hw = _latent_hw(batch, self.latent)
        m = m.float()
        if tuple(m.shape[-2:]) != hw:
            m = F.adaptive_avg_pool2d(m, hw)  # (B, 1, h, w): the repainted fraction of each cell
        return CondOutput(m)

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        s = self.latent.size
        return CondOutput(torch.zeros(batch_size, 1, s, s, device=device))


class MaskedLatentConcat(DerivedLatentConcat):
    """Reads ``batch["masked_latent"]`` (B, C, h, w): the first stage's latent of the image with its
    masked pixels set to 0 (grey), which the model derives from the image to inpaint and
    ``inpaint_mask``. It has no sample-time input of its own: it reads the image to inpaint
    (``--input image=PATH``) the latent is made of. Null: zeros."""

    name = "masked-latent-concat"
    input_key = "masked_latent"
    derived_from = "'image' and 'inpaint_mask'"
    image_about = "the image to inpaint"
