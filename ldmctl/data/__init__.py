"""Data sets for ldmctl: image folders and offline built-ins, as map-style Datasets of dicts.

Every data set yields ``{"image": (3, S, S) float in [-1, 1], "label": int, "caption": str,
"path": str}`` and has ``.skipped`` (bad files: ``(path, reason)``), ``.set_epoch(epoch)``,
``.class_names`` and ``.summary()``. See docs/data.md.
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from pathlib import Path

from torch.utils.data import Dataset

from ldmctl.config import DataConfig
from ldmctl.data.builtin import BUILTINS, HOLDOUT, TRAIN_PHOTOS, holdout_photos, open_builtin
from ldmctl.data.images import (
    IMAGE_SUFFIXES,
    ImageFolderDataset,
    Item,
    iter_image_files,
    load_image,
    pil_to_tensor,
    tensor_to_pil,
)
from ldmctl.data.synthetic import SyntheticDataset
from ldmctl.errors import ConfigError, DataError

BUILTIN_PREFIX = "builtin:"


class JoinedDataset(Dataset):
    """Several data sets one after the other (``data.source = "A,B"``); each keeps its own items."""

    def __init__(self, parts: list[Dataset]) -> None:
        self.parts = parts
        self.name = ",".join(getattr(p, "name", "?") for p in parts)
        self.offsets = [0]
        for p in parts:
            self.offsets.append(self.offsets[-1] + len(p))
        self.class_names = list(getattr(parts[0], "class_names", []))
        # extra item keys (metadata.jsonl fields) survive only where every part has them: one key set
        common = set.intersection(*(set(getattr(p, "fields", ())) for p in parts))
        self.fields = tuple(f for f in getattr(parts[0], "fields", ()) if f in common)
        self._drop = {f for p in parts for f in getattr(p, "fields", ())} - common

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [s for p in self.parts for s in getattr(p, "skipped", [])]

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            if hasattr(p, "set_epoch"):
                p.set_epoch(epoch)

    def summary(self) -> str:
        return "; ".join(p.summary() if hasattr(p, "summary") else str(p) for p in self.parts)

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> Item:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k = bisect.bisect_right(self.offsets, index) - 1
        item = self.parts[k][index - self.offsets[k]]
        return {key: v for key, v in item.items() if key not in self._drop} if self._drop else item


def open_dataset(cfg: DataConfig, *, seed: int = 0) -> Dataset:
    """Open ``cfg.source``: a folder of images, ``builtin:NAME`` (see ``BUILTINS``), or several
    of them joined by commas (``builtin:photos,builtin:opencv-photos``)."""
    if cfg.size <= 0:
        raise ConfigError(f"data.size must be a positive number of pixels, got {cfg.size}")
    if cfg.max_pixels <= 0:
        raise ConfigError(f"data.max_pixels must be positive, got {cfg.max_pixels}")
    source = cfg.source
    if "," in source and not Path(source).exists():
        names = [s.strip() for s in source.split(",") if s.strip()]
        return JoinedDataset([open_dataset(replace(cfg, source=n), seed=seed) for n in names])
    if source.startswith(BUILTIN_PREFIX):
        return open_builtin(source[len(BUILTIN_PREFIX) :], cfg, seed=seed)
    if not Path(source).exists() and source in BUILTINS:
        raise DataError(
            f"data folder {source!r} does not exist", hint=f"for the built-in data set write builtin:{source}"
        )
    return ImageFolderDataset(source, cfg, seed=seed)


__all__ = [
    "BUILTINS",
    "HOLDOUT",
    "IMAGE_SUFFIXES",
    "TRAIN_PHOTOS",
    "ImageFolderDataset",
    "Item",
    "JoinedDataset",
    "SyntheticDataset",
    "holdout_photos",
    "iter_image_files",
    "load_image",
    "open_dataset",
    "pil_to_tensor",
    "tensor_to_pil",
]
