"""Text conditioners: ``crossattn`` (token features as cross-attention context), ``add`` (pooled
text added to the timestep embedding) and ``tokens`` (token-concat: text tokens joined to the image
tokens for joint self-attention, with a modality-type embedding and a learned separator).

All read ``batch["caption"]`` (a list of strings) through a :class:`~ldmctl.text.TextEncoder`;
the null condition is the encoding of the empty prompt, as in LDM. At sample time the input is a
prompt (``--prompt "..."``, i.e. ``--input caption=...``), required: there is no default prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ldmctl.conditioning import Conditioner, CondOutput, LatentSpec
from ldmctl.errors import DataError
from ldmctl.text import TextEncoder


def prompts_of(batch: Mapping[str, Any], name: str, key: str = "caption") -> list[str]:
    """The prompts of ``batch[key]`` as a list (DataError naming conditioner ``name`` when absent)."""
    prompts = batch.get(key)
    if prompts is None:
        raise DataError(
            f"the {name} conditioner needs captions (batch[{key!r}])",
            hint="use a data set with captions (metadata.jsonl or .txt files) or builtin:shapes",
        )
    return [prompts] if isinstance(prompts, str) else list(prompts)


@dataclass(frozen=True)
class TextConfig:
    encoder: str = "bert"  # bert (trained jointly), minilm (frozen, pretrained) or a local model folder
    max_length: int = 32  # prompt tokens kept (longer prompts are truncated with a warning)
    width: int = 256  # bert only: feature width
    depth: int = 4  # bert only: transformer blocks
    heads: int = 4  # bert only: attention heads
    vocab: str = ""  # a vocab.txt for the WordPiece tokenizer ("" = the MiniLM package's)
    keep_tokens: tuple[int, ...] = ()  # bert only: ids that have an embedding row (ldmctl export --prune-vocab)
    causal: bool = False  # bert only: each token attends to itself and the tokens before it (as CLIP's encoder)


class _Text(Conditioner):
    input_key = "caption"
    Config = TextConfig

    def __init__(self, config: TextConfig, latent: LatentSpec) -> None:
        super().__init__(config, latent)
        self.text = TextEncoder(
            config.encoder,
            max_length=config.max_length,
            width=config.width,
            depth=config.depth,
            heads=config.heads,
            vocab=config.vocab,
            keep_tokens=config.keep_tokens,
            causal=config.causal,
        )

    @property
    def out_dim(self) -> int:
        return self.text.width

    def _prompts(self, batch: Mapping[str, Any]) -> list[str]:
        return prompts_of(batch, self.name, self.input_key)

    def encode(self, prompts: list[str]) -> CondOutput:
        h, mask = self.text(prompts)
        return CondOutput(h, mask)

    def describe_input(self) -> str:
        return 'a prompt (--prompt "...")'

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        return self.encode(self._prompts(batch))

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        return self.encode([""] * batch_size)


class TextCrossAttn(_Text):
    """tau(y) (B, L, D) as keys and values of the cross-attention (LDM eq. 3)."""

    name = "text-crossattn"
    aliases = ("crossattn",)
    kind = "crossattn"


class TextPooled(_Text):
    """The masked mean of tau(y): one vector per prompt, added to the timestep embedding."""

    name = "text-pooled"
    aliases = ("add",)
    kind = "add"

    def encode(self, prompts: list[str]) -> CondOutput:
        h, mask = self.text(prompts)
        m = mask.to(h.dtype)[..., None]
        return CondOutput((h * m).sum(1) / m.sum(1).clamp(min=1.0))


class TextTokens(_Text):
    """Token-concat: each text token is content + position (from the encoder) + a learned text-type
    embedding; a learned separator token closes the text. The UNet joins these tokens in front of
    its image tokens (which get their own 2-D position and image-type embeddings) for joint
    self-attention, and keeps only the image tokens after each block."""

    name = "text-tokens"
    aliases = ("tokens",)
    kind = "tokens"

    def __init__(self, config: TextConfig, latent: LatentSpec) -> None:
        super().__init__(config, latent)
        self.text_type = nn.Parameter(torch.zeros(self.out_dim))
        self.separator = nn.Parameter(torch.randn(self.out_dim) * 0.02)

    def encode(self, prompts: list[str]) -> CondOutput:
        h, mask = self.text(prompts)
        b = h.shape[0]
        h = h + self.text_type.to(h.dtype)
        h = torch.cat([h, self.separator.to(h.dtype).expand(b, 1, -1)], dim=1)
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        return CondOutput(h, mask)
