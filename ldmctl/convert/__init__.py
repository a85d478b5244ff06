"""``ldmctl convert``: pretrained latent diffusion models from the field into ldmctl checkpoints.

Sources (detected from what ``src`` holds, never from its name alone):

* a diffusers ``StableDiffusionPipeline`` folder (``model_index.json``) -> an LDM checkpoint;
* a diffusers ``AutoencoderKL`` folder -> an autoencoder checkpoint (``train-ldm --ae``);
* a diffusers ``UNet2DConditionModel`` folder, with ``vae`` and ``text_encoder`` -> an LDM checkpoint;
* a Stable Diffusion 1.x/2.x single file in the original CompVis layout (``model.diffusion_model.*``)
  -> an LDM checkpoint (:mod:`ldmctl.convert.compvis`);
* a CompVis first-stage file (KL or VQ; ``encoder.*``/``decoder.*``, maybe under ``first_stage_model.``)
  -> an autoencoder checkpoint.

The architecture comes from the source's config (or ``config``: a CompVis YAML / JSON file), or,
for single files without one, from the tensor shapes by stated rules; what the weights cannot tell
(SD 2.x's eps or v prediction) must be given. Weights are copied exactly (fp32 in ldmctl's modules;
``half`` stores them in fp16, by default when the source was fp16). The reverse is
:func:`ldmctl.convert.export.export_diffusers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldmctl.convert.build import Parts, write_autoencoder, write_parts
from ldmctl.convert.common import read_weights, shape_of
from ldmctl.convert.folders import folder_class, read_parts, read_pipeline, read_text, read_vae
from ldmctl.errors import CheckpointError, ConfigError


def _half_source(tensors: Mapping[str, Tensor]) -> bool:
    key = next(iter(tensors), None)
    return key is not None and tensors[key].dtype in (torch.float16, torch.bfloat16)


def _from_unet_folder(
    src: Path, vae: Path | None, text_encoder: Path | None, layer: str, prediction: str | None
) -> Parts:
    from ldmctl.config import DiffusionConfig

    if vae is None or text_encoder is None:
        raise ConfigError(
            f"{str(src)!r} is a UNet alone; an ldmctl checkpoint also needs its autoencoder and text encoder",
            hint="pass --vae DIR (an AutoencoderKL folder) and --text-encoder DIR (a CLIP text model folder "
            "holding its tokenizer files too), or convert the whole pipeline folder",
        )
    diffusion = DiffusionConfig(prediction=prediction or "eps")  # type: ignore[arg-type]
    source = {"layout": "diffusers", "class": "UNet2DConditionModel", "path": src.name}
    return read_parts(src, vae, diffusion, read_text(text_encoder, text_encoder, layer), source)


def _from_folder(src: Path, options: dict[str, Any]) -> dict[str, Any]:
    kind = folder_class(src)
    if kind == "pipeline":
        parts = read_pipeline(src, options["layer"])
    elif kind == "UNet2DConditionModel":
        parts = _from_unet_folder(src, options["vae"], options["text_encoder"], options["layer"], options["prediction"])
    elif kind == "AutoencoderKL":
        ae, scale, fill = read_vae(src)
        return write_autoencoder(ae, fill, scale, options["out"], {"layout": "diffusers", "path": src.name})
    else:
        raise CheckpointError(
            f"{str(src)!r} is not a diffusers folder ldmctl converts (found {kind or 'no model_index.json or config.json'})",
            hint="a StableDiffusionPipeline, UNet2DConditionModel or AutoencoderKL folder",
        )
    if options["prediction"] is not None:
        import dataclasses

        parts.diffusion = dataclasses.replace(parts.diffusion, prediction=options["prediction"])
    return write_parts(parts, options["out"], dtype=_dtype(options["half"], False))


def _dtype(half: bool | None, source_half: bool) -> torch.dtype | None:
    return torch.float16 if (source_half if half is None else half) else None


def _from_file(src: Path, options: dict[str, Any]) -> dict[str, Any]:
    from ldmctl.convert import compvis

    tensors = read_weights(src)
    keys = list(tensors)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        parts = compvis.read_single_file(
            tensors,
            str(src),
            config=options["config"],
            prediction=options["prediction"],
            tokenizer=options["text_encoder"],
            layer=options["layer"],
        )
        return write_parts(parts, options["out"], dtype=_dtype(options["half"], _half_source(tensors)))
    if compvis.is_first_stage(keys):
        ae, scale, fill = compvis.read_first_stage(tensors, str(src), config=options["config"])
        return write_autoencoder(ae, fill, scale, options["out"], {"layout": "compvis", "path": src.name})
    sample = ", ".join(f"{k} {shape_of(tensors, k)}" for k in keys[:4])
    raise CheckpointError(
        f"{str(src)!r} is neither a Stable Diffusion single file (model.diffusion_model.*) nor a CompVis "
        f"first stage (encoder.*, decoder.*); its first tensors: {sample or 'none'}",
        hint="docs/pretrained.md lists the layouts ldmctl converts",
    )


def convert(
    src: str | Path,
    out: str | Path,
    *,
    config: str | Path | None = None,
    prediction: str | None = None,
    layer: str = "last",
    vae: str | Path | None = None,
    text_encoder: str | Path | None = None,
    half: bool | None = None,
) -> dict[str, Any]:
    """Convert ``src`` (see the module docstring) into the ldmctl checkpoint ``out``; a summary."""
    p = Path(src)
    if prediction not in (None, "eps", "v", "x0"):
        raise ConfigError(f"--prediction {prediction!r}: choose eps, v or x0")
    if layer not in ("last", "penultimate"):
        raise ConfigError(f"--clip-layer {layer!r}: choose last or penultimate")
    options = {
        "out": Path(out),
        "config": None if config is None else Path(config),
        "prediction": prediction,
        "layer": layer,
        "vae": None if vae is None else Path(vae),
        "text_encoder": None if text_encoder is None else Path(text_encoder),
        "half": half,
    }
    if p.is_dir():
        return _from_folder(p, options)
    if p.is_file():
        return _from_file(p, options)
    raise CheckpointError(f"{str(p)!r} does not exist")


__all__ = ["convert"]
