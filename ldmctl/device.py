"""Where a model runs and in which precision: the one reader of ``--device`` and ``--precision``.

Every command that runs a model takes ``--device auto|cpu|cuda[:N]|mps`` and
``--precision fp32|bf16|fp16``; training reads the same spellings from ``train.device`` and
``train.precision``.

- ``auto``: the first accelerator present (a CUDA GPU, else Apple's MPS), else the CPU;
- ``cuda``: GPU 0 (under ``torchrun``: the process's own GPU, ``LOCAL_RANK``); ``cuda:N``: GPU N;
- ``fp32``: no autocast, and no TF32 on CUDA at inference; ``bf16``: autocast to bfloat16 (CPU,
  CUDA with bf16 support, MPS); ``fp16``: autocast to float16 (CUDA or MPS only: the CPU has no
  fast fp16 path).

Autocast lowers the precision of matrix products and convolutions only: sampler state,
schedules and the returned images stay float32. A device or precision that this machine cannot
give is a :class:`~ldmctl.errors.ConfigError` that names the fix.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from ldmctl.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")  # the spellings, for help texts and errors
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_SPELLING = re.compile(r"(auto|cpu|mps|cuda)(?::(\d+))?")


def parse_device(name: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``, ``"auto"`` -> ``("auto", None)``; ConfigError for anything
    else (an index is only meaningful after ``cuda``)."""
    m = _SPELLING.fullmatch(str(name).strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ConfigError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str = "auto", *, local_rank: int | None = None) -> torch.device:
    """The :class:`torch.device` for a ``--device`` spelling (see the module doc).

    ``local_rank`` (a ``torchrun`` process) turns ``cuda`` and ``auto`` into that process's GPU
    (``local_rank`` modulo the GPU count). ConfigError when CUDA or MPS is asked for but absent,
    or the GPU index is out of range."""
    kind, index = parse_device(name)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not mps_available():
            raise ConfigError(f"--device {name}: Apple's MPS backend is not available here", hint=_hint())
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible on this machine", hint=_hint())
    count = torch.cuda.device_count()
    if index is None:
        index = (local_rank or 0) % count
    if index >= count:
        raise ConfigError(
            f"--device {name}: this machine has {count} CUDA GPU(s), numbered 0 to {count - 1}",
            hint="use cuda (GPU 0) or cuda:N with N below the GPU count",
        )
    return torch.device("cuda", index)


def _hint() -> str:
    present = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if mps_available() else [])
    return f"use --device auto (picks what is present) or one of: {', '.join(present)}"


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None for fp32); ConfigError when the
    device cannot compute in it."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "fp16" and kind not in ("cuda", "mps"):
        raise ConfigError(
            f"--precision fp16 needs a GPU (cuda or mps); the {kind.upper()} has no fast fp16",
            hint="use --precision bf16 (or fp32) on the CPU",
        )
    if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"--precision bf16: GPU {torch.cuda.get_device_name(torch.device(device))!r} has no bfloat16 support",
            hint="use --precision fp16 (or fp32) on this GPU",
        )
    return _DTYPES.get(precision)


def autocast(precision: str, device: torch.device | str, *, exact: bool = True) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device``. For fp32 on CUDA with ``exact``, TF32
    is off inside it (PyTorch lets cuDNN convolutions use TF32, 10-bit mantissas, by default), so
    fp32 means fp32 and CUDA agrees with the CPU; training passes ``exact=False`` and keeps
    PyTorch's defaults."""
    dtype = resolve_precision(precision, device)
    if dtype is not None:
        return torch.autocast(torch.device(device).type, dtype=dtype)
    return full_fp32() if exact and torch.device(device).type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off for CUDA matrix products and cuDNN convolutions inside (nothing changes on other
    devices): what fp32 inference and the metric networks run under."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def inference_weights_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype to *store* a sampling model's UNet weights in: bfloat16 for ``--precision bf16`` on
    the CPU (autocast would otherwise cast every fp32 weight to bf16 at every call: half the memory
    and a cast per step saved, the same products), else None (weights stay float32)."""
    dtype = resolve_precision(precision, device)
    return dtype if dtype is torch.bfloat16 and torch.device(device).type == "cpu" else None


def lower_weights(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Store the weights of ``module``'s linear maps and convolutions (what autocast runs in
    ``dtype``) in ``dtype``; norms, embeddings and buffers stay as they are."""
    for m in module.modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            m.to(dtype)
    return module


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU for a module without any)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


__all__ = [
    "DEVICES",
    "PRECISIONS",
    "autocast",
    "full_fp32",
    "inference_weights_dtype",
    "lower_weights",
    "module_device",
    "mps_available",
    "parse_device",
    "resolve_device",
    "resolve_precision",
]
