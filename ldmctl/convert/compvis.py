"""The original CompVis / Stable Diffusion layouts: SD 1.x / 2.x single files and first-stage files.

A Stable Diffusion single file (``.ckpt`` or ``.safetensors``) holds the UNet under
``model.diffusion_model.``, the KL autoencoder under ``first_stage_model.`` and the text encoder
under ``cond_stage_model.`` (weight names: :mod:`ldmctl.convert.compvis_keys`). A CompVis first
stage (``models/first_stage_models/*``) holds ``encoder.*``, ``decoder.*``, ``quant_conv``,
``post_quant_conv`` (and ``quantize.embedding`` for VQ), maybe under ``first_stage_model.``, and
usually its training loss (``loss.*``: discriminator, LPIPS), which is not needed and skipped.

The architecture is read from the tensor shapes (:mod:`ldmctl.convert.compvis_arch`); a CompVis
YAML (``--config``) must agree with them and supplies what they cannot tell. Without one, these
stated rules apply (each logged where it is used):

* attention heads: context width 768 -> 8 heads (SD 1.x), 1024 -> 64-wide heads (SD 2.x);
* prediction: eps for SD 1.x (CLIP text encoder); SD 2.x (OpenCLIP) is refused without
  ``--prediction`` or a YAML, because 2.x-512 predicts eps and 2.x-768 predicts v;
* schedule: the file's own ``betas`` when it has them, else SD's (``sqrt_linear`` in ldmctl's
  names, CompVis' "linear", 0.00085 .. 0.012, 1,000 steps);
* latent scale: the file's ``scale_factor``, else the YAML's, else 0.18215 (SD's);
* latent size: 96 for an SD 2.x v model (768 px), else the YAML's ``image_size``, else 64;
* UNet norms: eps 1e-5 and symmetric downsampling padding (openaimodel); SD 2.x computes attention
  in float32 under half precision (``upcast_attention``, as SD 2.1 needs).

A file holding EMA weights beside the trained ones (``model_ema.*``, the "full-ema" releases) is
converted from the EMA weights (the ones the authors sample with), as logged.

First stages: a standalone CompVis first stage carries no latent scale. The YAML of an LDM that
uses it may (``scale_factor``); otherwise VQ first stages get 1.0 (every CompVis VQ LDM used it),
the kl-f8 architecture of Stable Diffusion gets SD's 0.18215, and any other KL gets 1.0 with a
warning: ``train-ldm`` uses the stored value as is, and convert has no images to measure
1 / std of the latents on (``ldmctl.train.ae.estimate_scale_factor`` does that from data).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmctl.config import AutoencoderConfig, DiffusionConfig, UNetConfig
from ldmctl.convert.build import Filler, Parts
from ldmctl.convert.common import fill, read_json, unfill
from ldmctl.convert.compvis_arch import (
    check_first_stage_yaml,
    check_unet_yaml,
    first_stage_from_shapes,
    unet_from_shapes,
    unet_heads,
)
from ldmctl.convert.compvis_keys import first_stage_keymap, unet_keymap, unet_shapes, view
from ldmctl.convert.compvis_text import read_text, text_kind
from ldmctl.errors import CheckpointError, ConfigError, PackageError
from ldmctl.schedule import make_betas

log = logging.getLogger(__name__)
UNET, FIRST, COND, EMA = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "model_ema."
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "scale_factor",
)  # LatentDiffusion buffers: recomputed by ldmctl (betas and scale_factor are read)
SCHEDULES = {"linear": "sqrt_linear", "sqrt_linear": "linear", "cosine": "cosine"}  # CompVis name -> ours
PREDICTIONS = {"eps": "eps", "v": "v", "x0": "x0"}
SD_SCALE = 0.18215
FIRST_STAGE_KEYS = ("encoder.conv_in.weight", "decoder.conv_in.weight", "quant_conv.weight", "post_quant_conv.weight")


def load_config(path: Path) -> dict[str, Any]:
    """The ``model:`` block of a CompVis YAML (or JSON) config."""
    if not path.is_file():
        raise ConfigError(f"--config {str(path)!r} does not exist")
    if path.suffix == ".json":
        data: Any = read_json(path)
    else:
        try:
            import yaml
        except ImportError:
            raise PackageError("reading a CompVis YAML config needs PyYAML", hint="pip install pyyaml") from None
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read {str(path)!r} as YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"{str(path)!r} is not a CompVis config (no top-level 'model:' block)")
    return data["model"]


def _params(node: Any) -> dict[str, Any]:
    return dict(node.get("params") or {}) if isinstance(node, dict) else {}


def is_first_stage(keys: list[str]) -> bool:
    """Whether ``keys`` are a CompVis first stage (KL or VQ), maybe under ``first_stage_model.``."""
    inner = {k.removeprefix(FIRST) for k in keys}
    return set(FIRST_STAGE_KEYS) <= inner and any(k.startswith("encoder.down.") for k in inner)


def _first_stage(
    tensors: Mapping[str, Tensor], where: str, node: dict[str, Any] | None
) -> tuple[AutoencoderConfig, Filler]:
    """Config and filler of the first stage in ``tensors`` (loss and EMA tensors skipped)."""
    keys = list(tensors)
    prefix = FIRST if any(k.startswith(FIRST) for k in keys) else ""
    inner = {k[len(prefix) :]: k for k in keys if k.startswith(prefix) and k not in SCHEDULE_BUFFERS}
    stray = [k for k in keys if not k.startswith(prefix) and k not in SCHEDULE_BUFFERS]
    if stray:
        raise CheckpointError(f"{where}: unexpected tensors beside the first stage ({len(stray)}): {stray[:4]}")
    ema = [k for k in inner if k.startswith(EMA)]
    if ema:
        log.warning(
            "%s: skipping the first stage's %d EMA tensors (model_ema.*); using its trained weights", where, len(ema)
        )
    t = view(tensors, {k: v for k, v in inner.items() if not k.startswith(("loss.", EMA))})
    cfg = first_stage_from_shapes(t, where)
    if isinstance(node, dict):
        check_first_stage_yaml(cfg, _params(node), str(node.get("target", "")), where)
    keymap = first_stage_keymap(cfg)

    def filler(ae: nn.Module) -> None:
        fill(ae, t, keymap, f"{where} (first stage{', ' + prefix + '*' if prefix else ''})", own=("scale_factor",))

    return cfg, filler


def _first_stage_scale(
    cfg: AutoencoderConfig, tensors: Mapping[str, Tensor], model: dict[str, Any] | None, where: str
) -> float:
    if "scale_factor" in tensors:
        return float(tensors["scale_factor"])
    stated = _params(model).get("scale_factor")
    if stated is not None and not _params(model).get("scale_by_std"):
        return float(stated)
    if cfg.kind == "vq":
        return 1.0
    if cfg.z_channels == 4 and cfg.channel_mult == (1, 2, 4, 4) and cfg.base_channels == 128:
        log.warning(
            "%s: no latent scale stored; using Stable Diffusion's %s for its kl-f8 architecture", where, SD_SCALE
        )
        return SD_SCALE
    log.warning(
        "%s: no latent scale stored for this KL first stage; writing 1.0. train-ldm uses it as is: pass the "
        "LDM's YAML (--config, with scale_factor) or set it to 1 / std of this autoencoder's latents",
        where,
    )
    return 1.0


def read_first_stage(
    tensors: Mapping[str, Tensor], where: str, *, config: Path | None
) -> tuple[AutoencoderConfig, float, Filler]:
    """(AutoencoderConfig, latent scale, filler) of a CompVis first-stage file (module docstring).
    ``config``: its YAML (``model.params.ddconfig``) or that of an LDM using it (``first_stage_config``)."""
    model = load_config(config) if config is not None else None
    ldm = model if "first_stage_config" in _params(model) else None  # an LDM's YAML, not the first stage's own
    cfg, filler = _first_stage(tensors, where, _params(ldm)["first_stage_config"] if ldm else model)
    return cfg, _first_stage_scale(cfg, tensors, ldm, where), filler


def _split(keys: list[str], where: str) -> bool:
    """Check that every tensor belongs to a known part; whether EMA UNet weights are present."""
    unknown = [k for k in keys if not k.startswith((UNET, FIRST, COND, EMA)) and k not in SCHEDULE_BUFFERS]
    if unknown:
        raise CheckpointError(
            f"{where}: unexpected tensors for a Stable Diffusion file ({len(unknown)}): {', '.join(unknown[:4])}"
        )
    return any(k.startswith(EMA + "diffusion_model") for k in keys)


def _unet_tensors(tensors: Mapping[str, Tensor], keys: list[str], where: str, use_ema: bool) -> Mapping[str, Tensor]:
    """The UNet's tensors without their prefix: the EMA copies (``model_ema.diffusion_modelinput_blocks00weight``:
    Lightning's LitEma drops the dots) when the file has them."""
    names = {k[len(UNET) :]: k for k in keys if k.startswith(UNET)}
    if use_ema:
        ema = {short: EMA + ("diffusion_model." + short).replace(".", "") for short in names}
        present = set(keys)  # (``in`` on a lazily read file would read the tensor)
        missing = [v for v in ema.values() if v not in present]
        if missing:
            raise CheckpointError(f"{where}: incomplete EMA weights ({len(missing)} missing, e.g. {missing[:2]})")
        log.warning("%s: converting the EMA weights of the UNet (model_ema.*), not the raw training weights", where)
        names = ema
    return view(tensors, names)


def _unet(t: Mapping[str, Tensor], where: str, node: dict[str, Any] | None, sd2: bool) -> UNetConfig:
    found = unet_from_shapes(t, where)
    params = _params(node) if isinstance(node, dict) else None
    if params is not None:
        check_unet_yaml(found, params, where)
    heads = unet_heads(params, found["context_dim"], where)
    return UNetConfig(
        **found,
        **heads,
        out_channels=found["in_channels"],
        norm_groups=32,
        norm_eps=1e-5,
        downsample_padding=1,
        upcast_attention=sd2,
        dropout=float((params or {}).get("dropout", 0.0)),
    )


def _diffusion(
    params: dict[str, Any] | None, tensors: Mapping[str, Tensor], prediction: str, where: str
) -> DiffusionConfig:
    """The noise schedule from the YAML, else from the file's ``betas``, else SD's; checked against ``betas``."""
    betas = tensors["betas"].double() if "betas" in tensors else None
    if params is not None:
        name = str(params.get("beta_schedule", "linear"))
        if name not in SCHEDULES or params.get("given_betas") is not None:
            raise ConfigError(f"{where}: beta_schedule {name!r}; ldmctl converts {sorted(SCHEDULES)}")
        kind, steps = SCHEDULES[name], int(params.get("timesteps", 1000))
        start, end = float(params.get("linear_start", 1e-4)), float(params.get("linear_end", 2e-2))
    elif betas is not None:
        steps, start, end = len(betas), float(f"{betas[0]:.6g}"), float(f"{betas[-1]:.6g}")
        kind = next((k for k in ("sqrt_linear", "linear") if _matches(betas, k, start, end)), "")
        if not kind:
            raise CheckpointError(
                f"{where}: its betas follow no schedule ldmctl builds", hint="pass its YAML (--config)"
            )
    else:
        kind, steps, start, end = "sqrt_linear", 1000, 0.00085, 0.012
    if betas is not None and not _matches(betas, kind, start, end):
        raise CheckpointError(f"{where}: the file's betas are not the {kind} schedule {start} .. {end} of its config")
    return DiffusionConfig(schedule=kind, timesteps=steps, linear_start=start, linear_end=end, prediction=prediction)  # type: ignore[arg-type]


def _matches(betas: Tensor, kind: str, start: float, end: float) -> bool:
    ours = make_betas(kind, len(betas), start, end)
    return bool(torch.allclose(betas, ours, rtol=1e-5, atol=1e-9))


def _prediction(prediction: str | None, params: dict[str, Any] | None, sd2: bool, where: str) -> str:
    if prediction is not None:
        return prediction
    if params is not None:
        stated = str(params.get("parameterization", "eps"))
        if stated not in PREDICTIONS:
            raise ConfigError(f"{where}: parameterization {stated!r}; ldmctl converts eps, v and x0")
        return PREDICTIONS[stated]
    if sd2:
        raise ConfigError(
            f"{where} is a Stable Diffusion 2.x file: whether it predicts the noise (2.x-512 'base') or v "
            "(2.x-768) is not stored in the weights",
            hint="pass --prediction eps or --prediction v, or the model's YAML with --config",
        )
    return "eps"


def read_single_file(
    tensors: Mapping[str, Tensor],
    where: str,
    *,
    config: Path | None,
    prediction: str | None,
    tokenizer: Path | None,
    layer: str,
) -> Parts:
    """The parts of a Stable Diffusion 1.x / 2.x single file (module docstring for the rules)."""
    params = _params(load_config(config)) if config is not None else None
    p = params or {}
    if str(p.get("conditioning_key", "crossattn")) != "crossattn":
        raise ConfigError(f"{where}: conditioning_key {p['conditioning_key']!r}; ldmctl converts crossattn models")
    keys = list(tensors)
    use_ema = _split(keys, where)
    sd2 = text_kind(keys, where) == "openclip"
    pred = _prediction(prediction, params, sd2, where)
    unet_t = _unet_tensors(tensors, keys, where, use_ema)
    unet = _unet(unet_t, where, p.get("unet_config"), sd2)
    text, _ = read_text(tensors, where, folder=tokenizer, layer=layer, cond=p.get("cond_stage_config"))
    first = view(tensors, {k: k for k in keys if k.startswith(FIRST)})
    ae, fill_ae = _first_stage(first, where, p.get("first_stage_config"))
    scale = SD_SCALE if params is None else float(p.get("scale_factor", 1.0))  # 1.0: CompVis' default
    unet_map, label = unet_keymap(unet, prefix=""), f"{where} (UNet, {EMA if use_ema else UNET}*)"

    def fill_unet(module: nn.Module) -> None:
        fill(module, unet_t, unet_map, label)

    return Parts(
        unet=unet,
        fill_unet=fill_unet,
        autoencoder=ae,
        fill_autoencoder=fill_ae,
        scale_factor=float(tensors["scale_factor"]) if "scale_factor" in tensors else scale,
        diffusion=_diffusion(params, tensors, pred, where),
        latent_size=96 if sd2 and pred == "v" else int(p.get("image_size", 64)),
        text=text,
        source={"layout": "compvis", "variant": "sd2" if sd2 else "sd1", "ema": use_ema, "path": Path(where).name},
    )


def _exportable(model: Any) -> None:
    """CheckpointError naming what this model has that a Stable Diffusion single file cannot hold."""
    cfg, ae = model.config, model.autoencoder.config
    u = cfg.unet
    checks = {
        "conditioners": ([c.name for c in model.conditioners.items], ["clip-text"]),
        "autoencoder.kind": (ae.kind, "kl"),
        "autoencoder.norm_groups": (ae.norm_groups, 32),
        "autoencoder.linear_shortcut": (ae.linear_shortcut, False),
        "autoencoder.channel_mult[0]": (ae.channel_mult[0], 1),
        "unet.norm_groups": (u.norm_groups, 32),
        "unet.norm_eps": (u.norm_eps, 1e-5),
        "unet.downsample_padding": (u.downsample_padding, 1),
        "unet.scale_shift_norm": (u.scale_shift_norm, False),
        "unet.conv_resample": (u.conv_resample, True),
        "unet.mid_attention": (u.mid_attention, True),
        "unet (concat_channels, add_dim, token_dim)": ((u.concat_channels, u.add_dim, u.token_dim), (0, 0, 0)),
        "(sr_scale, inpaint)": ((cfg.sr_scale, cfg.inpaint), (0, False)),
    }
    wrong = [f"{k} = {have!r} (needs {want!r})" for k, (have, want) in checks.items() if have != want]
    if wrong:
        raise CheckpointError("this model does not fit the Stable Diffusion single-file layout: " + "; ".join(wrong))
    layer = model.conditioners.items[0].config.layer
    if layer != "last":
        log.warning("a CompVis file does not record which CLIP layer conditions the UNet; %r is not kept", layer)


def to_compvis(model: Any) -> dict[str, Tensor]:
    """An SD-like ldmctl LatentDiffusion (one clip-text conditioner, a KL autoencoder, SD's UNet norms)
    in the Stable Diffusion 1.x single-file layout (text encoder under ``cond_stage_model.transformer.``)."""
    _exportable(model)
    cfg, ae = model.config, model.autoencoder
    unet_map = unet_keymap(cfg.unet)
    out = unfill(model.unet.state_dict(), unet_map, unet_shapes(cfg.unet, unet_map))
    ae_state = {k: v for k, v in ae.state_dict().items() if k != "scale_factor"}
    out |= unfill(ae_state, first_stage_keymap(ae.config, FIRST), {})
    clip = model.conditioners.items[0].model
    state = {k.removeprefix("text_model."): v for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    out |= {f"{COND}transformer.text_model.{k}": v.contiguous() for k, v in state.items()}
    d = cfg.diffusion
    out["betas"] = make_betas(d.schedule, d.timesteps, d.linear_start, d.linear_end).float()
    return out


__all__ = ["is_first_stage", "load_config", "read_first_stage", "read_single_file", "to_compvis"]
