"""ldmctl checkpoints out to diffusers folders (``ldmctl export CKPT OUT --format diffusers``).

* An LDM whose one conditioner is ``clip-text`` becomes a ``StableDiffusionPipeline`` folder
  (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``).
* Any other LDM whose UNet diffusers can express becomes ``unet/`` + ``vae/`` + ``scheduler/``
  (the model classes; its conditioners have no diffusers class and stay in ldmctl's file).
* An autoencoder checkpoint becomes one ``AutoencoderKL`` folder.

The scheduler is a ``DDIMScheduler`` with ldmctl's DDIM conventions (leading spacing, offset 1,
``set_alpha_to_one=False``), so the pipeline samples as ``ldmctl sample --sampler ddim`` does.
The folder is written next to its destination and renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ldmctl.checkpoint import load_autoencoder, read_checkpoint
from ldmctl.convert.common import unfill
from ldmctl.convert.diffusers import unet_config_to_diffusers, unet_keymap, vae_config_to_diffusers, vae_keymap
from ldmctl.errors import CheckpointError, ConfigError

DIFFUSERS_SCHEDULES = {"sqrt_linear": "scaled_linear", "linear": "linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
FORMAT_VERSION = "0.30.0"  # the diffusers version whose folder layout this writes


def _write_model(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config, "_diffusers_version": FORMAT_VERSION}, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "diffusion_pytorch_model.safetensors"))


def _unet_tensors(model: Any) -> dict[str, torch.Tensor]:
    cfg = model.config.unet
    shapes = {}
    if not cfg.linear_projection:  # SD 1.x stores the transformer's proj_in/proj_out as 1x1 convs
        for k, v in model.unet.state_dict().items():
            if k.endswith(("proj_in.weight", "proj_out.weight")) and v.ndim == 2:
                shapes[k] = (*v.shape, 1, 1)
    keymap = unet_keymap(cfg)
    their_shapes = {keymap[k][0]: s for k, s in shapes.items()}
    return unfill(model.unet.state_dict(), keymap, their_shapes)


def _vae_tensors(ae: Any) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in ae.state_dict().items() if k != "scale_factor"}
    keymap = vae_keymap(ae.config)
    shapes = {keymap[k][0]: tuple(v.shape[:2]) for k, v in state.items() if ".attn" in k and v.ndim == 4}
    return unfill(state, keymap, shapes)


def _scheduler(model: Any) -> dict[str, Any]:
    d = model.config.diffusion
    return {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": FORMAT_VERSION,
        "num_train_timesteps": d.timesteps,
        "beta_start": d.linear_start,
        "beta_end": d.linear_end,
        "beta_schedule": DIFFUSERS_SCHEDULES[d.schedule],
        "prediction_type": DIFFUSERS_PREDICTIONS[d.prediction],
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }


def _write_text(clip: Any, folder: Path) -> None:
    from ldmctl_conditioners.clip import unpack_tokenizer

    clip.model.save_pretrained(str(folder / "text_encoder"), safe_serialization=True)
    (folder / "tokenizer").mkdir()
    unpack_tokenizer(clip.tokenizer_files, folder / "tokenizer")


def _write_ldm_folder(ckpt: Path, tmp: Path) -> dict[str, Any]:
    from ldmctl.diffusion.io import load_ldm

    model = load_ldm(ckpt, weights="ema")
    if model.task is not None:
        raise CheckpointError("super-resolution and inpainting models have no diffusers pipeline ldmctl writes")
    names = [c.name for c in model.conditioners.items]
    size = model.config.latent_size
    _write_model(tmp / "unet", unet_config_to_diffusers(model.config.unet, size), _unet_tensors(model))
    f = model.autoencoder.config.downsample_factor
    vae_cfg = vae_config_to_diffusers(model.autoencoder.config, model.config.scale_factor, size * f)
    _write_model(tmp / "vae", vae_cfg, _vae_tensors(model.autoencoder))
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(_scheduler(model), indent=2))
    if names != ["clip-text"]:
        return {"pipeline": False, "conditioners": names}
    _write_text(model.conditioners.items[0], tmp)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": FORMAT_VERSION,
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return {"pipeline": True, "conditioners": names}


def export_diffusers(ckpt: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``ckpt`` (an LDM or autoencoder checkpoint) as the diffusers folder ``out``; a summary."""
    src, dst = Path(ckpt), Path(out)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConfigError(
            f"{str(dst)!r} exists and is not an empty folder", hint="choose a new folder for --format diffusers"
        )
    kind = read_checkpoint(src).kind
    tmp = dst.parent / f".{dst.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if kind == "autoencoder":
            ae = load_autoencoder(src)
            _write_model(tmp / "vae", vae_config_to_diffusers(ae.config, float(ae.scale_factor), 256), _vae_tensors(ae))
            summary: dict[str, Any] = {"pipeline": False, "conditioners": []}
            for p in (tmp / "vae").iterdir():
                p.rename(tmp / p.name)
            (tmp / "vae").rmdir()
        elif kind == "ldm":
            summary = _write_ldm_folder(src, tmp)
        else:
            raise CheckpointError(f"{str(src)!r} is a {kind} checkpoint; diffusers has no class for it")
        if dst.exists():
            dst.rmdir()
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**summary, "kind": kind, "folder": str(dst)}


__all__ = ["export_diffusers"]
