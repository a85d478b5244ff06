"""Architectures of CompVis files, read from the tensor shapes and checked against a CompVis YAML.

The weights fix almost everything: widths, levels, blocks per level, where attention is, the
latent width, the codebook. What they cannot tell (attention heads, the prediction target, the
noise schedule, the latent scale) comes from the YAML or from stated rules in
:mod:`ldmctl.convert.compvis`. Where a YAML is given, every value it states that the weights also
fix must agree, and every feature it switches on that ldmctl does not build is refused by name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ldmctl.config import AutoencoderConfig
from ldmctl.convert.common import shape_of
from ldmctl.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
GROUPS = 32  # CompVis GroupNorm groups (first stage, UNet ResBlocks and transformers alike)
HEAD_RULES = {
    768: ({"num_heads": 8, "head_channels": 32}, "context width 768 (CLIP ViT-L/14, SD 1.x): 8 heads"),
    1024: ({"num_heads": 0, "head_channels": 64}, "context width 1024 (OpenCLIP ViT-H/14, SD 2.x): 64-wide heads"),
}
UNET_REFUSED = {  # YAML unet_config.params key -> the value ldmctl builds (anything else is refused)
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "num_classes": None,
    "n_embed": None,
    "disable_self_attentions": None,
    "num_attention_blocks": None,
    "disable_middle_self_attn": False,
    "use_spatial_transformer": True,
    "adm_in_channels": None,
    "conv_resample": True,
    "dims": 2,
}


def indices(keys: set[str], prefix: str) -> list[int]:
    """The integers i such that some key starts with ``prefix + f"{i}."``, sorted."""
    found = {head for k in keys if k.startswith(prefix) and (head := k[len(prefix) :].split(".", 1)[0]).isdigit()}
    return sorted(int(h) for h in found)


def _need(t: Mapping[str, Tensor], keys: list[str], where: str) -> None:
    missing = [k for k in keys if k not in t]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing)}; not a complete CompVis model")


def _mult(widths: list[int], base: int, where: str) -> tuple[int, ...]:
    if any(w % base for w in widths):
        raise CheckpointError(f"{where}: level widths {widths} are not multiples of the first width {base}")
    return tuple(w // base for w in widths)


def first_stage_from_shapes(t: Mapping[str, Tensor], where: str) -> AutoencoderConfig:
    """The AutoencoderConfig of CompVis first-stage tensors ``t`` (names without a prefix)."""
    _need(
        t, ["encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_out.weight", "quant_conv.weight"], where
    )
    keys = set(t)
    base, in_ch = shape_of(t, "encoder.conv_in.weight")[:2]
    levels = indices(keys, "encoder.down.")
    _need(t, [f"encoder.down.{lv}.block.0.conv1.weight" for lv in levels], where)
    widths = [shape_of(t, f"encoder.down.{lv}.block.0.conv1.weight")[0] for lv in levels]
    vq = "quantize.embedding.weight" in t
    z_out, quant = shape_of(t, "encoder.conv_out.weight")[0], shape_of(t, "quant_conv.weight")[0]
    if not vq and quant != z_out:
        raise CheckpointError(
            f"{where}: a KL first stage with embed_dim {quant // 2} != z_channels {z_out // 2}; ldmctl's "
            "AutoencoderKL keeps the latent as wide as the encoder output"
        )
    if shape_of(t, "decoder.conv_out.weight")[0] != in_ch:
        raise CheckpointError(f"{where}: the decoder writes {shape_of(t, 'decoder.conv_out.weight')[0]} channels, "
                              f"the encoder reads {in_ch}; ldmctl builds autoencoders with out_ch == in_channels")  # fmt: skip
    return AutoencoderConfig(
        kind="vq" if vq else "kl",
        in_channels=in_ch,
        base_channels=base,
        channel_mult=_mult(widths, base, where),
        num_res_blocks=len(indices(keys, "encoder.down.0.block.")),
        z_channels=z_out if vq else z_out // 2,
        attn_resolutions=tuple(lv for lv in levels if any(k.startswith(f"encoder.down.{lv}.attn.") for k in keys)),
        mid_attention=any(k.startswith("encoder.mid.attn_1.") for k in keys),
        norm_groups=GROUPS,
        n_embed=shape_of(t, "quantize.embedding.weight")[0] if vq else 1024,
        embed_dim=quant if vq else z_out // 2,
    )


def _disagree(where: str, what: str, stated: dict[str, Any], found: dict[str, Any]) -> None:
    wrong = {k: (v, found[k]) for k, v in stated.items() if k in found and v is not None and v != found[k]}
    if wrong:
        listing = "; ".join(f"{k}: {a!r} in the config, {b!r} in the weights" for k, (a, b) in wrong.items())
        raise ConfigError(f"{where}: the {what} config does not describe these weights ({listing})")


def check_first_stage_yaml(cfg: AutoencoderConfig, params: dict[str, Any], target: str, where: str) -> None:
    """ConfigError where a CompVis first-stage ``params`` block (class ``target``) disagrees with
    ``cfg`` or asks for something ldmctl does not build (linear attention, a remapped codebook)."""
    dd = params.get("ddconfig") or {}
    if target and not target.endswith(("AutoencoderKL", "VQModel", "VQModelInterface")):
        raise ConfigError(f"{where}: first stage {target!r}; ldmctl converts AutoencoderKL and VQModel")
    attn_type = dd.get("attn_type", "vanilla")
    if attn_type not in ("vanilla", "vanilla-xformers", "none") or dd.get("use_linear_attn"):
        raise ConfigError(f"{where}: first-stage attn_type {attn_type!r} (linear attention) is not built by ldmctl")
    if params.get("remap") is not None:
        raise ConfigError(
            f"{where}: the VQ first stage remaps its codebook indices (remap={params['remap']!r}); "
            "ldmctl's quantiser indexes the full codebook",
            hint="convert a VQ model trained without remap",
        )
    n, res = len(cfg.channel_mult), int(dd.get("resolution", 256))
    attn = () if attn_type == "none" else tuple(i for i in range(n) if res // 2**i in dd.get("attn_resolutions", ()))
    found = {
        "ch": cfg.base_channels,
        "ch_mult": list(cfg.channel_mult),
        "num_res_blocks": cfg.num_res_blocks,
        "z_channels": cfg.z_channels,
        "in_channels": cfg.in_channels,
        "out_ch": cfg.in_channels,
        "double_z": cfg.kind == "kl",
    }
    stated = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dd.items() if k in found}
    stated |= {"attention levels": attn, "mid attention": attn_type != "none"}
    found |= {"attention levels": cfg.attn_resolutions, "mid attention": cfg.mid_attention}
    stated |= {"embed_dim": params.get("embed_dim"), "n_embed": params.get("n_embed")}
    found |= {"embed_dim": cfg.latent_channels, "n_embed": cfg.n_embed if cfg.kind == "vq" else None}
    _disagree(where, "first-stage", stated, found)


def _unet_levels(t: Mapping[str, Tensor], keys: set[str], where: str) -> list[list[tuple[int, bool]]]:
    """The input blocks after conv_in, grouped by level: [(ResBlock width, has attention), ...]."""
    levels: list[list[tuple[int, bool]]] = [[]]
    n = 1
    while any(k.startswith(f"input_blocks.{n}.") for k in keys):
        if f"input_blocks.{n}.0.op.weight" in keys:
            levels.append([])
        elif f"input_blocks.{n}.0.in_layers.2.weight" in keys:
            attn = any(k.startswith(f"input_blocks.{n}.1.") for k in keys)
            if attn and f"input_blocks.{n}.1.transformer_blocks.0.norm1.weight" not in keys:
                raise CheckpointError(
                    f"{where}: input_blocks.{n}.1 is not a SpatialTransformer (an AttentionBlock of an "
                    "unconditional or class-conditional CompVis LDM); ldmctl converts Stable Diffusion UNets"
                )
            levels[-1].append((shape_of(t, f"input_blocks.{n}.0.in_layers.2.weight")[0], attn))
        else:
            raise CheckpointError(f"{where}: input_blocks.{n} is neither a ResBlock nor a Downsample (op)")
        n += 1
    return levels


def unet_from_shapes(t: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """UNetConfig fields (all but the heads) of CompVis UNet tensors ``t`` (no ``model.diffusion_model.``)."""
    keys = set(t)
    for bad, what in (("label_emb.", "a class / image / noise-level embedding"), ("id_predictor.", "a codebook head")):
        if any(k.startswith(bad) for k in keys):
            raise CheckpointError(f"{where}: the UNet has {what} ({bad}*); ldmctl converts text-to-image UNets")
    _need(t, ["input_blocks.0.0.weight", "out.2.weight", "time_embed.0.weight"], where)
    mc, cin = shape_of(t, "input_blocks.0.0.weight")[:2]
    levels = _unet_levels(t, keys, where)
    counts, widths = {len(lv) for lv in levels}, [lv[0][0] if lv else 0 for lv in levels]
    if len(counts) != 1 or any(len({w for w, _ in lv}) != 1 or len({a for _, a in lv}) != 1 for lv in levels):
        raise CheckpointError(f"{where}: levels differ in ResBlock count, width or attention ({levels}); "
                              "ldmctl builds num_res_blocks and attention per level uniformly")  # fmt: skip
    cout = shape_of(t, "out.2.weight")[0]
    if cout != cin:
        raise CheckpointError(
            f"{where}: the UNet reads {cin} channels and predicts {cout} (an inpainting or depth model); "
            "ldmctl converts text-to-image UNets (in_channels == out_channels)"
        )
    if shape_of(t, "input_blocks.1.0.emb_layers.1.weight")[0] == 2 * widths[0]:
        raise CheckpointError(f"{where}: the UNet uses use_scale_shift_norm, which ldmctl does not convert")
    return {
        "in_channels": cin,
        "model_channels": mc,
        "channel_mult": _mult(widths, mc, where),
        "num_res_blocks": counts.pop(),
        "attention_levels": tuple(i for i, lv in enumerate(levels) if lv[0][1]),
        "time_embed_mult": shape_of(t, "time_embed.0.weight")[0] // mc,
        **_transformer(t, keys, where),
    }


def _transformer(t: Mapping[str, Tensor], keys: set[str], where: str) -> dict[str, Any]:
    """Depth, context width, FF width and projection kind of the middle SpatialTransformer."""
    st = "middle_block.1."
    if f"{st}transformer_blocks.0.attn2.to_k.weight" not in keys:
        raise CheckpointError(
            f"{where}: middle_block.1 is not a SpatialTransformer with cross-attention; "
            "ldmctl converts text-conditioned Stable Diffusion UNets"
        )
    blk = f"{st}transformer_blocks.0."
    width = shape_of(t, f"{st}norm.weight")[0]
    inner = shape_of(t, f"{blk}ff.net.2.weight")[1]
    if shape_of(t, f"{blk}ff.net.0.proj.weight")[0] != 2 * inner or inner % width:
        raise CheckpointError(f"{where}: the transformer feed-forward is not GEGLU with an integer width multiplier")
    if shape_of(t, f"{blk}attn1.to_k.weight")[1] != width:
        raise CheckpointError(f"{where}: attn1 attends to the context (disable_self_attn), which ldmctl does not build")
    return {
        "mid_attention": True,
        "transformer_depth": len(indices(keys, f"{st}transformer_blocks.")),
        "context_dim": shape_of(t, f"{blk}attn2.to_k.weight")[1],
        "ff_mult": inner // width,
        "linear_projection": len(shape_of(t, f"{st}proj_in.weight")) == 2,
    }


def check_unet_yaml(found: dict[str, Any], params: dict[str, Any], where: str) -> None:
    """ConfigError where a CompVis ``unet_config.params`` block disagrees with the weights or asks
    for a feature ldmctl does not build."""
    refused = {k: params[k] for k, v in UNET_REFUSED.items() if k in params and params[k] != v}
    if refused:
        raise ConfigError(f"{where}: the UNet config uses features ldmctl does not build: {refused}")
    ours = {
        "in_channels": found["in_channels"],
        "out_channels": found["in_channels"],
        "model_channels": found["model_channels"],
        "channel_mult": list(found["channel_mult"]),
        "num_res_blocks": found["num_res_blocks"],
        "attention_resolutions": sorted(2**lv for lv in found["attention_levels"]),
        "transformer_depth": found["transformer_depth"],
        "context_dim": found["context_dim"],
        "use_linear_in_transformer": found["linear_projection"],
    }
    stated = {k: params[k] for k in ours if k in params}
    if "attention_resolutions" in stated:  # rates the UNet never reaches do not count
        reach = {2**i for i in range(len(found["channel_mult"]))}
        stated["attention_resolutions"] = sorted(set(stated["attention_resolutions"]) & reach)
    if "channel_mult" in stated:
        stated["channel_mult"] = list(stated["channel_mult"])
    per_level = stated.get("num_res_blocks")
    if isinstance(per_level, (list, tuple)) and len(set(per_level)) == 1:  # the same count for every level
        stated["num_res_blocks"] = per_level[0]
    _disagree(where, "UNet", stated, ours)


def unet_heads(params: dict[str, Any] | None, context_dim: int, where: str) -> dict[str, int]:
    """``num_heads`` / ``head_channels`` from the YAML, else by the stated rule for SD's context widths."""
    params = params or {}
    per_head, heads = params.get("num_head_channels", -1), params.get("num_heads", -1)
    if per_head not in (-1, None):
        return {"num_heads": 0, "head_channels": int(per_head)}
    if heads not in (-1, None):
        return {"num_heads": int(heads), "head_channels": 32}
    if context_dim in HEAD_RULES:
        rule, text = HEAD_RULES[context_dim]
        log.warning(
            "%s: attention heads are not stored in the weights; using the Stable Diffusion rule %s", where, text
        )
        return dict(rule)
    raise ConfigError(
        f"{where}: the number of attention heads cannot be read from the weights, and the context width "
        f"{context_dim} is not one of Stable Diffusion's ({', '.join(map(str, HEAD_RULES))})",
        hint="pass the model's CompVis YAML with --config (unet_config.params.num_heads or num_head_channels)",
    )


__all__ = [
    "check_first_stage_yaml",
    "check_unet_yaml",
    "first_stage_from_shapes",
    "indices",
    "unet_from_shapes",
    "unet_heads",
]
