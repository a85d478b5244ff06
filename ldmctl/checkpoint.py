"""Checkpoints: ``.safetensors`` weights whose metadata carries the config that built them.

Metadata keys (all strings, as safetensors requires):

- ``ldmctl.kind``    what the file holds: ``autoencoder``, ``ldm`` or ``classifier``
- ``ldmctl.config``  JSON of ``to_dict(model_config)``, enough to rebuild the model
- ``ldmctl.schema``  format version of this layout, checked on load
- ``ldmctl.version`` the ldmctl version that wrote it
- ``ldmctl.extra``   JSON of anything else worth keeping (training config, step, data summary)

Only safetensors files are ever read as models. Training state (optimizers, discriminator, RNG)
goes in a separate ``.pt`` file loaded with ``torch.load(weights_only=True)``. Every write is
atomic (:func:`ldmctl.files.atomic_write`), so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ldmctl import __version__
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.files import atomic_write

SCHEMA = "1"


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    kind: str
    config: dict[str, Any]
    tensors: dict[str, Tensor]
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


def read_checkpoint(path: str | Path, *, expect_kind: str | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; every failure is a CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{str(p)!r} is not a readable .safetensors checkpoint ({err})",
            hint="the file may be truncated or not a safetensors file",
        ) from None
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
        config = json.loads(meta.get("ldmctl.config", "{}"))
        extra = json.loads(meta.get("ldmctl.extra", "{}"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{str(p)!r} has corrupt metadata: {err}") from None
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
            f"training state {str(p)!r} does not exist",
            hint="--resume needs the folder of an earlier run with the same --out-dir",
        )
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"training state {str(p)!r} is unreadable: {type(err).__name__}") from None
