"""Building a training config from CLI flags: preset -> config file -> flags -> --set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldmctl.config import (
    AETrainingConfig,
    LDMTrainingConfig,
    ldm_preset,
    load_file,
    merge,
    parse_set,
    preset,
)


def resolve_ae_config(preset_name: str, config_file: Path | None, flags: dict[str, dict[str, Any]],
                      assignments: list[str]) -> AETrainingConfig:
    """The train-ae config: see :func:`resolve_config`."""
    return resolve_config(preset(preset_name), config_file, flags, assignments)


def resolve_ldm_config(preset_name: str, config_file: Path | None, flags: dict[str, dict[str, Any]],
                       assignments: list[str]) -> LDMTrainingConfig:
    """The train-ldm config: see :func:`resolve_config`."""
    return resolve_config(ldm_preset(preset_name), config_file, flags, assignments)


def resolve_config(cfg: Any, config_file: Path | None, flags: dict[str, dict[str, Any]],
                   assignments: list[str]) -> Any:
    """Apply, in order: the preset, a .toml/.json file, explicit flags, then ``--set`` pairs.

    ``flags`` maps a section (``model``, ``data``, ...) to the values of the flags the user
    actually gave; ``None`` values (flags left out) are dropped.
    """
    if config_file is not None:
        cfg = merge(cfg, load_file(config_file))
    given = _drop_none(flags)
    if given:
        cfg = merge(cfg, given)
    if assignments:
        cfg = merge(cfg, parse_set(assignments))
    return cfg


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Nested dict without None values (flags left out) and without sections left empty."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out
