"""Example third-party conditioners for ldmctl, both ``add`` vectors:

* ``colour``: the colour words of a caption (reads the built-in key ``caption``);
* ``brightness``: a number per image in [0, 1] (a new key, ``brightness``, which a folder gives in
  its ``metadata.jsonl``: ``{"file_name": "a.png", "brightness": 0.8}``). It shows the sample-time
  contract: ``ldmctl sample CKPT --input brightness=0.8`` parses the value with ``parse_input``,
  and without ``--input`` the samples sweep 0..1 (``default_inputs``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ldmctl import hookimpl
from ldmctl.conditioning import Conditioner, CondOutput, LatentSpec
from ldmctl.errors import InputError

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

    def describe_input(self) -> str:
        return 'a prompt naming colours (--prompt "a red circle")'

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        captions = batch[self.input_key]
        return CondOutput(self.mlp(self._multi_hot([captions] if isinstance(captions, str) else list(captions))))

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        return CondOutput(self.mlp(torch.zeros(batch_size, len(COLOURS), device=self.device)))


class Brightness(Conditioner):
    """A brightness in [0, 1] per image -> sin/cos features -> MLP -> (B, dim). Null: a learned vector."""

    name = "brightness"
    kind = "add"
    input_key = "brightness"

    @dataclass(frozen=True)
    class Config:
        dim: int = 64  # output width
        frequencies: int = 4  # sin/cos pairs at 1, 2, 4, ... cycles over [0, 1]

    def __init__(self, config: Config, latent: LatentSpec) -> None:
        super().__init__(config, latent)
        self.mlp = nn.Sequential(
            nn.Linear(2 * config.frequencies, config.dim), nn.SiLU(), nn.Linear(config.dim, config.dim)
        )
        self.null_vector = nn.Parameter(torch.zeros(config.dim))

    @property
    def out_dim(self) -> int:
        return self.config.dim

    # the sample-time contract: one command-line value -> one number; numbers collate into a tensor
    def parse_input(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"{text!r} is not a number", hint=f"give {self.describe_input()}") from None
        if not 0.0 <= value <= 1.0:
            raise InputError(f"brightness {value} is outside [0, 1]", hint=f"give {self.describe_input()}")
        return value

    def default_inputs(self, n: int) -> list[float]:
        return [i / max(n - 1, 1) for i in range(n)]  # a sweep from dark to bright

    def describe_input(self) -> str:
        return "a number from 0 (dark) to 1 (bright)"

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        x = torch.as_tensor(batch[self.input_key], dtype=torch.float32, device=self.device).reshape(-1, 1)
        k = 2.0 ** torch.arange(self.config.frequencies, device=self.device) * torch.pi * 2
        return CondOutput(self.mlp(torch.cat([torch.sin(x * k), torch.cos(x * k)], dim=1)))  # (B, dim)

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        return CondOutput(self.null_vector.expand(batch_size, -1))


@hookimpl
def ldmctl_register_conditioners(register: Callable[[type], None]) -> None:
    register(ColourWords)
    register(Brightness)
