"""Exponential moving average of model weights (the weights samples are drawn from).

``decay_n = min(decay, (1 + n) / (10 + n))`` after n updates when warm-up is on (CompVis'
``LitEma``), so early averages are not dominated by the random initialisation. Buffers are copied,
not averaged. The shadow is a plain dict of tensors: it saves into the same safetensors file as
the model under an ``ema.`` prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """Shadow copy of a module's floating-point parameters, updated in place."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """The decay the next update will use."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * weights for parameters; buffers are copied."""
        d = self.current_decay()
        params = dict(model.named_parameters())
        for name, value in model.state_dict().items():
            target = self.shadow[name]
            if name in params and value.is_floating_point():
                target.lerp_(value.detach().to(target.dtype), 1.0 - d)
            else:
                target.copy_(value)
        self.updates += 1

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model``."""
        model.load_state_dict(self.shadow, strict=True)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, shadow: dict[str, Tensor], updates: int) -> None:
        missing = set(self.shadow) ^ set(shadow)
        if missing:
            raise KeyError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
        self.updates = int(updates)


__all__ = ["EMA"]
