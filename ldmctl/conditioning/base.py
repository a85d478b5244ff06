"""What conditioning hands the UNet: a :class:`Cond`, one optional tensor per entry point.

The UNet reads these four fields and nothing else, so it never knows which mechanism (or
plugin) produced them:

* ``concat``  (B, Cc, h, w): joined to z_t on the channel axis (the UNet is built with
  ``UNetConfig.concat_channels = Cc``);
* ``add``     (B, D_add): projected to the timestep-embedding width and added to it
  (``UNetConfig.add_dim = D_add``);
* ``context`` (B, L, D_ctx): keys and values of the cross-attention in every SpatialTransformer
  (``UNetConfig.context_dim = D_ctx``); ``context_mask`` (B, L) bool marks real tokens;
* ``tokens``  (B, M, D_tok): joined in front of the image tokens for joint self-attention in every
  SpatialTransformer (``UNetConfig.token_dim = D_tok``); ``tokens_mask`` (B, M) bool.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Cond:
    """The conditioning inputs of one UNet call; every field is optional."""

    concat: Tensor | None = None
    add: Tensor | None = None
    context: Tensor | None = None
    context_mask: Tensor | None = None
    tokens: Tensor | None = None
    tokens_mask: Tensor | None = None


__all__ = ["Cond"]
