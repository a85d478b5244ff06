"""Reading diffusers folders: a ``StableDiffusionPipeline`` (``model_index.json`` with ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), or one ``UNet2DConditionModel`` or
``AutoencoderKL`` folder (``config.json`` + weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldmctl.config import DiffusionConfig
from ldmctl.convert.build import Parts, TextPart
from ldmctl.convert.common import fill, read_json, read_weights
from ldmctl.convert.diffusers import (
    modern_vae_names,
    unet_config_from_diffusers,
    unet_keymap,
    vae_config_from_diffusers,
    vae_keymap,
)
from ldmctl.errors import CheckpointError

WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)
SCHEDULES = {"scaled_linear": "sqrt_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def weights_in(folder: Path) -> Path:
    """The weight file of a diffusers/transformers model folder (safetensors preferred)."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    shards = sorted(folder.glob("*.safetensors.index.json"))
    if shards:
        raise CheckpointError(f"{str(folder)!r} holds sharded weights; ldmctl convert reads single-file weights")
    raise CheckpointError(f"{str(folder)!r} holds no weight file (looked for {', '.join(WEIGHT_NAMES)})")


def folder_class(folder: Path) -> str:
    """``pipeline`` for a model_index.json folder, else the ``_class_name`` of its config.json."""
    if (folder / "model_index.json").is_file():
        return "pipeline"
    if (folder / "config.json").is_file():
        return str(read_json(folder / "config.json").get("_class_name", ""))
    return ""


def read_unet(folder: Path) -> tuple[Any, int, Any]:
    """(UNetConfig, latent side, filler) of a UNet2DConditionModel folder."""
    cfg, size = unet_config_from_diffusers(read_json(folder / "config.json"), str(folder))
    tensors, keymap = read_weights(weights_in(folder)), unet_keymap(cfg)
    return cfg, size, lambda unet: fill(unet, tensors, keymap, f"{folder} (UNet)")


def read_vae(folder: Path) -> tuple[Any, float, Any]:
    """(AutoencoderConfig, scale factor, filler) of an AutoencoderKL folder."""
    cfg, scale = vae_config_from_diffusers(read_json(folder / "config.json"), str(folder))
    tensors = read_weights(weights_in(folder))
    if any(".query." in k or ".proj_attn." in k for k in tensors):
        tensors = modern_vae_names({k: tensors[k] for k in tensors})
    keymap = vae_keymap(cfg)
    return cfg, scale, lambda ae: fill(ae, tensors, keymap, f"{folder} (VAE)", own=("scale_factor",))


def read_text(encoder: Path, tokenizer: Path, layer: str = "last") -> TextPart:
    """A CLIP text encoder folder (transformers ``CLIPTextModel``) and its tokenizer folder."""
    from ldmctl_conditioners.clip import load_clip_tokenizer, pack_tokenizer

    config = read_json(encoder / "config.json")
    kind = config.get("model_type") or ""
    if kind not in ("clip_text_model", "clip"):
        raise CheckpointError(
            f"{str(encoder)!r} holds a {kind or 'unknown'} model; ldmctl converts CLIP text encoders (CLIPTextModel)"
        )
    if kind == "clip":
        config = config.get("text_config", {})
    load_clip_tokenizer(tokenizer)  # fails clearly now rather than at the first prompt
    tensors = read_weights(weights_in(encoder))
    return TextPart(config=config, tensors=tensors, tokenizer=pack_tokenizer(tokenizer), layer=layer)


def read_scheduler(folder: Path) -> DiffusionConfig:
    """The training noise schedule of a diffusers scheduler config."""
    cfg = read_json(folder / "scheduler_config.json")
    schedule, prediction = cfg.get("beta_schedule", "linear"), cfg.get("prediction_type", "epsilon")
    refused = {
        "beta_schedule": schedule if schedule not in SCHEDULES else None,
        "prediction_type": prediction if prediction not in PREDICTIONS else None,
        "trained_betas": cfg.get("trained_betas") or None,
        "rescale_betas_zero_snr": cfg.get("rescale_betas_zero_snr") or None,
    }
    refused = {k: v for k, v in refused.items() if v is not None}
    if refused:
        raise CheckpointError(f"{str(folder)!r}: scheduler settings ldmctl does not support: {refused}")
    return DiffusionConfig(
        schedule=SCHEDULES[schedule],  # type: ignore[arg-type]
        timesteps=int(cfg.get("num_train_timesteps", 1000)),
        linear_start=float(cfg.get("beta_start", 0.0001)),
        linear_end=float(cfg.get("beta_end", 0.02)),
        prediction=PREDICTIONS[prediction],  # type: ignore[arg-type]
    )


def read_pipeline(folder: Path, layer: str = "last") -> Parts:
    """The parts of a StableDiffusionPipeline folder."""
    index = read_json(folder / "model_index.json")
    missing = [p for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / p).is_dir()]
    if missing:
        raise CheckpointError(f"{str(folder)!r}: model_index.json but no {', '.join(missing)} folder")
    cls = index.get("_class_name", "")
    if cls not in ("StableDiffusionPipeline", "LDMTextToImagePipeline", ""):
        raise CheckpointError(f"{str(folder)!r} is a {cls}; ldmctl converts StableDiffusionPipeline folders")
    text = read_text(folder / "text_encoder", folder / "tokenizer", layer)
    source = {"layout": "diffusers", "class": cls or "StableDiffusionPipeline", "path": folder.name}
    return read_parts(folder / "unet", folder / "vae", read_scheduler(folder / "scheduler"), text, source)


def read_parts(unet_dir: Path, vae_dir: Path, diffusion: DiffusionConfig, text: TextPart, source: dict) -> Parts:
    """The parts of an LDM from a UNet folder, a VAE folder, a schedule and a text encoder."""
    unet, size, fill_unet = read_unet(unet_dir)
    ae, scale, fill_ae = read_vae(vae_dir)
    return Parts(unet, fill_unet, ae, fill_ae, scale, diffusion, size, text, source)


__all__ = [
    "folder_class",
    "read_parts",
    "read_pipeline",
    "read_scheduler",
    "read_text",
    "read_unet",
    "read_vae",
    "weights_in",
]
