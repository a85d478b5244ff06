"""Weight names of the original CompVis / Stable Diffusion code <-> ours, and lazy renamed views.

=========================================  ====================================================
ours                                       CompVis (``model.diffusion_model.`` / first stage)
=========================================  ====================================================
time_mlp.0 / time_mlp.2                    time_embed.0 / time_embed.2
conv_in                                    input_blocks.0.0
down.i.k (ResBlock, ST)                    input_blocks.{i+1}.k (our ``down`` is shifted by one)
down.i.0.conv (Downsample)                 input_blocks.{i+1}.0.op
mid.k / up.j.k                             middle_block.k / output_blocks.j.k
norm_out / conv_out                        out.0 / out.2
…norm1, conv1, temb_proj                   …in_layers.0, in_layers.2, emb_layers.1
…norm2, conv2, shortcut                    …out_layers.0, out_layers.3, skip_connection
…blocks.b.attn1.to_qkv                     …transformer_blocks.b.attn1.to_q + to_k + to_v
…blocks.b.attn2.to_q / to_kv               …attn2.to_q / to_k + to_v
…blocks.b.ff.proj / ff.out / attnN.to_out  …ff.net.0.proj / ff.net.2 / attnN.to_out.0
…proj_in, proj_out (Linear)                same names; 1x1 conv kernels unless use_linear_in_transformer
encoder.levels.L.blocks.r / attns.r        encoder.down.L.block.r / attn.r (q, k, v, proj_out, norm alike)
encoder.levels.L.resample                  encoder.down.L.downsample
decoder.levels.k (k = n-1-L, deepest 1st)  decoder.up.L (indexed by level, up.{n-1} deepest)
decoder.levels.k.resample                  decoder.up.L.upsample
{en,de}coder.mid.block1 / attn / block2    {en,de}coder.mid.block_1 / attn_1 / block_2
…blocks.r.shortcut                         …block.r.nin_shortcut
=========================================  ====================================================

Text encoders: SD 1.x holds a transformers ``CLIPTextModel`` under ``cond_stage_model.transformer.``
(its ``text_model.*`` names; files from old transformers lack that level); SD 2.x holds OpenCLIP's
text tower under ``cond_stage_model.model.``, renamed here to CLIPTextModel names (the stacked
``in_proj`` is split into q, k and v).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from ldmctl.config import AutoencoderConfig, UNetConfig
from ldmctl.convert.common import KeyMap, LazyTensors, Rule, rename
from ldmctl.convert.diffusers import UNET_RULES
from ldmctl.layers import Downsample

RES_RULES: list[Rule] = [
    (r"norm1\.(\w+)", (r"in_layers.0.\1",)),
    (r"conv1\.(\w+)", (r"in_layers.2.\1",)),
    (r"temb_proj\.(\w+)", (r"emb_layers.1.\1",)),
    (r"norm2\.(\w+)", (r"out_layers.0.\1",)),
    (r"conv2\.(\w+)", (r"out_layers.3.\1",)),
    (r"shortcut\.(\w+)", (r"skip_connection.\1",)),
]
UNET_RULES_COMPVIS: list[Rule] = [r for r in UNET_RULES if r[0].startswith("blocks")] + RES_RULES  # transformer names
FIRST_STAGE_RULES: list[Rule] = [(r"(\d+)\.shortcut\.(\w+)", (r"\1.nin_shortcut.\2",))]  # inside levels.L.blocks
OPENCLIP_NAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def _meta(build: Any, cfg: Any) -> Any:
    with torch.device("meta"):
        return build(cfg)


def unet_keymap(cfg: UNetConfig, prefix: str = "model.diffusion_model.") -> KeyMap:
    """Our UNet's keys -> the CompVis openaimodel keys (see the module table)."""
    from ldmctl.unet import UNet

    unet = _meta(UNet, cfg)
    p = {
        "time_mlp.0": "time_embed.0",
        "time_mlp.2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "norm_out": "out.0",
        "conv_out": "out.2",
    }
    for ours, theirs, blocks, shift in (("down", "input_blocks", unet.down, 1), ("up", "output_blocks", unet.up, 0)):
        for i, block in enumerate(blocks):
            for k, layer in enumerate(block):
                p[f"{ours}.{i}.{k}"] = f"{theirs}.{i + shift}.{k}"
                if isinstance(layer, Downsample):
                    p[f"{ours}.{i}.{k}.conv"] = f"{theirs}.{i + shift}.{k}.op"
    for k in range(len(unet.mid)):
        p[f"mid.{k}"] = f"middle_block.{k}"
    return rename({o: prefix + t for o, t in p.items()}, UNET_RULES_COMPVIS, list(unet.state_dict()))


def unet_shapes(cfg: UNetConfig, keymap: KeyMap, prefix: str = "model.diffusion_model.") -> dict[str, tuple[int, ...]]:
    """CompVis shapes of the keys we store differently: proj_in/proj_out as 1x1 convs (SD 1.x)."""
    if cfg.linear_projection:
        return {}
    from ldmctl.unet import UNet

    state = _meta(UNet, cfg).state_dict()
    out = {}
    for ours, (theirs,) in ((k, v) for k, v in keymap.items() if len(v) == 1):
        if ours.rsplit(".", 2)[-2] in ("proj_in", "proj_out") and ours.endswith(".weight"):
            out[theirs] = (*state[ours].shape, 1, 1)
    return out


def first_stage_keymap(cfg: AutoencoderConfig, prefix: str = "") -> KeyMap:
    """Our autoencoder's keys -> CompVis' (``prefix``: e.g. ``first_stage_model.`` in an LDM file)."""
    from ldmctl.autoencoder import build_autoencoder

    n = len(cfg.channel_mult)
    p = {k: k for k in ("quant_conv", "post_quant_conv", "quantize")}
    for side, blocks, resample in (("encoder", "down", "downsample"), ("decoder", "up", "upsample")):
        for name in ("conv_in", "norm_out", "conv_out"):
            p[f"{side}.{name}"] = f"{side}.{name}"
        for ours, theirs in (("block1", "block_1"), ("attn", "attn_1"), ("block2", "block_2")):
            p[f"{side}.mid.{ours}"] = f"{side}.mid.{theirs}"
        for k in range(n):
            level = k if side == "encoder" else n - 1 - k
            p[f"{side}.levels.{k}.blocks"] = f"{side}.{blocks}.{level}.block"
            p[f"{side}.levels.{k}.attns"] = f"{side}.{blocks}.{level}.attn"
            p[f"{side}.levels.{k}.resample"] = f"{side}.{blocks}.{level}.{resample}"
    keys = [k for k in _meta(build_autoencoder, cfg).state_dict() if k != "scale_factor"]
    return rename({o: prefix + t for o, t in p.items()}, FIRST_STAGE_RULES, keys)


def openclip_names(layers: int) -> dict[str, tuple[str, int, int]]:
    """CLIPTextModel key -> (OpenCLIP key, part, parts) for the first ``layers`` residual blocks."""
    out = {
        "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", 0, 1),
        "text_model.embeddings.position_embedding.weight": ("positional_embedding", 0, 1),
        "text_model.final_layer_norm.weight": ("ln_final.weight", 0, 1),
        "text_model.final_layer_norm.bias": ("ln_final.bias", 0, 1),
    }
    for i in range(layers):
        ours, theirs = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{ours}self_attn.{name}.{leaf}"] = (f"{theirs}attn.in_proj_{leaf}", j, 3)
            for src, dst in OPENCLIP_NAMES.items():
                out[f"{ours}{dst}.{leaf}"] = (f"{theirs}{src}.{leaf}", 0, 1)
    return out


class LazyView(LazyTensors):
    """Some tensors of a lazily read .safetensors file under other names; shapes are read from
    the header, a tensor from disk only when asked for (so converting never holds the file twice)."""

    def __init__(self, parent: LazyTensors, names: Mapping[str, str]) -> None:  # no super(): nothing to open
        self.path, self.metadata, self._parent = parent.path, parent.metadata, parent
        self._names = dict(names)
        self._keys = list(self._names)
        self._shapes: dict[str, tuple[int, ...]] = {}

    def __getitem__(self, key: str) -> Tensor:
        return self._parent[self._names[key]]

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def shape(self, key: str) -> tuple[int, ...]:
        return self._parent.shape(self._names[key])


def view(tensors: Mapping[str, Tensor], names: Mapping[str, str]) -> Mapping[str, Tensor]:
    """``{new: tensors[old]}`` for ``names`` (new -> old), without reading a lazy file."""
    if isinstance(tensors, LazyTensors):
        return LazyView(tensors, names)
    return {new: tensors[old] for new, old in names.items()}


class Derived(Mapping[str, Tensor]):
    """Tensors made on demand from parts of others: name -> (source key, part, parts on dim 0)."""

    def __init__(self, source: Mapping[str, Tensor], recipe: Mapping[str, tuple[str, int, int]]) -> None:
        self._source, self._recipe = source, dict(recipe)

    def __getitem__(self, key: str) -> Tensor:
        src, part, parts = self._recipe[key]
        value = self._source[src]
        return value if parts == 1 else value.chunk(parts, dim=0)[part].contiguous()

    def __contains__(self, key: object) -> bool:
        return key in self._recipe

    def __iter__(self) -> Iterator[str]:
        return iter(self._recipe)

    def __len__(self) -> int:
        return len(self._recipe)


__all__ = ["Derived", "LazyView", "first_stage_keymap", "openclip_names", "unet_keymap", "unet_shapes", "view"]
