"""Every configuration dataclass, the presets, the dict codec and the override layers.

Configs are frozen dataclasses: data, not behaviour. ``to_dict``/``from_dict`` round-trip them
through JSON (checkpoints store that JSON in their safetensors metadata, so a file rebuilds its
own model). ``from_dict`` is strict: an unknown key is a :class:`ConfigError`, never ignored.

    models.py     what a checkpoint stores: AutoencoderConfig, UNetConfig, DiffusionConfig, LDMConfig
    training.py   what a run folder stores: AETrainingConfig, LDMTrainingConfig and their sections
    presets.py    PRESETS (train-ae), LDM_PRESETS (train-ldm); ``tiny`` is what the tests use
    codec.py      to_dict / from_dict
    limits.py     the ranges every value must lie in, checked by from_dict (docs/reliability.md)
    overrides.py  load_file, merge, parse_set (--set), with_updates
    reference.py  reference_markdown (docs/config.md)

The pass that turns preset -> file -> flags -> ``--set`` into a resolved config (derived widths,
latent size, scale factor) is :mod:`ldmctl.train.configure`: it needs the autoencoder, the data
and the conditioners, which live above this layer.
"""

from ldmctl.config.codec import from_dict, to_dict
from ldmctl.config.models import AEKind, AutoencoderConfig, ConditionerSpec, DiffusionConfig, LDMConfig, UNetConfig
from ldmctl.config.overrides import load_file, merge, parse_set, with_updates
from ldmctl.config.presets import LDM_PRESETS, PRESETS, channel_mult_for_f, ldm_preset, preset
from ldmctl.config.reference import reference_markdown
from ldmctl.config.training import (
    AELossConfig,
    AETrainConfig,
    AETrainingConfig,
    ContrastConfig,
    DataConfig,
    DegradationConfig,
    DiscLoss,
    EMAConfig,
    InpaintConfig,
    LDMTrainConfig,
    LDMTrainingConfig,
    Perceptual,
    TrainConfig,
)

__all__ = [
    "LDM_PRESETS",
    "PRESETS",
    "AEKind",
    "AELossConfig",
    "AETrainConfig",
    "AETrainingConfig",
    "AutoencoderConfig",
    "ConditionerSpec",
    "DataConfig",
    "DegradationConfig",
    "DiffusionConfig",
    "DiscLoss",
    "EMAConfig",
    "ContrastConfig",
    "InpaintConfig",
    "LDMConfig",
    "LDMTrainConfig",
    "LDMTrainingConfig",
    "Perceptual",
    "TrainConfig",
    "UNetConfig",
    "channel_mult_for_f",
    "from_dict",
    "ldm_preset",
    "load_file",
    "merge",
    "parse_set",
    "preset",
    "reference_markdown",
    "to_dict",
    "with_updates",
]
