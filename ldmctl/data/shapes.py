"""``builtin:shapes``: one or two filled shapes on white, with captions that bind colour, shape
and position — the data set that tells pooled embeddings from cross-attention.

Shapes {circle, square, triangle} in colours {red, green, blue, yellow, purple, cyan}. One shape:
"a red circle". Two non-overlapping shapes: "a red circle to the left of a blue square" (or "to
the right of", "above", "below"; the relation is exact: the first object's centre is left of /
right of / above / below the second's by at least a third of the image along that axis, and the
boxes do not overlap). Item ``i`` of epoch ``e`` is generated from ``(seed, e, i)``, so the data
are unlimited (a new epoch, new images) and reproducible. ``label`` is the first object's shape
index; ``objects`` lists (colour, shape, cx, cy) in caption order for checkers.
"""

from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ldmctl.config import DataConfig
from ldmctl.data.images import pil_to_tensor

SHAPE_NAMES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "cyan": (20, 200, 210),
}
RELATIONS = ("to the left of", "to the right of", "above", "below")
EPOCH_LENGTH = 10_000


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]
) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:  # triangle, pointing up, inscribed in the same box
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)


def _place_pair(
    rng: random.Random, size: int, r: float, relation: str
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centres (first, second) satisfying ``relation`` with a margin, inside the image, not overlapping."""
    lo, hi = r + 1, size - r - 1
    gap = max(2 * r + 2, size / 3)
    along_a = rng.uniform(lo, hi - gap)
    along_b = rng.uniform(along_a + gap, hi)
    across_a, across_b = rng.uniform(lo, hi), rng.uniform(lo, hi)
    if relation == "to the left of":
        return (along_a, across_a), (along_b, across_b)
    if relation == "to the right of":
        return (along_b, across_a), (along_a, across_b)
    if relation == "above":
        return (across_a, along_a), (across_b, along_b)
    return (across_a, along_b), (across_b, along_a)  # below


def shapes_image(
    seed: int, epoch: int, index: int, size: int
) -> tuple[Image.Image, str, list[tuple[str, str, float, float]]]:
    """Generate item ``index`` of ``epoch``: (image, caption, objects in caption order)."""
    rng = random.Random(f"shapes/{seed}/{epoch}/{index}")
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.11, 0.16)
    if rng.random() < 0.3:
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPE_NAMES)
        cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
        draw_shape(draw, shape, cx, cy, r, COLOURS[colour])
        return img, f"a {colour} {shape}", [(colour, shape, cx, cy)]
    (c1, s1), (c2, s2) = [(rng.choice(list(COLOURS)), rng.choice(SHAPE_NAMES)) for _ in range(2)]
    while (c1, s1) == (c2, s2):
        c2, s2 = rng.choice(list(COLOURS)), rng.choice(SHAPE_NAMES)
    relation = rng.choice(RELATIONS)
    (x1, y1), (x2, y2) = _place_pair(rng, size, r, relation)
    draw_shape(draw, s1, x1, y1, r, COLOURS[c1])
    draw_shape(draw, s2, x2, y2, r, COLOURS[c2])
    return img, f"a {c1} {s1} {relation} a {c2} {s2}", [(c1, s1, x1, y1), (c2, s2, x2, y2)]


class ShapesDataset(Dataset):
    """``EPOCH_LENGTH`` new images per epoch, deterministic in (seed, epoch, index)."""

    def __init__(self, cfg: DataConfig, *, seed: int = 0, length: int = EPOCH_LENGTH) -> None:
        self.cfg, self.seed, self.length, self.epoch = cfg, seed, length, 0
        self.name = "builtin:shapes"
        self.class_names = list(SHAPE_NAMES)
        self.skipped: list[tuple[str, str]] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def summary(self) -> str:
        return f"builtin:shapes: {self.length} generated {self.cfg.size}x{self.cfg.size} images per epoch"

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        img, caption, objects = shapes_image(self.seed, self.epoch, index, self.cfg.size)
        return {
            "image": pil_to_tensor(img),
            "label": SHAPE_NAMES.index(objects[0][1]),
            "caption": caption,
            "path": f"builtin:shapes#{self.epoch}/{index}",
        }


__all__ = ["COLOURS", "RELATIONS", "SHAPE_NAMES", "ShapesDataset", "draw_shape", "shapes_image"]
