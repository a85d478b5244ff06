"""What every converter shares: reading weight files safely, and filling a module from a foreign layout.

A layout is a :data:`KeyMap`: for each tensor of *our* module, the key(s) it comes from in the
foreign file. Several keys are concatenated on the first axis (separate q, k, v projections into
our fused ``to_qkv``). A tensor whose shape differs from ours only by trailing 1s is reshaped
(a 1x1 convolution is the same map as a linear layer). :func:`fill` checks the whole file before
copying anything: missing, unexpected and mis-shaped keys are one clear error naming them.
:func:`unfill` is the inverse, for export.

Reading: ``.safetensors`` files are opened lazily (a tensor is read when it is copied), so
converting a 4 GB checkpoint holds one model in memory, not two. A pickle ``.ckpt``/``.bin``/``.pt``
is read only with ``torch.load(weights_only=True)``: a file that needs more (code in the pickle) is
refused with the hint to convert it to safetensors first. No pickle ever runs code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from ldmctl.errors import CheckpointError

KeyMap = dict[str, tuple[str, ...]]  # our key -> the foreign key(s) it is made of (concatenated on dim 0)
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


class LazyTensors(Mapping[str, Tensor]):
    """The tensors of a .safetensors file, each read from disk when asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                self._keys = list(fh.keys())
                self._known = frozenset(self._keys)
                self.metadata = fh.metadata() or {}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{str(path)!r} is not a readable .safetensors file ({err})") from None
        self._shapes: dict[str, tuple[int, ...]] = {}

    def __contains__(self, key: object) -> bool:  # without reading the tensor (Mapping's default would)
        return key in self._known

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._known:
            raise KeyError(key)
        with safe_open(str(self.path), framework="pt", device="cpu") as fh:
            return fh.get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        if not self._shapes:
            with safe_open(str(self.path), framework="pt", device="cpu") as fh:
                self._shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in self._keys}
        return self._shapes[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def shape_of(tensors: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    """The shape of ``tensors[key]`` without reading it where the mapping can tell."""
    return tensors.shape(key) if isinstance(tensors, LazyTensors) else tuple(tensors[key].shape)


def read_weights(path: str | Path) -> Mapping[str, Tensor]:
    """The tensors of a weight file: .safetensors lazily; a pickle only with weights_only=True."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weight file {str(p)!r} does not exist")
    if p.suffix in PICKLE_SUFFIXES:
        return _read_pickle(p)
    return LazyTensors(p)


def _read_pickle(p: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure: refuse, never run code
        raise CheckpointError(
            f"{str(p)!r} cannot be read as plain tensors ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "ldmctl never unpickles code",
            hint="convert it to .safetensors with a tool you trust, then run ldmctl convert on that file",
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning checkpoints (CompVis) nest the weights
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{str(p)!r} does not hold a flat dict of tensors (a state_dict)")
    return obj


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {str(path)!r}: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r} is not a JSON object")
    return data


def _fits(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    """Same tensor up to trailing 1s (a 1x1 conv kernel vs a linear weight)."""

    def strip(s: tuple[int, ...]) -> tuple[int, ...]:
        while len(s) > 1 and s[-1] == 1:
            s = s[:-1]
        return s

    return strip(src) == strip(dst)


def _source_shape(tensors: Mapping[str, Tensor], keys: tuple[str, ...]) -> tuple[int, ...] | None:
    shapes = [shape_of(tensors, k) for k in keys]
    if len(shapes) == 1:
        return shapes[0]
    if any(s[1:] != shapes[0][1:] for s in shapes):
        return None
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def check_keys(
    module: nn.Module, tensors: Mapping[str, Tensor], keymap: KeyMap, where: str, own: tuple[str, ...] = ()
) -> None:
    """CheckpointError naming every missing, unexpected or mis-shaped key of ``tensors`` for ``keymap``;
    ``own``: our keys the caller sets itself (e.g. the autoencoder's ``scale_factor``)."""
    ours = module.state_dict()
    unmapped = sorted(set(ours) - set(keymap) - set(own))
    if unmapped:
        raise CheckpointError(f"{where}: no source for {len(unmapped)} weights, e.g. {unmapped[:3]}")
    needed = {k for keys in keymap.values() for k in keys}
    missing = sorted(needed - set(tensors))
    unexpected = sorted(set(tensors) - needed)
    wrong = []
    for ours_key, keys in keymap.items():
        if all(k in tensors for k in keys):
            shape = _source_shape(tensors, keys)
            if shape is None or not _fits(shape, tuple(ours[ours_key].shape)):
                wrong.append(f"{keys[0]} {shape} (expected {tuple(ours[ours_key].shape)})")
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong))
        if items
    ]
    if problems:
        raise CheckpointError(
            f"{where}: the weights do not match the architecture read from its config; " + "; ".join(problems),
            hint="pass the model's own config (--config), or check that the file is complete",
        )


@torch.no_grad()
def fill(
    module: nn.Module, tensors: Mapping[str, Tensor], keymap: KeyMap, where: str, own: tuple[str, ...] = ()
) -> nn.Module:
    """Copy ``tensors`` into ``module`` through ``keymap`` (checked first by :func:`check_keys`)."""
    check_keys(module, tensors, keymap, where, own)
    state = module.state_dict()
    for ours_key, keys in keymap.items():
        parts = [tensors[k] for k in keys]
        value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        target = state[ours_key]
        target.copy_(value.reshape(target.shape).to(target.dtype))
    return module


def unfill(state: Mapping[str, Tensor], keymap: KeyMap, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """The inverse of :func:`fill`: our state dict in the foreign layout (fused tensors split in equal
    parts; ``shapes`` gives the foreign shape of keys stored differently, e.g. 1x1 conv kernels)."""
    out: dict[str, Tensor] = {}
    for ours_key, keys in keymap.items():
        value = state[ours_key]
        for k, part in zip(keys, value.chunk(len(keys), dim=0) if len(keys) > 1 else (value,), strict=True):
            out[k] = part.reshape(shapes.get(k, part.shape)).contiguous()
    return out


Rule = tuple[str, tuple[str, ...]]  # (regex over a key inside a module, foreign key template(s))


def rename(prefixes: Mapping[str, str], rules: list[Rule], our_keys: list[str]) -> KeyMap:
    """Build a KeyMap from a module-prefix map (ours -> theirs, longest prefix wins) and rules for
    the key inside the module: the first rule whose regex matches all of it gives the foreign key
    template(s) (``re.Match.expand``); several templates are concatenated. No rule: same name."""
    order = sorted(prefixes, key=len, reverse=True)
    compiled = [(re.compile(pattern), templates) for pattern, templates in rules]
    keymap: KeyMap = {}
    for key in our_keys:
        ours = next((p for p in order if key.startswith(p + ".")), None)
        if ours is None:
            continue
        rest = key[len(ours) + 1 :]
        match = next(((m, t) for pat, t in compiled if (m := pat.fullmatch(rest))), None)
        inner = tuple(match[0].expand(t) for t in match[1]) if match else (rest,)
        keymap[key] = tuple(f"{prefixes[ours]}.{x}" if prefixes[ours] else x for x in inner)
    return keymap


__all__ = [
    "KeyMap",
    "LazyTensors",
    "Rule",
    "check_keys",
    "fill",
    "read_json",
    "read_weights",
    "rename",
    "shape_of",
    "unfill",
]
