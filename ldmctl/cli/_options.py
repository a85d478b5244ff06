"""Building a training config from CLI flags: preset -> config file -> flags -> --set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldmctl.config import AETrainingConfig, load_file, merge, parse_set, preset


def resolve_ae_config(preset_name: str, config_file: Path | None, flags: dict[str, dict[str, Any]],
                      assignments: list[str]) -> AETrainingConfig:
    """Apply, in order: the preset, a .toml/.json file, explicit flags, then ``--set`` pairs.

    ``flags`` maps a section (``model``, ``data``, ...) to the values of the flags the user
    actually gave; ``None`` values (flags left out) are dropped.
    """
    cfg = preset(preset_name)
    if config_file is not None:
        cfg = merge(cfg, load_file(config_file))
    given = {sec: {k: v for k, v in vals.items() if v is not None} for sec, vals in flags.items()}
    cfg = merge(cfg, {sec: vals for sec, vals in given.items() if vals})
    if assignments:
        cfg = merge(cfg, parse_set(assignments))
    return cfg
