"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around the UNet call.

``cfg_model_fn(unet, cond, uncond, scale)`` returns a ``model_fn(z_t, t)`` for any sampler: it runs
the conditional and the unconditional inputs as one batch of 2B and returns
``out_uncond + scale * (out_cond - out_uncond)``. The combination is linear in the model output,
so it is exact for every parameterisation (eps, x0, v). Samplers never know about guidance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ldmctl.conditioning.base import Cond

UNetCall = Callable[[Tensor, Tensor, Cond], Tensor]


def _cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError("cond and uncond must set the same Cond fields")
    return torch.cat([a, b])


def _cat_sequences(
    a: Tensor | None, am: Tensor | None, b: Tensor | None, bm: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """Join two (B, L, D) sequences of possibly different lengths along the batch, padding the
    shorter with masked zeros; masks (True = real token) are created where needed."""
    if a is None and b is None:
        return None, None
    if a is None or b is None:
        raise ValueError("cond and uncond must set the same Cond fields")
    if a.shape[1] == b.shape[1] and am is None and bm is None:
        return torch.cat([a, b]), None
    length = max(a.shape[1], b.shape[1])
    parts, masks = [], []
    for x, m in ((a, am), (b, bm)):
        m = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if m is None else m.bool()
        pad = length - x.shape[1]
        parts.append(torch.cat([x, x.new_zeros(x.shape[0], pad, x.shape[2])], 1) if pad else x)
        masks.append(torch.cat([m, m.new_zeros(m.shape[0], pad)], 1) if pad else m)
    return torch.cat(parts), torch.cat(masks)


def stack_conds(uncond: Cond, cond: Cond) -> Cond:
    """One Cond whose every field is [uncond; cond] along the batch axis."""
    context, context_mask = _cat_sequences(uncond.context, uncond.context_mask, cond.context, cond.context_mask)
    tokens, tokens_mask = _cat_sequences(uncond.tokens, uncond.tokens_mask, cond.tokens, cond.tokens_mask)
    return Cond(
        concat=_cat(uncond.concat, cond.concat),
        add=_cat(uncond.add, cond.add),
        context=context,
        context_mask=context_mask,
        tokens=tokens,
        tokens_mask=tokens_mask,
    )


def plain_model_fn(unet: UNetCall, cond: Cond | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """``model_fn(z_t, t)`` without guidance."""
    c = cond or Cond()
    return lambda z_t, t: unet(z_t, t, c)


def cfg_model_fn(unet: UNetCall, cond: Cond, uncond: Cond, scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    """``model_fn(z_t, t)`` with classifier-free guidance of strength ``scale`` (1 = none)."""
    if scale == 1.0:
        return plain_model_fn(unet, cond)
    both = stack_conds(uncond, cond)

    def model_fn(z_t: Tensor, t: Tensor) -> Tensor:
        out = unet(torch.cat([z_t, z_t]), torch.cat([t, t]), both)
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    return model_fn


__all__ = ["cfg_model_fn", "plain_model_fn", "stack_conds"]
