"""Checkpoints: ``.safetensors`` weights whose metadata carries the config that built them.

Metadata keys (all strings, as safetensors requires):

- ``ldmctl.kind``    what the file holds: ``autoencoder``, ``ldm`` or ``classifier``
- ``ldmctl.config``  JSON of ``to_dict(model_config)``, enough to rebuild the model
- ``ldmctl.schema``  format version of this layout, checked on load
- ``ldmctl.version`` the ldmctl version that wrote it
- ``ldmctl.extra``   JSON of anything else worth keeping (training config, step, data summary)

Only safetensors files are ever read as models. :func:`read_checkpoint` reads every tensor;
:func:`open_checkpoint` reads each one only when it is asked for, and with :func:`empty_module` and
:func:`load_state_lazily` a big model is loaded without a random initialisation: tensors stored in
the model's dtype are views of the file's memory mapping (no copy), the others are read one at a
time and cast in (peak memory: the model plus its largest tensor, not twice the model).
Training state (optimizers, discriminator, RNG) goes in a separate ``.pt`` file loaded with ``torch.load(weights_only=True)``. Every write is
atomic (:func:`ldmctl.files.atomic_write`), so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ldmctl import __version__
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.files import atomic_write

SCHEMA = "1"
M = TypeVar("M", bound=nn.Module)
READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    kind: str
    config: dict[str, Any]
    tensors: Mapping[str, Tensor]  # a dict (read_checkpoint) or LazyTensors (open_checkpoint)
    extra: dict[str, Any]
    version: str


def save_checkpoint(
    path: str | Path,
    tensors: dict[str, Tensor],
    *,
    kind: str,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` and their config to ``path`` atomically."""
    metadata = {
        "ldmctl.kind": kind,
        "ldmctl.config": json.dumps(config, sort_keys=True),
        "ldmctl.schema": SCHEMA,
        "ldmctl.version": __version__,
        "ldmctl.extra": json.dumps(extra or {}, sort_keys=True),
    }
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata))


def _unreadable(p: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"{str(p)!r} is not a readable .safetensors checkpoint ({err})",
        hint="the file may be truncated or not a safetensors file",
    )


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_DTYPES |= {"I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8}


class LazyTensors(Mapping[str, Tensor]):
    """The tensors of an open safetensors file, looked up one at a time, never kept here. A lookup
    is a view of the file's memory mapping (no copy: its pages are read when first used, shared with
    the page cache, copied on write); :meth:`copy` reads a tensor into plain memory instead (for a
    loader that casts it, so that no page of the mapping stays resident); :meth:`shape` and
    :meth:`dtype` read the header only."""

    def __init__(self, handle: Any, path: Path) -> None:
        self._fh, self._path, self._pread = handle, path, None
        self._keys = dict.fromkeys(handle.keys())  # ordered, with fast membership

    def __getitem__(self, key: str) -> Tensor:
        return self._read(self._fh, key)

    def copy(self, key: str) -> Tensor:
        if self._pread is None:
            self._pread = _safe_open(self._path, backend="pread")
        return self._read(self._pread, key)

    def _read(self, handle: Any, key: str) -> Tensor:
        if key not in self._keys:
            raise KeyError(key)
        try:
            return handle.get_tensor(key)
        except READ_ERRORS as err:
            raise _unreadable(self._path, err) from None

    def close(self) -> None:
        if self._pread is not None:
            self._pread.__exit__(None, None, None)
            self._pread = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._fh.get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype | None:
        return _DTYPES.get(self._fh.get_slice(key).get_dtype())


def _safe_open(p: Path, backend: str = "mmap") -> Any:
    """safetensors' lazy reader: memory-mapped, or with ``pread`` where it exists (safetensors >= 0.8:
    tensors in plain memory, no page of a mapping left resident); an older safetensors maps only."""
    if backend == "mmap":
        return safe_open(str(p), framework="pt", device="cpu")
    try:
        return safe_open(str(p), framework="pt", device="cpu", backend=backend)
    except TypeError:
        return safe_open(str(p), framework="pt", device="cpu")


@contextmanager
def open_checkpoint(path: str | Path, *, expect_kind: str | None = None) -> Iterator[Checkpoint]:
    """A checkpoint whose ``tensors`` (:class:`LazyTensors`) are read from disk as they are looked up,
    while the ``with`` block lasts; the checks and errors are those of :func:`read_checkpoint`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} {_missing(p)}")
    try:
        handle = _safe_open(p)
        meta = handle.metadata() or {}
    except READ_ERRORS as err:
        raise _unreadable(p, err) from None
    with handle:
        kind, config, extra = _check_metadata(p, meta, expect_kind)
        tensors = LazyTensors(handle, p)
        try:
            yield Checkpoint(p, kind, config, tensors, extra, meta.get("ldmctl.version", "?"))
        finally:
            tensors.close()


def _missing(p: Path) -> str:
    """Why ``p`` is not read: only regular files are (a FIFO would block the reader forever)."""
    return "is not a regular file (a folder, FIFO or device)" if p.exists() else "does not exist"


def _check_metadata(p: Path, meta: dict[str, str], expect_kind: str | None) -> tuple[str, dict, dict]:
    if "ldmctl.kind" not in meta:
        raise CheckpointError(f"{str(p)!r} was not written by ldmctl (no ldmctl metadata)")
    if meta.get("ldmctl.schema") != SCHEMA:
        raise CheckpointError(
            f"{str(p)!r} has checkpoint schema {meta.get('ldmctl.schema')!r}; this ldmctl reads schema {SCHEMA!r}",
            hint="upgrade ldmctl",
        )
    kind = meta["ldmctl.kind"]
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointError(f"{str(p)!r} is a {kind} checkpoint, but a {expect_kind} checkpoint is needed here")
    try:
        return kind, json.loads(meta.get("ldmctl.config", "{}")), json.loads(meta.get("ldmctl.extra", "{}"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{str(p)!r} has corrupt metadata: {err}") from None
    except RecursionError:
        raise CheckpointError(f"{str(p)!r} has corrupt metadata: nested too deep") from None


def read_checkpoint(path: str | Path, *, expect_kind: str | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, every tensor into memory; every failure
    is a CheckpointError. A file whose tensors cannot all be read is refused before its metadata."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} {_missing(p)}")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except READ_ERRORS as err:
        raise _unreadable(p, err) from None
    kind, config, extra = _check_metadata(p, meta, expect_kind)
    return Checkpoint(p, kind, config, tensors, extra, meta.get("ldmctl.version", "?"))


def load_state(module: nn.Module, tensors: dict[str, Tensor], where: str) -> None:
    """Load a state dict strictly, turning key/shape mismatches into a CheckpointError."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"{where}: weights do not match the stored config ({first})", hint="the file may have been tampered with"
        ) from None


def empty_module(build: Callable[[], M]) -> M:
    """``build()`` without initialising it: made on the ``meta`` device, then given uninitialised CPU
    storage, for a loader that overwrites every weight (an SD-size UNet: seconds of random
    initialisation and a second copy saved). Non-persistent buffers, which no file restores, are
    zeroed: in ldmctl's models they are run-time counters (the VQ codebook's ``usage_count``)."""
    try:
        with torch.device("meta"):
            module = build()
    except (ValueError, RuntimeError, ZeroDivisionError, AssertionError) as err:
        raise ConfigError(f"the stored config builds no model: {type(err).__name__}: {err}") from None
    check_memory(module_bytes(module), "the model its stored config asks for")  # before allocating
    module = module.to_empty(device="cpu")
    persistent = set(module.state_dict(keep_vars=True))
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name not in persistent:
                buf.zero_()
    return module


def module_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``module`` (on any device, ``meta`` included)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def model_bytes(build: Callable[[], nn.Module]) -> int:
    """Bytes of the weights ``build()`` would allocate, counted on the ``meta`` device (nothing is
    allocated); a config that builds no model is a ConfigError."""
    try:
        with torch.device("meta"):
            return module_bytes(build())
    except (ValueError, RuntimeError, ZeroDivisionError, AssertionError) as err:
        raise ConfigError(f"the config builds no model: {type(err).__name__}: {err}") from None


def check_memory(need: int, what: str, *, copies: int = 1) -> None:
    """ConfigError, naming both figures, when ``copies`` x ``need`` bytes exceed this machine's memory."""
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): nothing to compare with
        return
    if need * copies > have:
        times = f" ({copies} x {_gb(need)} of weights)" if copies > 1 else ""
        raise ConfigError(
            f"{what} would need about {_gb(need * copies)} of memory{times}; this machine has {_gb(have)}",
            hint="use smaller widths (channels, channel_mult), fewer blocks or a smaller preset",
        )


def _gb(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def load_state_lazily(module: nn.Module, tensors: Mapping[str, Tensor], where: str, *, prefix: str = "") -> None:
    """:func:`load_state` from the tensors of ``tensors`` whose keys start with ``prefix``, one at a
    time. As strict: every key and shape is checked before anything is read. With
    :class:`LazyTensors`, a tensor stored in the module's dtype becomes the module's tensor without a
    copy (a view of the file mapping: the model costs its own size, read as it is used, as diffusers'
    loader does); one to be cast or laid out otherwise (the UNet's channels-last convolutions) is read
    into plain memory and copied in, as ``load_state_dict`` does."""
    own = module.state_dict(keep_vars=True)
    _check_state(own, tensors, where, prefix)
    lazy = isinstance(tensors, LazyTensors)
    assign: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, target in own.items():
            key = prefix + name
            if lazy and tensors.dtype(key) == target.dtype and target.stride() == _row_major(target.shape):
                assign[name] = tensors[key]
            else:
                target.copy_(tensors.copy(key) if lazy else tensors[key])
    if assign:
        module.load_state_dict(assign, strict=False, assign=True)


def _row_major(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape`` (what a file tensor has)."""
    return torch.empty(shape, device="meta").stride()


def _check_state(own: Mapping[str, Tensor], tensors: Mapping[str, Tensor], where: str, prefix: str) -> None:
    stored = {k[len(prefix) :] for k in tensors if k.startswith(prefix)}
    missing, unexpected = sorted(own.keys() - stored), sorted(stored - own.keys())
    problems = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(unexpected)}" if unexpected else ""]
    shape_of = tensors.shape if isinstance(tensors, LazyTensors) else (lambda k: tuple(tensors[k].shape))
    for name in sorted(own.keys() & stored):
        shape = shape_of(prefix + name)
        if shape != tuple(own[name].shape):
            problems.append(f"{name!r} has shape {list(shape)} in the file, {list(own[name].shape)} in the model")
            break
    if any(problems):
        detail = "; ".join(p for p in problems if p)
        raise CheckpointError(
            f"{where}: weights do not match the stored config ({detail})", hint="the file may have been tampered with"
        )


def _few(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def save_autoencoder(ae: nn.Module, path: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Save a first-stage autoencoder (weights incl. its ``scale_factor``) with its config."""
    from ldmctl.config import to_dict

    return save_checkpoint(path, ae.state_dict(), kind="autoencoder", config=to_dict(ae.config), extra=extra)


def load_autoencoder(path: str | Path) -> nn.Module:
    """Rebuild an autoencoder from its checkpoint alone, in eval mode."""
    from ldmctl.autoencoder import build_autoencoder
    from ldmctl.config import AutoencoderConfig, from_dict

    ckpt = read_checkpoint(path, expect_kind="autoencoder")
    try:
        cfg = from_dict(AutoencoderConfig, ckpt.config)
        check_memory(model_bytes(lambda: build_autoencoder(cfg)), "its stored config")
    except ConfigError as err:
        raise CheckpointError(f"{str(ckpt.path)!r}: stored config is invalid: {err}") from None
    ae = build_autoencoder(cfg)
    load_state(ae, ckpt.tensors, str(ckpt.path))
    return ae.eval()


def save_train_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write optimizer/RNG/step state atomically (tensors, numbers, strings, lists, dicts only)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read training state written by :func:`save_train_state`; never unpickles code."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"training state {str(p)!r} {_missing(p)}",
            hint="--resume needs the folder of an earlier run with the same --out-dir",
        )
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"training state {str(p)!r} is unreadable: {type(err).__name__}") from None
