"""Assembling ldmctl checkpoints from converted parts (any source layout).

Each converter reads its layout into configs plus a *filler* per part (a function that copies the
foreign tensors into our freshly built module through a :data:`~ldmctl.convert.common.KeyMap`).
The modules are built on the ``meta`` device and materialised empty before filling, so an SD-size
UNet is never randomly initialised (seconds and a second copy of 3.4 GB saved); every weight is
then written by the filler, which checks first that the file has exactly the tensors it needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import empty_module, save_autoencoder
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.config import AutoencoderConfig, ConditionerSpec, DiffusionConfig, LDMConfig, UNetConfig
from ldmctl.diffusion.io import write_ldm
from ldmctl.diffusion.ldm import latent_spec
from ldmctl.errors import CheckpointError
from ldmctl.unet import UNet

Filler = Callable[[nn.Module], None]
CLIP_DROP = (
    "transformers_version",
    "_name_or_path",
    "architectures",
    "torch_dtype",
    "dtype",
    "_attn_implementation_autoset",
)


@dataclass
class TextPart:
    """A CLIP text encoder: its transformers config dict, its weights in transformers' names (with or
    without the ``text_model.`` level), the packed tokenizer files and which hidden state is the context."""

    config: dict[str, Any]
    tensors: Mapping[str, Tensor]
    tokenizer: Tensor  # uint8, from ldmctl_conditioners.clip.pack_tokenizer
    layer: str = "last"


@dataclass
class Parts:
    """Everything a converted LDM checkpoint is made of."""

    unet: UNetConfig
    fill_unet: Filler
    autoencoder: AutoencoderConfig
    fill_autoencoder: Filler
    scale_factor: float
    diffusion: DiffusionConfig
    latent_size: int
    text: TextPart | None = None
    source: dict[str, Any] = field(default_factory=dict)  # what was converted, for the checkpoint's extra


def build_autoencoder_filled(cfg: AutoencoderConfig, fill: Filler, scale_factor: float) -> nn.Module:
    ae = empty_module(lambda: build_autoencoder(cfg))
    fill(ae)
    ae.scale_factor.fill_(scale_factor)
    if hasattr(ae, "quantize"):  # VQ: the (non-persistent) usage counter is not in any file
        ae.quantize.usage_count.zero_()
    return ae.eval()


def clip_spec(text: TextPart, dropout: float = 0.1) -> ConditionerSpec:
    config = {k: v for k, v in text.config.items() if k not in CLIP_DROP}
    options = {"text_config": config, "layer": text.layer, "tokenizer_bytes": int(text.tokenizer.numel())}
    return ConditionerSpec(name="clip-text", options=options, dropout=dropout)


def _conditioners(cfg: LDMConfig, ae: nn.Module, text: TextPart | None) -> ConditionerSet:
    conds = ConditionerSet(cfg.conditioners, latent_spec(cfg, ae))
    if text is None:
        return conds
    clip = conds.items[0]
    state = clip.model.state_dict()
    text.tensors = _clip_names(text.tensors, state)
    missing = sorted(k for k in state if k not in text.tensors and not k.endswith("position_ids"))
    unexpected = sorted(k for k in text.tensors if k not in state)
    if missing or unexpected:
        raise CheckpointError(
            f"the text encoder's weights do not match its config: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    for k, target in state.items():
        if k in text.tensors:
            value = text.tensors[k]
            if tuple(value.shape) != tuple(target.shape):
                raise CheckpointError(
                    f"text encoder weight {k} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
                )
            with torch.no_grad():
                target.copy_(value.to(target.dtype))
    clip.tokenizer_files.copy_(text.tokenizer)
    return conds


def _clip_names(tensors: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """CLIPTextModel weights under the names of the installed transformers (4.x writes ``text_model.*``,
    5.x drops that level): the file's names, with ``text_model.`` added or removed where that matches."""
    if all(k in state for k in tensors):
        return tensors
    out = {}
    for k in tensors:
        alt = k.removeprefix("text_model.") if k.startswith("text_model.") else f"text_model.{k}"
        out[alt if k not in state and alt in state else k] = tensors[k]
    return out


def write_parts(parts: Parts, out: str | Path, *, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Build, fill and write the LDM checkpoint of ``parts``; a summary of what was written."""
    specs = (clip_spec(parts.text),) if parts.text is not None else ()
    unet_cfg = parts.unet
    if parts.text is not None and unet_cfg.context_dim != int(parts.text.config.get("hidden_size", 0)):
        raise CheckpointError(
            f"the UNet's cross-attention reads {unet_cfg.context_dim}-wide context, but the text encoder "
            f"gives {parts.text.config.get('hidden_size')}-wide features"
        )
    cfg = LDMConfig(
        unet=unet_cfg,
        diffusion=parts.diffusion,
        latent_size=parts.latent_size,
        scale_factor=parts.scale_factor,
        conditioners=specs,
    )
    ae = build_autoencoder_filled(parts.autoencoder, parts.fill_autoencoder, parts.scale_factor)
    unet = empty_module(lambda: UNet(unet_cfg))
    parts.fill_unet(unet)
    conds = _conditioners(cfg, ae, parts.text)
    extra = {"converted_from": parts.source, "step": 0}
    tensors = {"ema": unet.state_dict(), "ae": ae.state_dict(), "cond": conds.state_dict()}
    write_ldm(out, tensors, config=cfg, autoencoder=ae.config, conditioners=conds, extra=extra, dtype=dtype)
    return {"kind": "ldm", "parameters": _count(unet, ae, conds), "config": dataclasses.asdict(cfg)}


def write_autoencoder(cfg: AutoencoderConfig, fill: Filler, scale_factor: float, out: str | Path, source: dict) -> dict:
    """Build, fill and write an autoencoder checkpoint (usable as ``train-ldm --ae``)."""
    ae = build_autoencoder_filled(cfg, fill, scale_factor)
    save_autoencoder(ae, out, extra={"converted_from": source, "scale_factor": scale_factor})
    return {"kind": "autoencoder", "parameters": _count(ae), "config": dataclasses.asdict(cfg)}


def _count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


__all__ = ["Filler", "Parts", "TextPart", "build_autoencoder_filled", "clip_spec", "write_autoencoder", "write_parts"]
