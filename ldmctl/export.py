"""Inference-only LDM checkpoints: EMA weights only, optionally in fp16, optionally with a pruned
text vocabulary (``ldmctl export``); and autoencoder checkpoints in fp16 (:func:`export_autoencoder`).

A training checkpoint holds the raw UNet, its EMA, both copies of the conditioners and the
autoencoder in fp32. The exported file keeps what sampling uses — the EMA UNet (``ema.*``), the
EMA conditioners (``cond.*``) and the autoencoder (``ae.*``) — and loads with the same
:func:`~ldmctl.diffusion.io.load_ldm` (weights are cast back to fp32 on load).

``prune_vocab``: a jointly trained ``bert`` text encoder has one embedding row per WordPiece token
(30,522 x width), but only the tokens of the training captions ever received a gradient; the
others are still at their random initialisation. Pruning keeps the rows of the tokens found in
the captions of ``captions_from`` (by default the data set the model was trained on) plus the
special tokens; any other word reads ``[UNK]`` and is named in a warning when used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldmctl.checkpoint import load_autoencoder, open_checkpoint, read_checkpoint, save_checkpoint
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.config import ConditionerSpec, DataConfig, from_dict
from ldmctl.diffusion.io import load_ldm, write_ldm
from ldmctl.diffusion.ldm import latent_spec
from ldmctl.errors import ConfigError
from ldmctl.text import TextEncoder

MAX_CAPTION_ITEMS = 50_000  # captions read from a data set to collect the kept vocabulary


def caption_token_ids(encoder: TextEncoder, captions: Iterable[str]) -> tuple[int, ...]:
    """Sorted ids of every token in ``captions`` (untruncated) and of the special tokens."""
    tok = encoder.tokenizer
    keep = {i for i in (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id) if i is not None}
    for caption in captions:
        keep.update(tok(caption, truncation=False)["input_ids"])
    return tuple(sorted(keep))


def dataset_captions(data: DataConfig, *, seed: int = 0, limit: int = MAX_CAPTION_ITEMS) -> list[str]:
    """Captions of the first ``limit`` items of a data set (every item of a finite folder)."""
    from ldmctl.data import open_dataset

    ds = open_dataset(data, seed=seed)
    captions = [ds[i]["caption"] for i in range(min(len(ds), limit))]
    if not any(captions):
        raise ConfigError(f"{data.source!r} has no captions to collect a vocabulary from")
    return captions


def _text_encoders(conditioner: torch.nn.Module) -> list[tuple[str, TextEncoder]]:
    return [(name, m) for name, m in conditioner.named_modules() if isinstance(m, TextEncoder) and m.kind == "bert"]


def _conditioners(
    model: Any, captions: Callable[[], list[str]] | None
) -> tuple[list[ConditionerSpec], list[dict[str, Tensor]], dict[str, int]]:
    """Each conditioner's spec and weights; with ``captions`` (read once, when first needed) the
    embedding rows of a ``bert`` text encoder are pruned to the tokens of the captions, the spec
    naming the kept tokens. Also the number of tokens kept, by conditioner."""
    specs, states, kept = list(model.config.conditioners), [], {}
    texts: list[str] | None = None
    for i, (spec, c) in enumerate(zip(specs, model.conditioners.items, strict=True)):
        state = c.state_dict()
        encoders = _text_encoders(c)
        fields = {f.name for f in dataclasses.fields(type(c).Config)}
        if captions is not None and encoders and "keep_tokens" in fields:
            texts = captions() if texts is None else texts
            name, enc = encoders[0]
            keep = caption_token_ids(enc, texts)
            key = f"{name}.model.tokens.weight"
            state[key] = state[key][torch.tensor(keep)]
            specs[i] = dataclasses.replace(spec, options={**spec.options, "keep_tokens": list(keep)})
            kept[spec.name] = len(keep)
        states.append(state)
    return specs, states, kept


def export_ldm(
    src: str | Path,
    dst: str | Path,
    *,
    half: bool = True,
    prune_vocab: bool = False,
    captions_from: DataConfig | None = None,
) -> dict[str, Any]:
    """Write the inference-only version of LDM checkpoint ``src`` to ``dst``; return a summary."""
    ckpt = read_checkpoint(src, expect_kind="ldm")
    model = load_ldm(src, weights="ema")

    def captions() -> list[str]:  # of captions_from, else of the data the model was trained on
        data = captions_from or from_dict(DataConfig, ckpt.extra.get("train_config", {}).get("data", {}))
        return dataset_captions(data)

    specs, states, kept = _conditioners(model, captions if prune_vocab else None)
    cfg = dataclasses.replace(model.config, conditioners=tuple(specs))
    conds = ConditionerSet(cfg.conditioners, latent_spec(cfg, model.autoencoder))
    for c, state in zip(conds.items, states, strict=True):
        c.load_state_dict(state)
    extra = {
        **{k: v for k, v in ckpt.extra.items() if k in ("step", "train_config", "autoencoder")},
        "exported_from": Path(src).name,
        "export": {"half": half, "prune_vocab": prune_vocab, "weights": "ema"},
    }
    parts = {"ema": model.unet.state_dict(), "cond": conds.state_dict(), "ae": model.autoencoder.state_dict()}
    write_ldm(
        dst,
        parts,
        config=cfg,
        autoencoder=model.autoencoder.config,
        conditioners=conds,
        extra=extra,
        dtype=torch.float16 if half else None,
    )
    return {
        "src_bytes": Path(src).stat().st_size,
        "dst_bytes": Path(dst).stat().st_size,
        "tensors": sum(len(state) for state in parts.values()),
        "kept_tokens": kept,
    }


def checkpoint_kind(path: str | Path) -> str:
    """``"ldm"`` or ``"autoencoder"``: what an ldmctl checkpoint holds (its metadata; no tensor is read)."""
    with open_checkpoint(path) as ckpt:
        return ckpt.kind


def export_autoencoder(src: str | Path, dst: str | Path, *, half: bool = True) -> dict[str, Any]:
    """Write autoencoder checkpoint ``src`` to ``dst`` with its weights (and scale factor) in fp16
    (they load back as fp32); the config, training step and training config are kept."""
    ckpt = read_checkpoint(src, expect_kind="autoencoder")
    ae = load_autoencoder(src)  # checks that the weights rebuild the model before anything is written
    tensors = {k: v.half() if half and v.is_floating_point() else v for k, v in ae.state_dict().items()}
    extra = {
        **{k: v for k, v in ckpt.extra.items() if k in ("step", "train_config")},
        "exported_from": Path(src).name,
        "export": {"half": half},
    }
    save_checkpoint(dst, tensors, kind="autoencoder", config=ckpt.config, extra=extra)
    return {
        "src_bytes": Path(src).stat().st_size,
        "dst_bytes": Path(dst).stat().st_size,
        "tensors": len(tensors),
        "kept_tokens": {},
    }


__all__ = ["caption_token_ids", "checkpoint_kind", "dataset_captions", "export_autoencoder", "export_ldm"]
