"""A data set wrapper that adds one derived entry to each item of another (the super-resolution
task's low-res image, the inpainting task's mask).

Everything else (``len``, ``skipped``, ``class_names``, ``name``, the base item's keys) is the base
data set's, and ``set_epoch`` is forwarded. The entry of item ``i`` in epoch ``e`` is
``make(item, epoch, index)``: a pure function of them, so new entries every epoch and the same ones
for the same key on every machine and after ``--resume``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

MakeEntry = Callable[[dict[str, Any], int, int], Any]  # (item, epoch, index) -> the new entry


class ExtendedDataset(Dataset):
    """``base`` with ``item[key] = make(item, epoch, index)`` added; ``about`` describes the entry."""

    def __init__(self, base: Dataset, key: str, make: MakeEntry, about: str) -> None:
        self.base, self.key, self.make, self.about = base, key, make, about
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        item[self.key] = self.make(item, self.epoch, index)
        return item

    def set_epoch(self, epoch: int) -> None:
        """New entries (and, through ``base``, new crops) for ``epoch``."""
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """The base data set's skipped files, ``(path, reason)``."""
        return getattr(self.base, "skipped", [])

    @property
    def class_names(self) -> list[str]:
        """The base data set's class names."""
        return getattr(self.base, "class_names", [])

    @property
    def name(self) -> str:
        """The base data set's name; AttributeError (so ``getattr`` defaults work) if it has none."""
        return self.base.name  # type: ignore[attr-defined]

    def summary(self) -> str:
        """The base summary plus what was added, in one line."""
        base = self.base.summary() if hasattr(self.base, "summary") else f"{len(self)} images"
        return f"{base}{self.about}"


__all__ = ["ExtendedDataset", "MakeEntry"]
