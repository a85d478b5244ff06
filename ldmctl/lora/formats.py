"""Reading adapter files of every common layout into one form: (down, up, scale) per site.

=================  ==========================================================  ============================
layout             keys                                                        alpha (scale = alpha / r)
=================  ==========================================================  ============================
ldmctl, diffusers  ``unet.<module>.lora_A.weight`` / ``.lora_B.weight``         ldmctl: ``ldmctl.config``;
(peft)             (``text_encoder.<module>...``; no prefix: the UNet)         diffusers: the safetensors
                                                                               metadata ``lora_adapter_metadata``
                                                                               (``unet.lora_alpha``, ``unet.use_rslora``,
                                                                               ``unet.alpha_pattern``); none: alpha = r
diffusers < 0.21   ``unet.<attn>.processor.to_q_lora.down.weight``,            alpha = r
                   ``text_encoder.<attn>.to_q_lora.down.weight``,
                   ``….lora_linear_layer.down.weight``, ``….lora.down.weight``
kohya              ``lora_unet_<module with _>.lora_down.weight`` / ``.lora_up``  the ``.alpha`` tensor of the
                   ``.weight`` / ``.alpha``; ``lora_te_`` for the text encoder    module (none: alpha = r)
=================  ==========================================================  ============================

kohya names are never parsed back into paths (underscores are ambiguous): the kohya name of every
site of the model is generated and looked up. 1x1-convolution adapters (kohya's ``proj_in`` of SD 1.x)
are reshaped to the linear maps ldmctl uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ldmctl.errors import CheckpointError

KOHYA_ROOTS = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")  # te1/te2: SDXL (refused by name, below)
OLD_ATTN = re.compile(r"\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$")
OLD_LEAF = re.compile(r"\.(?:lora_linear_layer|lora)\.(down|up)\.weight$")
TEXT_OLD = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
AB = {"down": "lora_A", "up": "lora_B"}


@dataclass
class Entry:
    """One adapted module of a file: its tensors and, if the file says, its alpha."""

    down: Tensor | None = None
    up: Tensor | None = None
    alpha: float | None = None

    @property
    def rank(self) -> int:
        assert self.down is not None
        return int(self.down.shape[0])


def listing(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def _modern(key: str) -> tuple[str, bool]:
    """A diffusers/peft key in today's form (``<root>.<module>.lora_A.weight``), and whether it changed."""
    new = key.replace(".processor.", ".")
    if not new.startswith(("unet.", "text_encoder")):
        new = f"unet.{new}"  # peft's state dict of a bare UNet
    text = new.startswith("text_encoder.")
    if new.startswith("text_encoder.encoder."):  # saved from a flattened transformers 5 CLIPTextModel
        new = "text_encoder.text_model." + new.removeprefix("text_encoder.")
    m = OLD_ATTN.search(new)
    if m:
        module = TEXT_OLD[m[1]] if text else ("to_out.0" if m[1] == "to_out" else m[1])
        new = f"{new[: m.start()]}.{module}.{AB[m[2]]}.weight"
    else:
        new = OLD_LEAF.sub(lambda x: f".{AB[x[1]]}.weight", new)
    return new, new != key


def parse_peft(tensors: Mapping[str, Tensor], where: str) -> tuple[str, dict[str, Entry]]:
    """Module key (``unet.…``/``text_encoder.…``) -> Entry, from a diffusers/peft-layout file."""
    entries: dict[str, Entry] = {}
    bad, old = [], False
    for key, value in tensors.items():
        new, changed = _modern(key)
        old = old or changed
        for suffix, attr in ((".lora_A.weight", "down"), (".lora_B.weight", "up")):
            if new.endswith(suffix):
                setattr(entries.setdefault(new.removesuffix(suffix), Entry()), attr, value)
                break
        else:
            bad.append(key)
    _refuse_unsupported(bad, where)
    return ("diffusers-old" if old else "diffusers"), entries


def parse_kohya(tensors: Mapping[str, Tensor], where: str) -> dict[str, Entry]:
    """kohya name (``lora_unet_…``) -> Entry."""
    entries: dict[str, Entry] = {}
    bad = []
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        entry = entries.setdefault(name, Entry())
        if rest == "lora_down.weight":
            entry.down = value
        elif rest == "lora_up.weight":
            entry.up = value
        elif rest == "alpha" and value.numel() == 1:
            entry.alpha = float(value.float())
        else:
            bad.append(key)
    _refuse_unsupported(bad, where)
    return entries


def _refuse_unsupported(bad: list[str], where: str) -> None:
    if bad:
        raise CheckpointError(
            f"{where}: tensors ldmctl's LoRA does not use: {listing(sorted(bad))}",
            hint="ldmctl loads plain LoRA (down/up pairs, optional alpha); DoRA, LoHa, LoKr and bias adapters are not supported",
        )


def parse(tensors: Mapping[str, Tensor], where: str) -> tuple[str, dict[str, Entry]]:
    """(layout, name -> Entry) of an adapter file; CheckpointError when it is no LoRA file or incomplete."""
    keys = list(tensors)
    if not keys or not any(("lora" in k.lower()) for k in keys):
        raise CheckpointError(
            f"{where} is not a LoRA adapter file (no lora tensors among {len(keys)})",
            hint="pass an adapter written by ldmctl train-lora, diffusers or kohya's scripts",
        )
    if all(k.startswith(KOHYA_ROOTS) for k in keys):
        layout, entries = "kohya", parse_kohya(tensors, where)
    else:
        layout, entries = parse_peft(tensors, where)
    incomplete = sorted(n for n, e in entries.items() if e.down is None or e.up is None)
    if incomplete:
        raise CheckpointError(f"{where}: adapters with only one of their down/up tensors: {listing(incomplete)}")
    return layout, entries


def _pattern(patterns: Mapping[str, Any], module: str) -> Any:
    """peft's rule: a pattern matches a module path when it matches the whole path or its tail after a dot."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def peft_alphas(meta: Mapping[str, str], entries: Mapping[str, Entry], where: str) -> dict[str, tuple[float, bool]]:
    """Module key -> (alpha, rank-stabilised) from diffusers' ``lora_adapter_metadata`` (peft LoraConfig
    fields per component, prefixed ``unet.`` / ``text_encoder.``); alpha = r where it says nothing."""
    try:
        raw = json.loads(meta["lora_adapter_metadata"]) if "lora_adapter_metadata" in meta else {}
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"{where}: its lora_adapter_metadata is not JSON ({err})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: its lora_adapter_metadata is not a JSON object")
    out = {}
    for key, entry in entries.items():
        root, _, module = key.partition(".")
        cfg = {k.removeprefix(f"{root}."): v for k, v in raw.items() if k.startswith(f"{root}.")}
        if not cfg:
            out[key] = (float(entry.rank), False)
            continue
        if cfg.get("use_dora") or cfg.get("lora_bias"):
            raise CheckpointError(f"{where}: a DoRA or bias LoRA (use_dora / lora_bias); ldmctl loads plain LoRA")
        alpha = _pattern(cfg.get("alpha_pattern") or {}, module)
        alpha = float(cfg.get("lora_alpha", 8) if alpha is None else alpha)  # 8: peft's default lora_alpha
        out[key] = (alpha, bool(cfg.get("use_rslora", False)))
    return out


__all__ = ["Entry", "listing", "parse", "parse_kohya", "parse_peft", "peft_alphas"]
