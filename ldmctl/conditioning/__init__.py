"""Conditioning: the :class:`Cond` the UNet consumes (mechanisms arrive as plugins)."""

from ldmctl.conditioning.base import Cond

__all__ = ["Cond"]
