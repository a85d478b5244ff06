"""Config dataclasses <-> plain JSON-able dicts, strictly.

``from_dict`` is strict: an unknown key, a value of the wrong type or out of its range
(:mod:`ldmctl.config.limits`) is a :class:`ConfigError`, never ignored. The one exception is a section's ``legacy`` table (keys older files carry that
belong to another trainer, see :mod:`ldmctl.config.training`), applied before the check.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any, Literal, TypeVar

from ldmctl.config.limits import check_config, check_depth
from ldmctl.errors import ConfigError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Convert a config dataclass (nested) into plain JSON-able dicts and lists."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = [to_dict(v) if is_dataclass(v) else v for v in value]
        out[f.name] = value
    return out


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict, strictly: unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a table/object, got {type(data).__name__}")
    data = migrate(cls, data)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}", hint=f"known keys: {sorted(known)}")
    kwargs = {k: _coerce(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()}
    try:
        cfg = cls(**kwargs)
    except TypeError as err:  # a missing required field
        raise ConfigError(f"{cls.__name__}: {err}") from None
    check_config(cfg)  # the ranges of ldmctl.config.limits: the one validator of every config
    return cfg


def migrate(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the keys ``cls.legacy`` retires: a key holding the value this config always
    ran with (or any value, where that is None) is dropped; any other value raises its message."""
    legacy: dict[str, tuple[Any, str]] = getattr(cls, "legacy", {})
    if not legacy.keys() & data.keys():
        return data
    out = dict(data)
    for key, (accepted, message) in legacy.items():
        if key in out:
            value = out.pop(key)
            if accepted is not None and value != accepted:
                raise ConfigError(
                    f"{cls.__name__}: {message.format(value=json.dumps(value))}",
                    hint=f"drop {key!r} here: it belongs to the other trainer (docs/config.md)",
                )
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check/convert one JSON value against a type annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if is_dataclass(tp):
        return from_dict(tp, value)  # type: ignore[arg-type]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        return _coerce_tuple(args, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        check_depth(value, where)
        return dict(value)
    return _coerce_scalar(tp, value, where)


def _coerce_tuple(args: tuple[Any, ...], value: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(args[0], v, where) for v in value)
    if len(args) != len(value):
        raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
    return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))


def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


__all__ = ["from_dict", "migrate", "to_dict"]
