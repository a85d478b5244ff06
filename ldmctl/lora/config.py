"""What a LoRA adapter is made of: :class:`LoRAConfig`, stored in every adapter file ldmctl writes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ldmctl.errors import ConfigError

TARGETS = ("to_q", "to_k", "to_v", "to_out")  # the projections of an attention layer
LAYERS = ("attn1", "attn2")  # self-attention, cross-attention of a transformer block
TEXT_NAMES = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}  # CLIP's names -> ours


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021) on attention projections: W x + scale * up(down(x)).

    ``scale`` is ``alpha / rank`` (``alpha / sqrt(rank)`` with ``rank_stabilised``, rsLoRA, Kalajdzievski
    2023), so that changing the rank does not change the size of the update for a given learning rate."""

    rank: int = 8  # r: inner width of each (down, up) pair
    alpha: float = 8.0  # scale = alpha / rank (or alpha / sqrt(rank))
    targets: tuple[str, ...] = TARGETS  # which projections of each attention layer get an adapter
    layers: tuple[str, ...] = LAYERS  # attn1 (self-attention) and/or attn2 (cross-attention), every block
    rank_stabilised: bool = False  # rsLoRA scaling alpha / sqrt(rank)
    dropout: float = 0.0  # dropout on the adapter's input (training only)
    text: bool = False  # also adapt the clip-text conditioner's CLIP attention (q/k/v/out_proj)

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank, self.rank_stabilised)


def lora_scale(alpha: float, rank: int, rank_stabilised: bool = False) -> float:
    """The factor on ``up @ down``: alpha / rank, or alpha / sqrt(rank) (rsLoRA)."""
    return alpha / (math.sqrt(rank) if rank_stabilised else rank)


def check_lora_config(cfg: LoRAConfig) -> None:
    """ConfigError naming the field of a LoRAConfig that cannot be used."""
    if not isinstance(cfg.rank, int) or cfg.rank < 1:
        raise ConfigError(f"lora rank {cfg.rank!r} must be a whole number >= 1")
    if not cfg.alpha > 0 or not math.isfinite(cfg.alpha):
        raise ConfigError(f"lora alpha {cfg.alpha!r} must be a positive number")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"lora dropout {cfg.dropout!r} must be in [0, 1)")
    for field, given, known in (("targets", cfg.targets, TARGETS), ("layers", cfg.layers, LAYERS)):
        bad = [x for x in given if x not in known]
        if bad or not given:
            raise ConfigError(f"lora {field} {list(given)!r}: choose one or more of {list(known)}")


__all__ = ["LAYERS", "TARGETS", "TEXT_NAMES", "LoRAConfig", "check_lora_config", "lora_scale"]
