"""Layers on top of a config: a ``.toml``/``.json`` file, a partial dict, ``--set KEY=VALUE`` pairs.

The pass that applies them in order (preset -> file -> flags -> ``--set``) and then derives what the
autoencoder, the data and the conditioners fix is :mod:`ldmctl.train.configure`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from ldmctl.config.codec import from_dict, to_dict
from ldmctl.config.limits import MAX_DEPTH, check_depth
from ldmctl.errors import ConfigError

T = TypeVar("T")


MAX_FILE_BYTES = 16 << 20  # a config file is a few KB; a larger one is not a config


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a .toml or .json config file into a dict: a regular file of at most 16 MB whose top
    level is a table, nested at most MAX_DEPTH deep."""
    p = Path(path)
    if not p.is_file():  # a FIFO or device would block or never end: only regular files are read
        what = "does not exist" if not p.exists() else "is not a regular file"
        raise ConfigError(f"config file {str(p)!r} {what}")
    if p.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {str(p)!r}: use a .toml or .json file")
    if p.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"config file {str(p)!r} is larger than {MAX_FILE_BYTES >> 20} MB")
    try:
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"config file {str(p)!r} is not valid: {err}") from None
    except RecursionError:
        raise ConfigError(f"config file {str(p)!r}: tables and lists nested more than {MAX_DEPTH} deep") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: the top level must be a table/object, not {type(data).__name__}")
    check_depth(data, f"config file {str(p)!r}")
    return data


def merge(cfg: T, data: dict[str, Any]) -> T:
    """Return ``cfg`` with the (possibly partial, nested) dict ``data`` applied on top."""
    base = to_dict(cfg)
    _deep_update(base, data, cfg, type(cfg).__name__)
    return from_dict(type(cfg), base)


def _deep_update(base: dict[str, Any], data: dict[str, Any], cfg: Any, where: str) -> None:
    legacy = getattr(type(cfg), "legacy", {})
    for key, value in data.items():
        if key not in base:
            if key in legacy:  # another trainer's key: from_dict drops or refuses it with its message
                base[key] = value
                continue
            raise ConfigError(f"{where}: unknown key {key!r}", hint=f"known keys: {sorted(base)}")
        if isinstance(base[key], dict) and isinstance(value, dict):
            sub = getattr(cfg, key, None) if is_dataclass(cfg) else None
            _deep_update(base[key], value, sub, f"{where}.{key}")
        else:
            base[key] = value


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """Turn ``["model.z_channels=8", "loss.disc_start=0"]`` into a nested dict.

    Values are parsed as JSON when they can be (numbers, booleans, lists), else kept as strings.
    """
    out: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. model.z_channels=8")
        key, raw = item.split("=", 1)
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        except RecursionError:
            raise ConfigError(f"--set {key}: tables and lists nested more than {MAX_DEPTH} deep") from None
        check_depth(value, f"--set {key}")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def with_updates(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that drops ``None`` values (options the user did not give)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return replace(cfg, **changes) if changes else cfg  # type: ignore[type-var]


__all__ = ["load_file", "merge", "parse_set", "with_updates"]
