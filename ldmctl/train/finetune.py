"""Starting train-ldm from a trained model (``--init CKPT``) and choosing what trains.

``--init`` takes the whole model from an LDM checkpoint — its architecture, autoencoder, conditioners
(with their weights) and the EMA UNet weights — and trains it on new data: the architecture flags of
train-ldm (``--cond``, ``--prediction``, ...) do not apply. The data size may differ from the one
the model was trained at (the UNet is convolutional); the latent size follows it.

The diffusion *process* (schedule, T, prediction) is the --init model's; the *loss* settings
(``model.diffusion.loss``, ``vlb_weight``, ``min_snr_gamma``, ``offset_noise``, ``timestep_bias_*``)
are the run's own, like its learning rate: the defaults unless its config or ``--set`` gives them.

``train_only`` (glob patterns over UNet parameter names, e.g. ``"*attn2*"`` for the cross-attention)
and ``freeze_conditioners`` freeze the rest; frozen parameters get no optimizer state.

:func:`first_stage` reads an autoencoder from an autoencoder checkpoint or from the ``ae.*`` part of
an LDM checkpoint, so ``train-ldm --ae converted-sd.safetensors`` trains a new UNet on Stable
Diffusion's VAE.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import load_autoencoder, load_state, read_checkpoint
from ldmctl.config import AutoencoderConfig, DiffusionConfig, LDMTrainingConfig, from_dict
from ldmctl.diffusion.io import load_ldm, split_tensors
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.unet import downsample_factor


def first_stage(path: str | Path) -> nn.Module:
    """The autoencoder of an autoencoder checkpoint, or of an LDM checkpoint (its ``ae.*`` tensors)."""
    ckpt = read_checkpoint(path)
    if ckpt.kind == "autoencoder":
        return load_autoencoder(path)
    if ckpt.kind != "ldm":
        raise CheckpointError(f"{str(path)!r} is a {ckpt.kind} checkpoint; --ae needs an autoencoder or an LDM")
    try:
        cfg = from_dict(AutoencoderConfig, ckpt.config["autoencoder"])
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"{str(path)!r}: stored autoencoder config is invalid: {err}") from None
    ae = build_autoencoder(cfg)
    load_state(ae, split_tensors(ckpt.tensors, str(path))["ae"], f"{path} (autoencoder)")
    return ae.eval()


def task_of(cfg: Any) -> str:
    """The train-ldm task of a model config."""
    return "inpaint" if cfg.inpaint else "superres" if cfg.sr_scale > 0 else "generate"


def init_model(cfg: LDMTrainingConfig) -> tuple[LDMTrainingConfig, nn.Module, Any, nn.Module]:
    """The config with ``--init``'s model, and its autoencoder, conditioners and (EMA) UNet."""
    base = load_ldm(cfg.init, weights="ema")
    f = base.autoencoder.config.downsample_factor
    if cfg.data.size % f:
        raise ConfigError(f"data.size={cfg.data.size} is not a multiple of the --init model's f={f}")
    latent = cfg.data.size // f
    if latent % downsample_factor(base.config.unet):
        raise ConfigError(
            f"latent side {latent} (= {cfg.data.size} px / f {f}) is not a multiple of the --init UNet's "
            f"{downsample_factor(base.config.unet)}",
            hint="choose a --size that is a multiple of f x 2^(levels - 1)",
        )
    model = replace(base.config, latent_size=latent, diffusion=objective_settings(base.config.diffusion, cfg))
    return replace(cfg, model=model, task=task_of(base.config)), base.autoencoder, base.conditioners, base.unet


OBJECTIVE_FIELDS = (
    "loss",
    "vlb_weight",
    "min_snr_gamma",
    "offset_noise",
    "timestep_bias_portion",
    "timestep_bias_begin",
    "timestep_bias_end",
)


def objective_settings(base: DiffusionConfig, cfg: LDMTrainingConfig) -> DiffusionConfig:
    """The --init model's diffusion config with the run's own loss settings (:data:`OBJECTIVE_FIELDS`)."""
    return replace(base, **{k: getattr(cfg.model.diffusion, k) for k in OBJECTIVE_FIELDS})


def freeze(model: nn.Module, cfg: LDMTrainingConfig) -> None:
    """Apply ``train_only`` and ``freeze_conditioners`` (ConfigError when a pattern matches nothing)."""
    if cfg.train_only:
        names = [n for n, _ in model.unet.named_parameters()]
        for pattern in cfg.train_only:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ConfigError(
                    f"train_only pattern {pattern!r} matches no UNet parameter", hint=f"names look like {names[1]!r}"
                )
        for n, p in model.unet.named_parameters():
            p.requires_grad_(any(fnmatch.fnmatchcase(n, pat) for pat in cfg.train_only))
    if cfg.freeze_conditioners:
        model.conditioners.requires_grad_(False)


__all__ = ["OBJECTIVE_FIELDS", "first_stage", "freeze", "init_model", "objective_settings", "task_of"]
