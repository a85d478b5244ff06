"""The ranges every configuration value must lie in, checked once, where configs are built.

:func:`check_config` runs at the end of :func:`ldmctl.config.codec.from_dict`, which every config
goes through: presets merged with a ``--config`` file, CLI flags and ``--set`` pairs
(:func:`ldmctl.config.overrides.merge`), a run's stored ``config.json`` on ``--resume`` and the
config stored in a checkpoint. So ``train.keep_last=-1``, ``ema.decay=1.5`` or a NaN learning rate
is one :class:`ConfigError` naming the field, whichever way it came in.

Rules: every float is finite; probabilities lie in [0, 1]; counts and intervals are positive (an
interval of 0 means "only at the end", as it always did); seeds fit the random generator; and
structural sizes (levels, blocks per level, transformer depth) have a ceiling, so that even
counting the parameters of a hostile config stays cheap. The memory a model would take is checked
separately, before allocating (:func:`ldmctl.checkpoint.check_model_memory`).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from ldmctl.errors import ConfigError

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; numpy and Python take this range too
MAX_DEPTH = 32  # nesting of a config file, of --set values and of conditioner options
MAX_LEVELS = 12  # entries of a channel_mult (one 2x down per level: 2048x downsampling)
MAX_BLOCKS = 64  # ResBlocks per level, transformer blocks per SpatialTransformer

# (low, high) inclusive bounds; None: unbounded on that side
POSITIVE, NON_NEGATIVE, PROBABILITY = (1, None), (0, None), (0.0, 1.0)
SEED = (0, SEED_MAX)
BLOCKS = (1, MAX_BLOCKS)

RULES: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "TrainConfig": {
        "batch_size": POSITIVE,
        "max_steps": POSITIVE,
        "warmup_steps": NON_NEGATIVE,
        "lr_min_ratio": PROBABILITY,
        "seed": SEED,
        "grad_clip": NON_NEGATIVE,
        "log_every": NON_NEGATIVE,
        "sample_every": NON_NEGATIVE,
        "save_every": NON_NEGATIVE,
        "keep_last": POSITIVE,
        "num_workers": (0, 256),
        "max_nonfinite": POSITIVE,
        "scale_samples": POSITIVE,
        "grad_accum": POSITIVE,
        "adam_betas": (0.0, 0.999_999),  # each of the two; Adam needs beta < 1
    },
    "EMAConfig": {"decay": PROBABILITY, "every": POSITIVE},
    "DataConfig": {"size": NON_NEGATIVE, "max_pixels": POSITIVE, "cache_mb": NON_NEGATIVE},  # size 0: the model's
    "AutoencoderConfig": {
        "in_channels": POSITIVE,
        "base_channels": POSITIVE,
        "num_res_blocks": (0, MAX_BLOCKS),
        "z_channels": POSITIVE,
        "dropout": PROBABILITY,
        "norm_groups": POSITIVE,
        "n_embed": POSITIVE,
        "embed_dim": POSITIVE,
        "vq_beta": NON_NEGATIVE,
        "vq_restart_every": POSITIVE,
    },
    "UNetConfig": {
        "in_channels": POSITIVE,
        "out_channels": NON_NEGATIVE,
        "model_channels": POSITIVE,
        "num_res_blocks": BLOCKS,
        "head_channels": POSITIVE,
        "num_heads": NON_NEGATIVE,
        "transformer_depth": BLOCKS,
        "ff_mult": POSITIVE,
        "dropout": PROBABILITY,
        "norm_groups": POSITIVE,
        "time_embed_mult": POSITIVE,
        "concat_channels": NON_NEGATIVE,
        "add_dim": NON_NEGATIVE,
        "context_dim": NON_NEGATIVE,
        "token_dim": NON_NEGATIVE,
        "norm_eps": (0.0, 1.0),
    },
    "DiffusionConfig": {
        "timesteps": POSITIVE,
        "linear_start": PROBABILITY,
        "linear_end": PROBABILITY,
        "vlb_weight": NON_NEGATIVE,
        "min_snr_gamma": NON_NEGATIVE,
        "offset_noise": NON_NEGATIVE,
        "timestep_bias_portion": PROBABILITY,
        "timestep_bias_begin": NON_NEGATIVE,
        "timestep_bias_end": NON_NEGATIVE,
    },
    "ConditionerSpec": {"dropout": PROBABILITY},
    "LDMConfig": {"latent_size": POSITIVE, "sr_scale": NON_NEGATIVE, "residual_scale": (0.0, None)},
    "DegradationConfig": {"scale": POSITIVE, "blur": NON_NEGATIVE, "noise": NON_NEGATIVE, "jpeg": (0, 100)},
    "InpaintConfig": {"min_coverage": PROBABILITY, "max_coverage": PROBABILITY},
    "ContrastConfig": {"weight": NON_NEGATIVE, "margin": NON_NEGATIVE},
    "LDMTrainingConfig": {"sample_steps": POSITIVE, "sample_count": POSITIVE},
    "AELossConfig": {
        "rec_weight": NON_NEGATIVE,
        "perceptual_weight": NON_NEGATIVE,
        "kl_weight": NON_NEGATIVE,
        "codebook_weight": NON_NEGATIVE,
        "disc_start": NON_NEGATIVE,
        "disc_weight": NON_NEGATIVE,
        "disc_factor": NON_NEGATIVE,
        "disc_layers": (1, MAX_BLOCKS),
        "disc_channels": POSITIVE,
    },
}
STRICTLY_POSITIVE = {"TrainConfig.lr", "LDMConfig.scale_factor", "LDMConfig.residual_scale"}
LEVELS = {"AutoencoderConfig.channel_mult", "UNetConfig.channel_mult"}


def _rules(cls: type) -> dict[str, tuple[float | None, float | None]]:
    """The rules of ``cls`` and of its bases (AETrainConfig inherits TrainConfig's)."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for base in reversed(cls.__mro__):
        out.update(RULES.get(base.__name__, {}))
    return out


def check_config(cfg: Any) -> None:
    """ConfigError for the first field of the dataclass ``cfg`` (not its nested configs, which
    ``from_dict`` checks as it builds them) that breaks a rule above."""
    cls = type(cfg)
    rules = _rules(cls)
    names = {c.__name__ for c in cls.__mro__}
    for f in fields(cfg):
        value, where = getattr(cfg, f.name), f"{cls.__name__}.{f.name}"
        for v in value if isinstance(value, tuple) else (value,):  # a tuple: each of its numbers
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{where} must be a finite number, got {v}")
            if f.name in rules and isinstance(v, (int, float)) and not isinstance(v, bool):
                check_range(v, rules[f.name], where)
        if any(f"{n}.{f.name}" in STRICTLY_POSITIVE for n in names) and not value > 0:
            raise ConfigError(f"{where} must be a positive number, got {value}")
        if any(f"{n}.{f.name}" in LEVELS for n in names):
            check_levels(value, where)


def check_range(value: float, bounds: tuple[float | None, float | None], where: str) -> None:
    """ConfigError naming ``where`` unless ``low <= value <= high``."""
    low, high = bounds
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            allowed = "positive" if low == 1 else f">= {low}"
        else:
            allowed = f"in [{low}, {high}]"
        raise ConfigError(f"{where} must be {allowed}, got {value}")


def check_levels(mult: tuple[int, ...], where: str) -> None:
    """A channel_mult: 1 to MAX_LEVELS positive multipliers."""
    if not 1 <= len(mult) <= MAX_LEVELS or any(m < 1 for m in mult):
        raise ConfigError(f"{where} must hold 1 to {MAX_LEVELS} positive multipliers, got {list(mult)}")


def check_seed(seed: int, option: str = "--seed") -> int:
    """A seed the random generators take: 0 <= seed <= 2**63 - 1."""
    check_range(seed, SEED, option)
    return seed


def check_depth(data: Any, where: str, limit: int = MAX_DEPTH) -> None:
    """ConfigError when tables and lists in ``data`` are nested more than ``limit`` deep (iterative,
    so a hostile input cannot exhaust the stack here)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                raise ConfigError(f"{where}: tables and lists nested more than {limit} deep")
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))


__all__ = ["MAX_DEPTH", "RULES", "SEED_MAX", "check_config", "check_depth", "check_range", "check_seed"]
