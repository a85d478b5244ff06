"""``class`` and ``class-token``: class labels as an embedding added to the timestep embedding, or
as a one-token cross-attention context (CompVis' ``ClassEmbedder``). Index ``num_classes`` is a
learned "no class" embedding used as the null condition (classifier-free guidance).

At sample time the input is a class index (``--label 3``, i.e. ``--input label=3``); by default the
samples go through every class in turn."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ldmctl.conditioning import Conditioner, CondOutput, LatentSpec
from ldmctl.errors import DataError, InputError


@dataclass(frozen=True)
class ClassConfig:
    num_classes: int = 0  # labels 0 .. num_classes - 1 (0 = the number of classes of the data set)
    dim: int = 256  # embedding width


class _ClassEmbedding(Conditioner):
    input_key = "label"
    Config = ClassConfig

    def __init__(self, config: ClassConfig, latent: LatentSpec) -> None:
        super().__init__(config, latent)
        if config.num_classes < 1:
            raise DataError(f"{self.name}: num_classes must be >= 1, got {config.num_classes}")
        self.embedding = nn.Embedding(config.num_classes + 1, config.dim)  # + the null class
        nn.init.normal_(self.embedding.weight, std=0.02)

    @classmethod
    def configure(cls, config: ClassConfig, dataset: Any) -> ClassConfig:
        if config.num_classes == 0:
            names = getattr(dataset, "class_names", [])
            if not names:
                raise DataError(
                    f"the {cls.name} conditioner needs labelled data (sub-folders or a labelled built-in)",
                    hint="or set its num_classes option",
                )
            return replace(config, num_classes=len(names))
        return config

    @property
    def out_dim(self) -> int:
        return self.config.dim

    def _labels(self, batch: Mapping[str, Any]) -> torch.Tensor:
        labels = batch.get(self.input_key)
        if labels is None:
            raise DataError(f"the {self.name} conditioner needs batch['label'], which is missing")
        labels = torch.as_tensor(labels, device=self.embedding.weight.device).long()
        bad = (labels < 0) | (labels >= self.config.num_classes)
        if bool(bad.any()):
            raise DataError(
                f"{self.name}: label {int(labels[bad][0])} is outside 0..{self.config.num_classes - 1}",
                hint="an unlabelled data set (label -1) cannot train a class-conditional model",
            )
        return labels

    def parse_input(self, text: str) -> int:
        try:
            label = int(text.strip())
        except ValueError:
            raise InputError(f"{text!r} is not a class index", hint=f"give {self.describe_input()}") from None
        if not 0 <= label < self.config.num_classes:
            raise InputError(
                f"class {label} is outside 0..{self.config.num_classes - 1}",
                hint=f"this model has {self.config.num_classes} classes",
            )
        return label

    def default_inputs(self, n: int) -> list[int]:
        return list(range(self.config.num_classes))

    def describe_input(self) -> str:
        return f"a class index 0..{self.config.num_classes - 1}"

    def _null_labels(self, batch_size: int) -> torch.Tensor:
        return torch.full((batch_size,), self.config.num_classes, device=self.embedding.weight.device)


class ClassAdd(_ClassEmbedding):
    """(B,) labels -> (B, dim), added to the timestep embedding."""

    name = "class"
    kind = "add"

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        return CondOutput(self.embedding(self._labels(batch)))

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        return CondOutput(self.embedding(self._null_labels(batch_size)))


class ClassToken(_ClassEmbedding):
    """(B,) labels -> (B, 1, dim), a one-token cross-attention context."""

    name = "class-crossattn"
    aliases = ("class-token",)
    kind = "crossattn"

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        return CondOutput(self.embedding(self._labels(batch))[:, None])

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        return CondOutput(self.embedding(self._null_labels(batch_size))[:, None])
