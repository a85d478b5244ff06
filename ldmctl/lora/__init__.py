"""LoRA: low-rank adapters on the attention projections of a trained model (Hu et al. 2021).

Where the adapters sit (every transformer block of every SpatialTransformer of the UNet: down, mid, up)::

    h ─ LayerNorm ─ attn1 (self) ─ (+) ─ LayerNorm ─ attn2 (cross, on the context) ─ (+) ─ LayerNorm ─ GEGLU ─ (+)
                      │                                │
        to_qkv = [to_q | to_k | to_v]      to_q, to_kv = [to_k | to_v]          each part p:  W_p x + s · up_p(down_p(x))
        to_out                             to_out                               s = alpha / rank · multiplier

and, with ``text = true``, ``q_proj``/``k_proj``/``v_proj``/``out_proj`` of every layer of the CLIP text
encoder. The base weights stay frozen and untouched; a fresh adapter (``up`` = 0) and a multiplier of 0
leave the model bit-identical. Files use the diffusers/peft key layout (:mod:`ldmctl.lora.io`), and
ldmctl reads diffusers, old diffusers and kohya adapters (:mod:`ldmctl.lora.formats`).

* :mod:`.config` — :class:`LoRAConfig`;  :mod:`.layer` — the LoRA linear layer;
* :mod:`.sites` — where adapters can go and their names in files;
* :mod:`.adapters` — add, scale, merge, remove adapters;  :mod:`.io` — save and load adapter files.
"""

from __future__ import annotations

from ldmctl.lora.adapters import (
    add_lora,
    load_lora_state_dict,
    lora_names,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    remove_lora,
    set_lora_scale,
)
from ldmctl.lora.config import LoRAConfig, check_lora_config
from ldmctl.lora.io import base_hash, load_lora, read_lora_file, save_lora
from ldmctl.lora.layer import LoRALinear

__all__ = [
    "LoRAConfig",
    "LoRALinear",
    "add_lora",
    "base_hash",
    "check_lora_config",
    "load_lora",
    "load_lora_state_dict",
    "lora_names",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "read_lora_file",
    "remove_lora",
    "save_lora",
    "set_lora_scale",
]
