"""Presets: real, selectable starting configurations (``--preset``). ``tiny`` is what the tests use."""

from __future__ import annotations

import math
from typing import Any

from ldmctl.config.models import AutoencoderConfig, LDMConfig, UNetConfig
from ldmctl.config.training import (
    AELossConfig,
    AETrainConfig,
    AETrainingConfig,
    DataConfig,
    EMAConfig,
    LDMTrainConfig,
    LDMTrainingConfig,
)
from ldmctl.errors import ConfigError

_MULT_TEMPLATE = {"tiny": (1, 2, 2, 2, 2), "small": (1, 2, 2, 4, 4), "base": (1, 2, 4, 4, 4)}

PRESETS: dict[str, AETrainingConfig] = {
    "tiny": AETrainingConfig(
        model=AutoencoderConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4, n_embed=64),
        loss=AELossConfig(disc_start=1, disc_layers=2, disc_channels=8),
        data=DataConfig(size=16),
        train=AETrainConfig(batch_size=4, max_steps=20, lr=1e-3, sample_every=10, save_every=10, scale_samples=8),
    ),
    "small": AETrainingConfig(
        model=AutoencoderConfig(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2),
        data=DataConfig(size=64),
        train=AETrainConfig(batch_size=8, max_steps=5000, lr=2e-4),
    ),
    "base": AETrainingConfig(
        model=AutoencoderConfig(base_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2),
        loss=AELossConfig(disc_start=50001),
        data=DataConfig(size=256),
        train=AETrainConfig(batch_size=8, max_steps=100_000, lr=4.5e-6 * 8),
    ),
}


_LDM_TRAIN: dict[str, Any] = {"adam_betas": (0.9, 0.999), "lr_schedule": "cosine", "lr_min_ratio": 0.1}

LDM_PRESETS: dict[str, LDMTrainingConfig] = {
    "tiny": LDMTrainingConfig(
        model=LDMConfig(
            unet=UNetConfig(
                model_channels=16,
                channel_mult=(1, 2),
                num_res_blocks=1,
                attention_levels=(1,),
                head_channels=8,
                norm_groups=4,
            )
        ),
        data=DataConfig(size=16),
        train=LDMTrainConfig(batch_size=4, max_steps=20, lr=1e-3, sample_every=10, save_every=10, **_LDM_TRAIN),
        ema=EMAConfig(decay=0.99),
        sample_steps=5,
        sample_count=4,
    ),
    # the bench's `small` UNet (diffusers block_out (64, 128, 256), attention at levels 1 and 2)
    "small": LDMTrainingConfig(
        model=LDMConfig(unet=UNetConfig(model_channels=64, channel_mult=(1, 2, 4))),
        data=DataConfig(size=64),
        train=LDMTrainConfig(
            batch_size=32, max_steps=20_000, lr=2e-4, warmup_steps=500, sample_every=1000, save_every=1000, **_LDM_TRAIN
        ),
    ),
    "base": LDMTrainingConfig(
        model=LDMConfig(unet=UNetConfig(model_channels=128, channel_mult=(1, 2, 4))),
        data=DataConfig(size=128),
        train=LDMTrainConfig(
            batch_size=32,
            max_steps=100_000,
            lr=1e-4,
            warmup_steps=1000,
            sample_every=2000,
            save_every=2000,
            **_LDM_TRAIN,
        ),
    ),
}


def ldm_preset(name: str) -> LDMTrainingConfig:
    """Return the named train-ldm preset, or raise ConfigError listing the choices."""
    if name not in LDM_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(LDM_PRESETS)}")
    return LDM_PRESETS[name]


def preset(name: str) -> AETrainingConfig:
    """Return the named preset, or raise ConfigError listing the choices."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def channel_mult_for_f(f: int, preset_name: str = "small") -> tuple[int, ...]:
    """Channel multipliers giving downsampling factor ``f`` (4, 8 or 16) in a preset's style."""
    if f not in (4, 8, 16):
        raise ConfigError(f"--f {f} is not supported; choose one of [4, 8, 16]")
    levels = int(math.log2(f)) + 1
    return _MULT_TEMPLATE.get(preset_name, _MULT_TEMPLATE["small"])[:levels]


__all__ = ["LDM_PRESETS", "PRESETS", "channel_mult_for_f", "ldm_preset", "preset"]
