"""Example third-party conditioner for ldmctl: the colour words of a caption, as an ``add`` vector."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ldmctl import hookimpl
from ldmctl.conditioning import CondOutput, Conditioner, LatentSpec

COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "magenta", "white", "black", "grey")


class ColourWords(Conditioner):
    """Multi-hot colour words of ``batch["caption"]`` -> MLP -> (B, dim). Null: the all-zero vector's output."""

    name = "colour"
    kind = "add"
    input_key = "caption"

    @dataclass(frozen=True)
    class Config:
        dim: int = 64  # output width

    def __init__(self, config: Config, latent: LatentSpec) -> None:
        super().__init__(config, latent)
        self.mlp = nn.Sequential(nn.Linear(len(COLOURS), config.dim), nn.SiLU(), nn.Linear(config.dim, config.dim))

    @property
    def out_dim(self) -> int:
        return self.config.dim

    def _multi_hot(self, captions: list[str]) -> torch.Tensor:
        out = torch.zeros(len(captions), len(COLOURS), device=self.device)
        for i, text in enumerate(captions):
            words = set(re.findall(r"[a-z]+", text.lower()))
            for j, colour in enumerate(COLOURS):
                out[i, j] = float(colour in words)
        return out

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        captions = batch[self.input_key]
        return CondOutput(self.mlp(self._multi_hot([captions] if isinstance(captions, str) else list(captions))))

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        return CondOutput(self.mlp(torch.zeros(batch_size, len(COLOURS), device=self.device)))


@hookimpl
def ldmctl_register_conditioners(register: Callable[[type], None]) -> None:
    register(ColourWords)
