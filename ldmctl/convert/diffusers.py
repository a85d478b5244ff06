"""The diffusers layout: ``UNet2DConditionModel`` and ``AutoencoderKL`` configs and weight names <-> ours.

Our UNet and autoencoder are the CompVis/diffusers architectures; only names and a few fusions
differ. Every feature a diffusers config can switch on that ldmctl does not build is refused by
name (:func:`unet_config_from_diffusers`) instead of being dropped. Weight names:

=====================================  ===============================================
ours                                   diffusers
=====================================  ===============================================
time_mlp.0 / time_mlp.2                time_embedding.linear_1 / linear_2
down.i.0 (ResBlock), down.i.1 (ST)     down_blocks.L.resnets.r, down_blocks.L.attentions.r
down.i.0.conv (Downsample)             down_blocks.L.downsamplers.0.conv
mid.0, mid.1, mid.2                    mid_block.resnets.0, attentions.0, resnets.1
up.j.0, up.j.1, up.j.k.conv            up_blocks.J.resnets.r, attentions.r, upsamplers.0.conv
…temb_proj / …shortcut                 …time_emb_proj / …conv_shortcut
…blocks.b.attn1.to_qkv                 …transformer_blocks.b.attn1.to_q + to_k + to_v (concatenated)
…blocks.b.attn2.to_q / to_kv           …attn2.to_q / to_k + to_v
…blocks.b.attnN.to_out                 …attnN.to_out.0
…blocks.b.ff.proj / ff.out             …ff.net.0.proj / ff.net.2
norm_out                               conv_norm_out
encoder.levels.L.blocks.r (VAE)        encoder.down_blocks.L.resnets.r (decoder: up_blocks, deepest first)
….attns.r.norm / q, k, v / proj_out    ….attentions.r.group_norm / to_q, to_k, to_v / to_out.0
encoder.mid.block1, attn, block2       encoder.mid_block.resnets.0, attentions.0, resnets.1
=====================================  ===============================================
"""

from __future__ import annotations

from typing import Any

import torch

from ldmctl.config import AutoencoderConfig, UNetConfig
from ldmctl.convert.common import KeyMap, Rule, rename
from ldmctl.errors import CheckpointError

UNET_RULES: list[Rule] = [
    (r"blocks\.(\d+)\.attn1\.to_qkv\.weight", tuple(rf"transformer_blocks.\1.attn1.to_{x}.weight" for x in "qkv")),
    (r"blocks\.(\d+)\.attn2\.to_kv\.weight", tuple(rf"transformer_blocks.\1.attn2.to_{x}.weight" for x in "kv")),
    (r"blocks\.(\d+)\.(attn[12])\.to_out\.(\w+)", (r"transformer_blocks.\1.\2.to_out.0.\3",)),
    (r"blocks\.(\d+)\.ff\.proj\.(\w+)", (r"transformer_blocks.\1.ff.net.0.proj.\2",)),
    (r"blocks\.(\d+)\.ff\.out\.(\w+)", (r"transformer_blocks.\1.ff.net.2.\2",)),
    (r"blocks\.(.+)", (r"transformer_blocks.\1",)),
    (r"temb_proj\.(\w+)", (r"time_emb_proj.\1",)),
    (r"shortcut\.(\w+)", (r"conv_shortcut.\1",)),
]
VAE_RULES: list[Rule] = [
    (r"norm\.(\w+)", (r"group_norm.\1",)),
    (r"([qkv])\.(\w+)", (r"to_\1.\2",)),
    (r"proj_out\.(\w+)", (r"to_out.0.\1",)),
    (r"shortcut\.(\w+)", (r"conv_shortcut.\1",)),
]
OLD_VAE_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # diffusers < 0.14


def unet_prefixes(cfg: UNetConfig) -> dict[str, str]:
    """Our UNet's module paths -> diffusers' (see the module table)."""
    p = {
        "time_mlp.0": "time_embedding.linear_1",
        "time_mlp.2": "time_embedding.linear_2",
        "conv_in": "conv_in",
        "norm_out": "conv_norm_out",
        "conv_out": "conv_out",
        "mid.0": "mid_block.resnets.0",
        "mid.1": "mid_block.attentions.0",
        "mid.2": "mid_block.resnets.1",
    }
    levels, i, j = len(cfg.channel_mult), 0, 0
    for lv in range(levels):
        for r in range(cfg.num_res_blocks):
            p[f"down.{i}.0"] = f"down_blocks.{lv}.resnets.{r}"
            if lv in cfg.attention_levels:
                p[f"down.{i}.1"] = f"down_blocks.{lv}.attentions.{r}"
            i += 1
        if lv < levels - 1:
            p[f"down.{i}.0"] = f"down_blocks.{lv}.downsamplers.0"
            i += 1
    for up, lv in enumerate(reversed(range(levels))):
        for r in range(cfg.num_res_blocks + 1):
            p[f"up.{j}.0"] = f"up_blocks.{up}.resnets.{r}"
            if lv in cfg.attention_levels:
                p[f"up.{j}.1"] = f"up_blocks.{up}.attentions.{r}"
            if lv > 0 and r == cfg.num_res_blocks:
                p[f"up.{j}.{2 if lv in cfg.attention_levels else 1}"] = f"up_blocks.{up}.upsamplers.0"
            j += 1
    return p


def vae_prefixes(cfg: AutoencoderConfig) -> dict[str, str]:
    """Our autoencoder's module paths -> diffusers' AutoencoderKL."""
    p = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    levels = len(cfg.channel_mult)
    for side, blocks, resample in (("encoder", "down_blocks", "downsamplers"), ("decoder", "up_blocks", "upsamplers")):
        for name in ("conv_in", "conv_out"):
            p[f"{side}.{name}"] = f"{side}.{name}"
        p[f"{side}.norm_out"] = f"{side}.conv_norm_out"
        for ours, theirs in (("block1", "resnets.0"), ("attn", "attentions.0"), ("block2", "resnets.1")):
            p[f"{side}.mid.{ours}"] = f"{side}.mid_block.{theirs}"
        for lv in range(levels):
            n = cfg.num_res_blocks + (side == "decoder")
            for r in range(n):
                p[f"{side}.levels.{lv}.blocks.{r}"] = f"{side}.{blocks}.{lv}.resnets.{r}"
                p[f"{side}.levels.{lv}.attns.{r}"] = f"{side}.{blocks}.{lv}.attentions.{r}"
            p[f"{side}.levels.{lv}.resample"] = f"{side}.{blocks}.{lv}.{resample}.0"
    return p


def _keys(module_cls: Any, cfg: Any) -> list[str]:
    with torch.device("meta"):
        return list(module_cls(cfg).state_dict())


def unet_keymap(cfg: UNetConfig) -> KeyMap:
    from ldmctl.unet import UNet

    return rename(unet_prefixes(cfg), UNET_RULES, _keys(UNet, cfg))


def vae_keymap(cfg: AutoencoderConfig) -> KeyMap:
    from ldmctl.autoencoder import build_autoencoder

    keys = [k for k in _keys(build_autoencoder, cfg) if k != "scale_factor"]
    return rename(vae_prefixes(cfg), VAE_RULES, keys)


def modern_vae_names(tensors: dict[str, Any]) -> dict[str, Any]:
    """Keys of VAEs saved by diffusers before 0.14 (``query``/``key``/``value``/``proj_attn``) renamed."""
    out = {}
    for k, v in tensors.items():
        head, _, leaf = k.rpartition(".")
        base, _, last = head.rpartition(".")
        out[f"{base}.{OLD_VAE_NAMES[last]}.{leaf}" if last in OLD_VAE_NAMES and ".attentions." in k else k] = v
    return out


def _refuse(where: str, found: dict[str, Any]) -> None:
    if found:
        listing = ", ".join(f"{k}={v!r}" for k, v in found.items())
        raise CheckpointError(
            f"{where} uses features ldmctl does not build: {listing}",
            hint="docs/pretrained.md lists the supported architectures",
        )


UNET_FIXED = {
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "resnet_time_scale_shift": "default",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "mid_block_scale_factor": 1,
    "attention_type": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "class_embeddings_concat": False,
}  # key -> the only value ldmctl builds (a missing key means diffusers' default, which is this one)
UNET_ABSENT = (
    "class_embed_type",
    "addition_embed_type",
    "num_class_embeds",
    "encoder_hid_dim",
    "time_cond_proj_dim",
    "timestep_post_act",
    "projection_class_embeddings_input_dim",
    "cross_attention_norm",
    "reverse_transformer_layers_per_block",
    "addition_time_embed_dim",
)  # must be null


def _levels(cfg: dict[str, Any], where: str) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    widths = list(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    down = list(cfg.get("down_block_types", ()))
    up = list(cfg.get("up_block_types", ()))
    attn = tuple(i for i, t in enumerate(down) if t == "CrossAttnDownBlock2D")
    plain = {"CrossAttnDownBlock2D", "DownBlock2D"}
    if len(down) != len(widths) or set(down) - plain:
        _refuse(where, {"down_block_types": down})
    expect = ["CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(len(widths)))]
    if up != expect:
        _refuse(where, {"up_block_types": up})
    if any(w % widths[0] for w in widths):
        _refuse(where, {"block_out_channels": widths})
    return widths[0], tuple(w // widths[0] for w in widths), attn


def _heads(cfg: dict[str, Any], widths: list[int], where: str) -> dict[str, int]:
    """diffusers' ``attention_head_dim`` is the number of heads (a legacy name); per level or one for all."""
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    if isinstance(heads, int):
        return {"num_heads": heads, "head_channels": 32}
    per = list(heads)
    dims = {w // h for w, h in zip(widths, per, strict=True)}
    if len(dims) != 1 or any(w % h for w, h in zip(widths, per, strict=True)):
        _refuse(where, {"attention_head_dim": per})
    return {"num_heads": 0, "head_channels": dims.pop()}


def unet_config_from_diffusers(cfg: dict[str, Any], where: str) -> tuple[UNetConfig, int]:
    """Our UNetConfig (and the trained latent side) from a UNet2DConditionModel config.json."""
    _refuse(where, {k: cfg[k] for k, v in UNET_FIXED.items() if k in cfg and cfg[k] != v})
    _refuse(where, {k: cfg[k] for k in UNET_ABSENT if cfg.get(k) is not None})
    mc, mult, attn = _levels(cfg, where)
    widths = [mc * m for m in mult]
    depth, per_block = cfg.get("transformer_layers_per_block", 1), cfg.get("layers_per_block", 2)
    if not isinstance(depth, int) or not isinstance(per_block, int):
        _refuse(where, {"transformer_layers_per_block": depth, "layers_per_block": per_block})
    time_dim = cfg.get("time_embedding_dim") or 4 * mc
    if time_dim % mc:
        _refuse(where, {"time_embedding_dim": time_dim})
    unet = UNetConfig(
        in_channels=int(cfg.get("in_channels", 4)),
        out_channels=int(cfg.get("out_channels", 4)),
        model_channels=mc,
        channel_mult=mult,
        num_res_blocks=per_block,
        attention_levels=attn,
        mid_attention=True,
        transformer_depth=depth,
        norm_groups=int(cfg.get("norm_num_groups", 32)),
        norm_eps=float(cfg.get("norm_eps", 1e-5)),
        downsample_padding=int(cfg.get("downsample_padding", 1)),
        upcast_attention=bool(cfg.get("upcast_attention", False)),
        linear_projection=bool(cfg.get("use_linear_projection", False)),
        time_embed_mult=time_dim // mc,
        context_dim=int(cfg.get("cross_attention_dim", 1280)),
        dropout=float(cfg.get("dropout", 0.0)),
        **_heads(cfg, widths, where),
    )
    return unet, int(cfg.get("sample_size", 64))


def unet_config_to_diffusers(cfg: UNetConfig, latent_size: int) -> dict[str, Any]:
    """The UNet2DConditionModel config.json of our UNetConfig (CheckpointError where it has no equivalent)."""
    unsupported = {
        "add_dim": cfg.add_dim,
        "token_dim": cfg.token_dim,
        "concat_channels": cfg.concat_channels,
        "scale_shift_norm": cfg.scale_shift_norm,
        "conv_resample": not cfg.conv_resample,
        "mid_attention": not cfg.mid_attention,
        "ff_mult": cfg.ff_mult != 4 and cfg.ff_mult,
        "context_dim": not cfg.context_dim and "0 (no cross-attention)",
    }
    _refuse("this model's UNet (for diffusers)", {k: v for k, v in unsupported.items() if v})
    widths = [cfg.model_channels * m for m in cfg.channel_mult]
    heads = cfg.num_heads if cfg.num_heads > 0 else [max(1, w // cfg.head_channels) for w in widths]
    levels = range(len(widths))
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": latent_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels or cfg.in_channels,
        "block_out_channels": widths,
        "layers_per_block": cfg.num_res_blocks,
        "down_block_types": ["CrossAttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in levels],
        "up_block_types": [
            "CrossAttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D" for i in reversed(levels)
        ],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "attention_head_dim": heads,
        "cross_attention_dim": cfg.context_dim,
        "transformer_layers_per_block": cfg.transformer_depth,
        "norm_num_groups": cfg.norm_groups,
        "norm_eps": cfg.norm_eps,
        "downsample_padding": cfg.downsample_padding,
        "use_linear_projection": cfg.linear_projection,
        "upcast_attention": cfg.upcast_attention,
        "time_embedding_dim": None if cfg.time_embed_mult == 4 else cfg.time_embed_mult * cfg.model_channels,
        "dropout": cfg.dropout,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
    }


def vae_config_from_diffusers(cfg: dict[str, Any], where: str) -> tuple[AutoencoderConfig, float]:
    """Our AutoencoderConfig (kind kl) and the latent scale factor from an AutoencoderKL config.json."""
    fixed = {"act_fn": "silu", "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True}
    _refuse(where, {k: cfg[k] for k, v in fixed.items() if k in cfg and cfg[k] != v})
    _refuse(where, {k: cfg[k] for k in ("shift_factor", "latents_mean", "latents_std") if cfg.get(k) is not None})
    widths = list(cfg.get("block_out_channels", (64,)))
    down, up = list(cfg.get("down_block_types", ["DownEncoderBlock2D"])), list(cfg.get("up_block_types", []))
    attn = tuple(i for i, t in enumerate(down) if t == "AttnDownEncoderBlock2D")
    want_up = ["AttnUpDecoderBlock2D" if i in attn else "UpDecoderBlock2D" for i in reversed(range(len(widths)))]
    if set(down) - {"DownEncoderBlock2D", "AttnDownEncoderBlock2D"} or len(down) != len(widths) or up != want_up:
        _refuse(where, {"down_block_types": down, "up_block_types": up})
    if any(w % widths[0] for w in widths) or cfg.get("out_channels", 3) != cfg.get("in_channels", 3):
        _refuse(where, {"block_out_channels": widths, "out_channels": cfg.get("out_channels")})
    ae = AutoencoderConfig(
        kind="kl",
        in_channels=int(cfg.get("in_channels", 3)),
        base_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=int(cfg.get("layers_per_block", 1)),
        z_channels=int(cfg.get("latent_channels", 4)),
        attn_resolutions=attn,
        mid_attention=True,
        norm_groups=int(cfg.get("norm_num_groups", 32)),
    )
    return ae, float(cfg.get("scaling_factor", 0.18215))


def vae_config_to_diffusers(cfg: AutoencoderConfig, scale_factor: float, sample_size: int) -> dict[str, Any]:
    """The AutoencoderKL config.json of our (KL) AutoencoderConfig."""
    unsupported = {
        "kind": cfg.kind != "kl" and cfg.kind,
        "linear_shortcut": cfg.linear_shortcut,
        "mid_attention": not cfg.mid_attention,
        "dropout": cfg.dropout,
    }
    _refuse("this model's autoencoder (for diffusers)", {k: v for k, v in unsupported.items() if v})
    levels = range(len(cfg.channel_mult))
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels,
        "block_out_channels": [cfg.base_channels * m for m in cfg.channel_mult],
        "down_block_types": [
            "AttnDownEncoderBlock2D" if i in cfg.attn_resolutions else "DownEncoderBlock2D" for i in levels
        ],
        "up_block_types": [
            "AttnUpDecoderBlock2D" if i in cfg.attn_resolutions else "UpDecoderBlock2D" for i in reversed(levels)
        ],
        "layers_per_block": cfg.num_res_blocks,
        "latent_channels": cfg.z_channels,
        "norm_num_groups": cfg.norm_groups,
        "act_fn": "silu",
        "sample_size": sample_size,
        "scaling_factor": scale_factor,
    }


__all__ = [
    "unet_config_from_diffusers",
    "unet_config_to_diffusers",
    "unet_keymap",
    "unet_prefixes",
    "vae_config_from_diffusers",
    "vae_config_to_diffusers",
    "vae_keymap",
    "vae_prefixes",
]
