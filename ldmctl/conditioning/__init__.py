"""Conditioning: the :class:`Cond` the UNet consumes and the :class:`Conditioner` plugin contract."""

from ldmctl.conditioning.base import KINDS, Cond, Conditioner, CondKind, CondOutput, LatentSpec, collate_items

__all__ = ["KINDS", "Cond", "CondKind", "CondOutput", "Conditioner", "LatentSpec", "collate_items"]
