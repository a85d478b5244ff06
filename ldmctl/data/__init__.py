"""Data sets for ldmctl: image folders and offline built-ins, as map-style Datasets of dicts.

Every data set yields ``{"image": (3, S, S) float in [-1, 1], "label": int, "caption": str,
"path": str}`` and has ``.skipped`` (bad files: ``(path, reason)``), ``.set_epoch(epoch)``,
``.class_names`` and ``.summary()``. See docs/data.md.
"""

from __future__ import annotations

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


def open_dataset(cfg: DataConfig, *, seed: int = 0) -> Dataset:
    """Open ``cfg.source``: a folder of images, or ``builtin:NAME`` (see ``BUILTINS``)."""
    if cfg.size <= 0:
        raise ConfigError(f"data.size must be a positive number of pixels, got {cfg.size}")
    if cfg.max_pixels <= 0:
        raise ConfigError(f"data.max_pixels must be positive, got {cfg.max_pixels}")
    source = cfg.source
    if source.startswith(BUILTIN_PREFIX):
        return open_builtin(source[len(BUILTIN_PREFIX):], cfg, seed=seed)
    if not Path(source).exists() and source in BUILTINS:
        raise DataError(f"data folder {source!r} does not exist",
                        hint=f"for the built-in data set write builtin:{source}")
    return ImageFolderDataset(source, cfg, seed=seed)


__all__ = [
    "BUILTINS",
    "HOLDOUT",
    "IMAGE_SUFFIXES",
    "TRAIN_PHOTOS",
    "ImageFolderDataset",
    "Item",
    "SyntheticDataset",
    "holdout_photos",
    "iter_image_files",
    "load_image",
    "open_dataset",
    "pil_to_tensor",
    "tensor_to_pil",
]
