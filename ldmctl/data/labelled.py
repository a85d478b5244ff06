"""Labelled small-image data sets from Debian packages: OpenCV's digits and Fashion-MNIST.

* ``builtin:digits`` / ``builtin:digits-holdout``: the 5,000 handwritten digits of OpenCV's
  ``samples/data/digits.png`` (Debian ``opencv-doc``): a 2000x1000 sheet of 20x20 tiles, 500 per
  class, five tile rows per digit. Tile ``k`` of a class (``k = 100 * row + column`` within the
  class block) is a training tile when ``k < 450``; tiles 450-499 of each class are the holdout
  split, reserved for evaluation (never trained on).
* ``builtin:fashion`` / ``builtin:fashion-test``: the 60k/10k 28x28 images of
  Debian ``dataset-fashion-mnist``.

Tiles are grayscale; items are RGB (three equal channels) resized to ``cfg.size`` with bicubic
filtering. Digits are never flipped (a mirrored digit is a different glyph); Fashion-MNIST
follows ``cfg.flip``. Each item has ``label`` and a ``caption`` ("a handwritten digit seven").
A missing package is a :class:`DataError` whose hint is the ``apt-get install`` command.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ldmctl.config import DataConfig
from ldmctl.data.images import Item, item_rng
from ldmctl.errors import DataError

DIGITS_PNG = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
DIGITS_TRAIN_PER_CLASS = 450  # tiles 0..449 of each class train; 450..499 are held out


def _missing(what: str, path: Path, package: str) -> DataError:
    return DataError(f"{what} needs {path}, which is not on this machine", hint=f"apt-get install {package}")


@functools.cache
def digits_tiles() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (tiles [5000,20,20] uint8, labels [5000], index within class [5000])."""
    if not DIGITS_PNG.is_file():
        raise _missing("builtin:digits", DIGITS_PNG, "opencv-doc")
    sheet = np.asarray(Image.open(DIGITS_PNG).convert("L"))
    if sheet.shape != (1000, 2000):
        raise DataError(f"{DIGITS_PNG} is {sheet.shape[1]}x{sheet.shape[0]}, expected 2000x1000")
    tiles = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3)  # [row, col, 20, 20]
    rows, cols = np.meshgrid(np.arange(50), np.arange(100), indexing="ij")
    labels = (rows // 5).reshape(-1)
    within = ((rows % 5) * 100 + cols).reshape(-1)
    return np.ascontiguousarray(tiles.reshape(-1, 20, 20)), labels, within


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.cache
def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images [N,28,28] uint8, labels [N]) of the ``train`` or ``t10k`` split."""
    images, labels = FASHION_DIR / f"{split}-images-idx3-ubyte.gz", FASHION_DIR / f"{split}-labels-idx1-ubyte.gz"
    for p in (images, labels):
        if not p.is_file():
            raise _missing("builtin:fashion", p, "dataset-fashion-mnist")
    return _read_idx(images), _read_idx(labels).astype(np.int64)


class LabelledTiles(Dataset):
    """Small grayscale images with labels, as RGB items of ``cfg.size`` pixels."""

    def __init__(
        self,
        name: str,
        tiles: np.ndarray,
        labels: np.ndarray,
        class_names: tuple[str, ...],
        caption: str,
        cfg: DataConfig,
        *,
        seed: int = 0,
        flip: bool = False,
    ) -> None:
        self.name, self.cfg, self.seed, self.epoch, self.flip = name, cfg, seed, 0, flip
        self.tiles, self.labels = tiles, labels
        self.class_names = list(class_names)
        self.caption = caption
        self.skipped: list[tuple[str, str]] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def summary(self) -> str:
        h, w = self.tiles.shape[1:]
        return (
            f"{self.name}: {len(self)} images of {w}x{h} px, {len(self.class_names)} classes, "
            f"served at {self.cfg.size}x{self.cfg.size}"
        )

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> Item:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        img = Image.fromarray(self.tiles[index])
        if img.size != (self.cfg.size, self.cfg.size):
            img = img.resize((self.cfg.size, self.cfg.size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
        if self.flip and item_rng(self.seed, self.epoch, index).random() < 0.5:
            x = x.flip(-1)
        label = int(self.labels[index])
        name = self.class_names[label]
        return {
            "image": x.expand(3, -1, -1).clone(),
            "label": label,
            "caption": self.caption.format(a="an" if name[0] in "aeiou" else "a", name=name),
            "path": f"{self.name}#{index}",
        }


def open_digits(cfg: DataConfig, seed: int, *, holdout: bool) -> LabelledTiles:
    tiles, labels, within = digits_tiles()
    keep = within >= DIGITS_TRAIN_PER_CLASS if holdout else within < DIGITS_TRAIN_PER_CLASS
    name = "builtin:digits-holdout" if holdout else "builtin:digits"
    return LabelledTiles(name, tiles[keep], labels[keep], DIGIT_NAMES, "a handwritten digit {name}", cfg, seed=seed)


def open_fashion(cfg: DataConfig, seed: int, *, test: bool) -> LabelledTiles:
    images, labels = fashion_mnist("t10k" if test else "train")
    name = "builtin:fashion-test" if test else "builtin:fashion"
    return LabelledTiles(
        name, images, labels, FASHION_NAMES, "a photo of {a} {name}", cfg, seed=seed, flip=cfg.flip and not test
    )


__all__ = [
    "DIGIT_NAMES",
    "FASHION_NAMES",
    "LabelledTiles",
    "digits_tiles",
    "fashion_mnist",
    "open_digits",
    "open_fashion",
]
