"""Where adapters can sit in an ldmctl model, and the names each place has in adapter files.

A :class:`Site` is one part of one ``nn.Linear`` (a fused ``to_qkv`` has three). Its file name is the
diffusers module path (from :func:`ldmctl.convert.diffusers.unet_prefixes` and ``UNET_RULES``, the same
table that converts the weights), its kohya name is that path with ``.`` -> ``_`` after ``lora_unet_``
(``lora_te_`` for the text encoder). Every linear map of the UNet with a diffusers name is a site, so
that files adapting more than attention (kohya's feed-forward and ``proj_in``/``proj_out``) load too;
:class:`~ldmctl.lora.config.LoRAConfig` chooses among the attention projections for training::

    ours                                        file (diffusers / peft)
    unet.down.0.1.blocks.0.attn1.to_qkv  [k]    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k
    unet.mid.1.blocks.0.attn2.to_out            unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0
    conditioners.items.0.model.encoder.layers.0.self_attn.q_proj
                                                text_encoder.text_model.encoder.layers.0.self_attn.q_proj
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from ldmctl.convert.common import rename
from ldmctl.convert.diffusers import UNET_RULES, unet_prefixes
from ldmctl.errors import ConfigError
from ldmctl.lora.config import TEXT_NAMES, LoRAConfig

UNET_ATTENTION = re.compile(r".*\.blocks\.\d+\.(attn[12])\.(to_qkv|to_q|to_kv|to_out)")
TEXT_ATTENTION = re.compile(r".*\.self_attn\.([qkv]_proj|out_proj)")


@dataclass(frozen=True)
class Site:
    """One part of one linear map of the model, with its names in adapter files."""

    module: str  # path of the nn.Linear from the model, e.g. "unet.down.1.1.blocks.0.attn1.to_qkv"
    part: str  # "to_k": the slice of the output axis
    slot: int  # index of that slice
    parts: tuple[str, ...]  # every part of the linear map
    key: str  # file module name: "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"
    kohya: str  # "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    layer: str | None  # attn1 / attn2 / self_attn for attention projections, else None
    target: str | None  # to_q / to_k / to_v / to_out for attention projections, else None

    def chosen_by(self, cfg: LoRAConfig) -> bool:
        """Whether ``cfg`` puts an adapter here."""
        if self.target is None or self.target not in cfg.targets:
            return False
        return cfg.text if self.key.startswith("text_encoder.") else self.layer in cfg.layers


def text_encoder(model: Any) -> tuple[str, nn.Module] | None:
    """(path, module) of the transformer of the model's CLIP text encoder (a conditioner whose ``model``
    is a transformers CLIPTextModel), if it has one. transformers 5 flattened the model's ``text_model``
    level away; the path includes it where it exists."""
    conds = getattr(getattr(model, "conditioners", None), "items", None) or []
    found = []
    for i, c in enumerate(conds):
        clip = getattr(c, "model", None)
        if (
            isinstance(clip, nn.Module)
            and getattr(getattr(clip, "config", None), "model_type", "") == "clip_text_model"
        ):
            inner = getattr(clip, "text_model", None)
            found.append(
                (f"conditioners.items.{i}.model" + (".text_model" if inner is not None else ""), inner or clip)
            )
    if len(found) > 1:
        raise ConfigError(f"this model has {len(found)} CLIP text encoders; LoRA adapts a model with one")
    return found[0] if found else None


def _linears(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and n]


def unet_sites(model: Any) -> list[Site]:
    """Every part of every linear map of ``model.unet`` that has a diffusers name."""
    unet = model.unet
    names = _linears(unet)
    keymap = rename(unet_prefixes(unet.config), UNET_RULES, [f"{n}.weight" for n in names])
    out = []
    for ours, theirs in keymap.items():
        path = ours.removesuffix(".weight")
        foreign = [k.removesuffix(".weight") for k in theirs]
        parts = tuple(k.rpartition(".")[2] for k in foreign) if len(foreign) > 1 else (path.rpartition(".")[2],)
        match = UNET_ATTENTION.fullmatch(path)
        for slot, (part, key) in enumerate(zip(parts, foreign, strict=True)):
            out.append(
                Site(
                    module=f"unet.{path}",
                    part=part,
                    slot=slot,
                    parts=parts,
                    key=f"unet.{key}",
                    kohya="lora_unet_" + key.replace(".", "_"),
                    layer=match[1] if match else None,
                    target=part if match else None,
                )
            )
    return out


def text_sites(model: Any) -> list[Site]:
    """Every linear map of the CLIP text encoder's transformer layers (none without one). File names
    keep CLIP's ``text_model.`` level, as diffusers and kohya write them."""
    found = text_encoder(model)
    if found is None:
        return []
    root, clip = found
    out = []
    for path in _linears(clip):
        if not path.startswith("encoder.layers."):
            continue
        match = TEXT_ATTENTION.fullmatch(path)
        leaf = path.rpartition(".")[2]
        out.append(
            Site(
                module=f"{root}.{path}",
                part=leaf,
                slot=0,
                parts=(leaf,),
                key=f"text_encoder.text_model.{path}",
                kohya="lora_te_text_model_" + path.replace(".", "_"),
                layer="self_attn" if match else None,
                target=TEXT_NAMES[match[1]] if match else None,
            )
        )
    return out


def all_sites(model: Any) -> list[Site]:
    """UNet and text-encoder sites of ``model`` (an ldmctl LatentDiffusion)."""
    if not hasattr(model, "unet") or not hasattr(model.unet, "config"):
        raise ConfigError(f"LoRA needs an ldmctl latent diffusion model (with a UNet), not {type(model).__name__}")
    return unet_sites(model) + text_sites(model)


__all__ = ["Site", "all_sites", "text_encoder", "text_sites", "unet_sites"]
