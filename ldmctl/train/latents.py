"""The latent cache of train-ldm: a data set encoded once, kept on disk as memory-mapped arrays.

With ``cache_latents`` the run folder gets ``latents/``::

    z0.npy              (N, C, h, w) float32 scaled latents (epoch-0 crops, posterior mode)
    <key>.npy           each tensor or number a conditioner reads (e.g. cond_image, label)
    <key>.json          each text a conditioner reads (captions)
    index.json          written last: N, the keys, the autoencoder's SHA-256, the data config

Arrays are opened with ``numpy.load(mmap_mode="r")``, so a batch reads only its own rows and a
data set larger than RAM still trains (the page cache holds what fits). A cache whose
``index.json`` is missing (a run killed while encoding) or describes another autoencoder or data
config is rebuilt; otherwise ``--resume`` reuses it without encoding again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.files import atomic_write
from ldmctl.train.loop import index_batches

Progress = Callable[[int, int], None]


class LatentCache:
    """Rows of a cache: ``take(idx)`` gives a batch dict of tensors (texts as lists)."""

    def __init__(self, arrays: dict[str, Any]) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return int(self.arrays["z0"].shape[0])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.arrays["z0"].shape[1:])

    def take(self, idx: list[int] | Tensor) -> dict[str, Any]:
        rows = np.asarray(idx.tolist() if isinstance(idx, Tensor) else idx, dtype=np.int64)
        out: dict[str, Any] = {}
        for k, v in self.arrays.items():
            out[k] = [v[i] for i in rows] if isinstance(v, list) else torch.from_numpy(np.ascontiguousarray(v[rows]))
        return out


def _values(items: list[dict[str, Any]], key: str, where: str) -> list[Any]:
    if key not in items[0]:
        raise ConfigError(f"a conditioner reads batch[{key!r}], which items of {where} do not have")
    return [it[key] for it in items]


def build_cache(
    encode: Callable[[Tensor], Tensor],
    dataset: Any,
    folder: Path,
    *,
    keys: tuple[str, ...],
    stamp: dict[str, Any],
    batch_size: int = 64,
    progress: Progress | None = None,
) -> LatentCache:
    """Encode epoch 0 of ``dataset`` into ``folder`` chunk by chunk (memory: one chunk). A disk that
    fills up (or any other OSError) is a CheckpointError naming the folder, never a traceback."""
    try:
        return _build_cache(encode, dataset, folder, keys, stamp, batch_size, progress)
    except OSError as err:
        raise CheckpointError(f"cannot write the latent cache in {str(folder)!r}: {err.strerror or err}") from None


def _build_cache(
    encode: Callable[[Tensor], Tensor],
    dataset: Any,
    folder: Path,
    keys: tuple[str, ...],
    stamp: dict[str, Any],
    batch_size: int,
    progress: Progress | None,
) -> LatentCache:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").unlink(missing_ok=True)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    n, where = len(dataset), getattr(dataset, "name", "this data set")
    arrays: dict[str, Any] = {}
    texts: dict[str, list[str]] = {}
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        chunk = {"z0": encode(torch.stack([it["image"] for it in items])).float()}
        for k in keys:
            vals = _values(items, k, where)
            if isinstance(vals[0], str):
                texts.setdefault(k, []).extend(vals)
            else:
                chunk[k] = torch.stack(vals) if isinstance(vals[0], Tensor) else torch.as_tensor(vals)
        for k, v in chunk.items():
            a = v.numpy()
            if k not in arrays:
                arrays[k] = np.lib.format.open_memmap(
                    folder / f"{k}.npy", mode="w+", dtype=a.dtype, shape=(n, *a.shape[1:])
                )
            arrays[k][start : start + len(items)] = a
        if progress:
            progress(min(start + batch_size, n), n)
    for a in arrays.values():
        a.flush()
    for k, v in texts.items():
        (folder / f"{k}.json").write_text(json.dumps(v))
    index = {"n": n, "arrays": sorted(arrays), "texts": sorted(texts), **stamp}
    atomic_write(folder / "index.json", lambda tmp: tmp.write_text(json.dumps(index, sort_keys=True)))
    return open_cache(folder)


def open_cache(folder: Path, stamp: dict[str, Any] | None = None) -> LatentCache | None:
    """The complete cache in ``folder`` if its stamp matches ``stamp``; None otherwise."""
    try:
        index = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError):
        return None
    if stamp is not None and any(index.get(k) != v for k, v in stamp.items()):
        return None
    arrays: dict[str, Any] = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in index["arrays"]}
    arrays.update({k: json.loads((folder / f"{k}.json").read_text()) for k in index["texts"]})
    return LatentCache(arrays)


def latent_batches(
    cache: LatentCache, batch_size: int, *, seed: int, start_step: int, rank: int = 0, world: int = 1
) -> Iterator[dict[str, Any]]:
    """Batches of a cache forever, in the order of :func:`~ldmctl.train.loop.index_batches`."""
    for idx in index_batches(len(cache), batch_size, seed=seed, start_step=start_step, rank=rank, world=world):
        yield cache.take(idx)


__all__ = ["LatentCache", "build_cache", "latent_batches", "open_cache"]
