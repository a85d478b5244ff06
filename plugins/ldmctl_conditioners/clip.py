"""``clip-text``: a CLIP text encoder (transformers ``CLIPTextModel`` + ``CLIPTokenizer``) as the
cross-attention context, the way Stable Diffusion 1.x/2.x is conditioned.

Prompts are padded to ``max_length`` (77) with the tokenizer's pad token and encoded without an
attention mask, exactly as Stable Diffusion and diffusers' pipeline do; the context is the last
hidden state (after the final LayerNorm), or with ``layer = "penultimate"`` the one before it, also
through the final LayerNorm (CLIP skip 1). The null condition is the empty prompt.

The checkpoint is self-contained: the model's config is an option (``text_config``) and the
tokenizer's files (``vocab.json``, ``merges.txt``, its JSON configs) travel with the weights as one
uint8 buffer (``tokenizer_files``, ``tokenizer_bytes`` long), decoded when first needed.
``ldmctl convert`` writes both; nothing is downloaded. The encoder is frozen unless ``frozen = false``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ldmctl.conditioning import Conditioner, CondOutput, LatentSpec
from ldmctl.errors import WeightsError
from ldmctl_conditioners.text import prompts_of

log = logging.getLogger(__name__)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)  # a saved CLIPTokenizer: tokenizer.json (transformers >= 5) or vocab.json + merges.txt, and its configs


def pack_tokenizer(folder: str | Path) -> Tensor:
    """The tokenizer files of ``folder`` as one uint8 tensor (the ``tokenizer_files`` buffer)."""
    names = [n for n in TOKENIZER_FILES if (Path(folder) / n).is_file()]
    files = {name: (Path(folder) / name).read_text(encoding="utf-8") for name in names}
    return torch.frombuffer(bytearray(json.dumps(files, sort_keys=True).encode()), dtype=torch.uint8).clone()


def unpack_tokenizer(blob: Tensor, folder: str | Path) -> None:
    """Write the files of a ``tokenizer_files`` buffer into ``folder``."""
    try:
        files = json.loads(bytes(blob.cpu().numpy().tobytes()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"the clip-text tokenizer stored in this checkpoint is corrupt: {err}") from None
    for name, text in files.items():
        if name not in TOKENIZER_FILES:
            raise WeightsError(f"unexpected file {name!r} in the stored clip-text tokenizer")
        (Path(folder) / name).write_text(text, encoding="utf-8")


def _missing(folder: Path) -> list[str]:
    if (folder / "tokenizer.json").is_file():
        return []
    return [n for n in ("vocab.json", "merges.txt") if not (folder / n).is_file()] or []


def load_clip_tokenizer(folder: str | Path) -> Any:
    """``CLIPTokenizer.from_pretrained(folder)``, offline; WeightsError when it cannot be read."""
    from transformers import CLIPTokenizer

    p = Path(folder)
    if _missing(p):
        raise WeightsError(f"{str(p)!r} holds no CLIP tokenizer (no tokenizer.json, and no {' or '.join(_missing(p))})")
    try:
        return CLIPTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot load a CLIP tokenizer from {str(p)!r}: {err}") from None


@dataclass(frozen=True)
class ClipTextConfig:
    text_config: dict[str, Any] = field(default_factory=dict)  # transformers CLIPTextConfig fields ({}: its defaults)
    layer: Literal["last", "penultimate"] = "last"  # which hidden state is the context (penultimate: CLIP skip 1)
    max_length: int = 77  # prompts are padded (and truncated, with a warning) to this many tokens
    tokenizer_bytes: int = 0  # length of the stored tokenizer files (written by ldmctl convert)
    frozen: bool = True  # false: the text encoder trains with the UNet


class ClipText(Conditioner):
    """CLIP token features (B, max_length, width) as keys and values of the cross-attention."""

    name = "clip-text"
    kind = "crossattn"
    input_key = "caption"
    Config = ClipTextConfig

    def __init__(self, config: ClipTextConfig, latent: LatentSpec) -> None:
        super().__init__(config, latent)
        from transformers import CLIPTextConfig, CLIPTextModel

        try:
            text_config = CLIPTextConfig(**config.text_config)
        except (TypeError, ValueError) as err:
            raise WeightsError(f"clip-text: text_config is not a CLIPTextConfig: {err}") from None
        self.model = CLIPTextModel(text_config)
        self.register_buffer("tokenizer_files", torch.zeros(config.tokenizer_bytes, dtype=torch.uint8))
        self._tokenizer: Any = None
        if config.frozen:
            self.model.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> ClipText:
        super().train(mode)
        if self.config.frozen:
            self.model.eval()
        return self

    @property
    def out_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if not self.config.tokenizer_bytes:
                raise WeightsError("this clip-text conditioner has no tokenizer (tokenizer_bytes = 0)")
            with tempfile.TemporaryDirectory() as tmp:
                unpack_tokenizer(self.tokenizer_files, tmp)
                self._tokenizer = load_clip_tokenizer(tmp)
        return self._tokenizer

    def tokenize(self, prompts: list[str]) -> Tensor:
        """Token ids (B, max_length), padded with the tokenizer's pad token, as Stable Diffusion does."""
        n = self.config.max_length
        longest = max(len(self.tokenizer(p)["input_ids"]) for p in prompts)
        if longest > n:
            log.warning("prompt of %d tokens truncated to max_length=%d", longest, n)
        enc = self.tokenizer(prompts, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        return enc["input_ids"]

    def encode(self, prompts: list[str]) -> CondOutput:
        ids = self.tokenize(prompts).to(self.model.device)
        trains = any(p.requires_grad for p in self.model.parameters())  # not frozen, or adapters on it (LoRA)
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            if self.config.layer == "last":
                return CondOutput(self.model(input_ids=ids).last_hidden_state)
            out = self.model(input_ids=ids, output_hidden_states=True)
            final_norm = getattr(self.model, "text_model", self.model).final_layer_norm  # transformers 4 / 5
            return CondOutput(final_norm(out.hidden_states[-2]))

    def describe_input(self) -> str:
        return 'a prompt (--prompt "...")'

    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        return self.encode(prompts_of(batch, self.name, self.input_key))

    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        return self.encode([""] * batch_size)


__all__ = ["ClipText", "ClipTextConfig", "load_clip_tokenizer", "pack_tokenizer", "unpack_tokenizer"]
