"""``builtin:synthetic``: deterministic coloured shapes on generated backgrounds, for tests.

Each item is drawn from its own seed, ``(seed, index)``, so item 7 is the same image in every
process, every epoch and every DataLoader worker. The label is the shape class and the caption
says what was drawn ("a red triangle on a noisy blue background"). Any ``DataConfig.size``
works; ``crop``, ``resize`` and ``flip`` do not apply (the image is generated at that size).
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ldmctl.config import DataConfig
from ldmctl.data.images import Item, pil_to_tensor

SHAPES = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (240, 210, 40),
    "cyan": (40, 200, 210),
    "magenta": (200, 50, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
}
DEFAULT_LENGTH = 1024


def _background(rng: random.Random, size: int) -> tuple[Image.Image, str, set[str]]:
    """Draw a solid, gradient or noise background; return it, its description, colours used."""
    names = list(COLORS)
    c1, c2 = rng.sample(names, 2)
    kind = rng.choice(("solid", "gradient", "noise"))
    if kind == "solid":
        return Image.new("RGB", (size, size), COLORS[c1]), c1, {c1}
    if kind == "gradient":
        t = np.linspace(0.0, 1.0, size)[:, None, None]  # (S, 1, 1) top -> bottom
        rows = (1 - t) * np.array(COLORS[c1]) + t * np.array(COLORS[c2])  # (S, 1, 3)
        arr = np.broadcast_to(rows, (size, size, 3)).round().astype(np.uint8)
        img = Image.fromarray(arr, mode="RGB")
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.ROTATE_90)
        return img, f"{c1} to {c2} gradient", {c1, c2}
    grid = rng.choice((4, 8, 16))
    noise = Image.frombytes("RGB", (grid, grid), rng.randbytes(grid * grid * 3))
    noise = noise.resize((size, size), Image.Resampling.BILINEAR)
    return Image.blend(Image.new("RGB", (size, size), COLORS[c1]), noise, 0.35), f"noisy {c1}", {c1}


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill: tuple[int, int, int]
) -> None:
    """Draw ``shape`` of radius ``r`` centred at (cx, cy)."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.regular_polygon((cx, cy, r), 4, rotation=angle, fill=fill)
    elif shape == "triangle":
        draw.regular_polygon((cx, cy, r), 3, rotation=angle, fill=fill)
    else:  # cross: two bars a third of the radius thick
        w = max(r / 3, 0.5)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)


def synthetic_image(seed: int, index: int, size: int) -> tuple[Image.Image, int, str]:
    """Generate item ``index`` for ``seed``: (RGB image of ``size``, shape label, caption)."""
    rng = random.Random(f"ldmctl-synthetic/{seed}/{index}")
    img, bg_desc, used = _background(rng, size)
    label = rng.randrange(len(SHAPES))
    color = rng.choice([c for c in COLORS if c not in used])
    r = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    _draw_shape(ImageDraw.Draw(img), SHAPES[label], cx, cy, r, rng.uniform(0, 90), COLORS[color])
    return img, label, f"{_a(color)} {color} {SHAPES[label]} on {_a(bg_desc)} {bg_desc} background"


def _a(word: str) -> str:
    """Return the indefinite article for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


class SyntheticDataset(Dataset):
    """``length`` generated images of ``cfg.size`` pixels; item i depends only on (seed, i)."""

    def __init__(self, cfg: DataConfig, *, seed: int = 0, length: int = DEFAULT_LENGTH) -> None:
        self.cfg, self.seed, self.length, self.epoch = cfg, seed, length, 0
        self.class_names: list[str] = list(SHAPES)
        self.skipped: list[tuple[str, str]] = []

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch; generated items do not depend on it."""
        self.epoch = int(epoch)

    def summary(self) -> str:
        """Describe the data set in one line."""
        return (
            f"builtin:synthetic: {self.length} generated {self.cfg.size}x{self.cfg.size} "
            f"images, {len(SHAPES)} shape classes"
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Item:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        img, label, caption = synthetic_image(self.seed, index, self.cfg.size)
        return {"image": pil_to_tensor(img), "label": label, "caption": caption, "path": f"synthetic:{index}"}


__all__ = ["COLORS", "SHAPES", "SyntheticDataset", "synthetic_image"]
