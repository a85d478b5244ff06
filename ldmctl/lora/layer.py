"""The one LoRA layer: a linear map with named low-rank adapters beside it.

::

    x ──► W x + b ──────────────────────────────────────► (+) ──► y
      └─► dropout ─► down_p (r x in) ─► up_p (out_p x r) ─► × scale_p · multiplier    (one pair per part p)

:class:`LoRALinear` *is* an ``nn.Linear`` holding the very same ``weight`` and ``bias`` parameters as
the layer it replaces, so the base weights keep their state-dict keys and stay untouched. A fused
projection (our self-attention ``to_qkv``, cross-attention ``to_kv``) is split into its parts on the
output axis (``to_q``, ``to_k``, ``to_v``), and each part has its own (down, up) pair, as in diffusers
and peft where those are separate layers; a part without an adapter adds zeros.

The base output is computed first, exactly as ``nn.Linear`` does, and an adapter is added only when its
multiplier is non-zero: a multiplier of 0 gives the base layer bit for bit, and so does a fresh adapter
(``up`` = 0 adds exact zeros). Under autocast the delta is computed in the autocast dtype like the base.
Adapter tensors live in ``lora.<name>.down.<part>`` / ``lora.<name>.up.<part>`` of the layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Adapter(nn.Module):
    """One named adapter of one linear map: ``down[p]`` (r, in) and ``up[p]`` (out_p, r) per part ``p``."""

    def __init__(self, dropout: float = 0.0, multiplier: float = 1.0) -> None:
        super().__init__()
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()
        self.scales: dict[str, float] = {}  # part -> alpha / rank (fixed by the adapter's config)
        self.multiplier = float(multiplier)  # the user's strength (sample --lora FILE:SCALE)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def set_part(self, part: str, down: Tensor, up: Tensor, scale: float, trainable: bool) -> None:
        self.down[part] = nn.Parameter(down, requires_grad=trainable)
        self.up[part] = nn.Parameter(up, requires_grad=trainable)
        self.scales[part] = float(scale)

    def factor(self, part: str) -> float:
        return self.scales[part] * self.multiplier


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus adapters; ``parts`` names the equal slices of the output axis (one for an
    unfused projection)."""

    def __init__(self, base: nn.Linear, parts: tuple[str, ...]) -> None:
        nn.Module.__init__(self)
        if base.out_features % len(parts):
            raise ValueError(f"{base.out_features} outputs do not split into parts {parts}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.parts = tuple(parts)
        self.lora = nn.ModuleDict()

    @property
    def chunk(self) -> int:
        """Output rows of one part."""
        return self.out_features // len(self.parts)

    def adapter(self, name: str, dropout: float = 0.0, multiplier: float = 1.0) -> Adapter:
        """The adapter called ``name``, created empty if this layer has none by that name."""
        if name not in self.lora:
            self.lora[name] = Adapter(dropout, multiplier)
        return self.lora[name]  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        for adapter in self.lora.values():
            if adapter.multiplier != 0:
                y = y + self._delta(adapter, x)
        return y

    def _delta(self, adapter: Adapter, x: Tensor) -> Tensor:
        h = adapter.dropout(x)
        pieces: list[Tensor | None] = []
        for part in self.parts:
            if part not in adapter.down:
                pieces.append(None)
                continue
            down, up = adapter.down[part], adapter.up[part]
            low = F.linear(h, down.to(h.dtype))  # (..., r)
            pieces.append(F.linear(low, up.to(low.dtype)) * adapter.factor(part))  # (..., out_p)
        if len(pieces) == 1:
            return pieces[0]  # type: ignore[return-value]
        like = next(p for p in pieces if p is not None)
        zeros = like.new_zeros(like.shape)
        return torch.cat([zeros if p is None else p for p in pieces], dim=-1)

    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """Sum over the active adapters of ``factor * up @ down`` as an (out, in) float32 matrix."""
        total = torch.zeros(self.weight.shape, dtype=torch.float32, device=self.weight.device)
        for adapter in self.lora.values():
            if adapter.multiplier == 0:
                continue
            for slot, part in enumerate(self.parts):
                if part in adapter.down:
                    dw = adapter.up[part].float() @ adapter.down[part].float()
                    total[slot * self.chunk : (slot + 1) * self.chunk] += dw * adapter.factor(part)
        return total

    def plain(self) -> nn.Linear:
        """An ``nn.Linear`` holding this layer's own weight and bias parameters (no adapters)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight = self.weight
        lin.register_parameter("bias", self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, parts={self.parts}, adapters={list(self.lora)}"


__all__ = ["Adapter", "LoRALinear"]
