"""Random training masks for inpainting: boxes and brush strokes, a pure function of (seed, epoch, index).

:func:`draw_mask` makes one mask (1, H, W) in {0, 1}, 1 = repaint, following ``InpaintConfig``:

1. the kind, uniformly from ``kinds``;
2. a target coverage c ~ U[min_coverage, max_coverage], as a pixel count (rounded into the range);
3. shapes of that kind are painted until the mask covers the target:

   * ``box``: a rectangle of about the target's area (aspect ratio in [1/3, 3]) at a random place,
     and further ones only while the mask covers less than ``min_coverage``;
   * ``stroke``: brush strokes, polylines of 2-8 segments with random turns painted with a round
     brush 5-20 % of the short side wide (at least 1.5 px); a segment that would pass
     ``max_coverage`` is shortened (halved up to three times) or dropped, which ends the painting;

4. a mask still under ``min_coverage`` after that (a stroke mask that stopped short) gets boxes
   too, and past 200 shapes single pixels; no shape ever takes the mask past ``max_coverage``.

So the coverage of every mask lies in [min_coverage, max_coverage] up to one pixel of rounding.
:class:`InpaintDataset` adds such a mask to each item of a data set; its RNG for item ``i`` is
``random.Random(f"ldmctl/inpaint/{seed}/{epoch}/{i}")``, separate from the crop RNG, so a given
(seed, epoch, index) always yields the same mask, on any machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ldmctl.config import InpaintConfig
from ldmctl.data.extended import ExtendedDataset
from ldmctl.errors import ConfigError
from ldmctl.inpaint.task import MASK_KEY

KINDS = ("box", "stroke")
MAX_SHAPES = 200  # shapes painted before the remaining pixels are filled one by one


def check_masks(cfg: InpaintConfig) -> None:
    """Raise ConfigError if ``cfg`` holds a value :func:`draw_mask` cannot use."""
    lo, hi = cfg.min_coverage, cfg.max_coverage
    if not (0.0 <= lo <= hi <= 1.0):
        raise ConfigError(
            f"inpaint.min_coverage={lo} and inpaint.max_coverage={hi} must satisfy 0 <= min <= max <= 1",
            hint="they are fractions of the image, e.g. 0.1 and 0.5",
        )
    if not cfg.kinds or any(k not in KINDS for k in cfg.kinds):
        raise ConfigError(f"inpaint.kinds must be a non-empty list of {list(KINDS)}, got {list(cfg.kinds)}")


def mask_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The RNG of item ``index``'s mask in ``epoch`` of a run seeded with ``seed``."""
    return random.Random(f"ldmctl/inpaint/{seed}/{epoch}/{index}")


def draw_mask(h: int, w: int, cfg: InpaintConfig, rng: random.Random) -> Tensor:
    """One random mask (1, h, w) float32 in {0, 1}, 1 = repaint (see the module docstring)."""
    check_masks(cfg)
    n = h * w
    lo = min(n, math.ceil(cfg.min_coverage * n - 1e-9))
    hi = max(lo, math.floor(cfg.max_coverage * n + 1e-9))
    kind = rng.choice(cfg.kinds)
    target = min(hi, max(lo, round(rng.uniform(cfg.min_coverage, cfg.max_coverage) * n)))
    mask = np.zeros((h, w), dtype=bool)
    if kind == "stroke":
        _strokes(mask, rng, target, hi)
    elif target > 0:
        _box(mask, rng, target, hi)
    _fill(mask, rng, target, lo, hi)
    return torch.from_numpy(mask.astype(np.float32))[None]  # (1, H, W)


def batch_masks(indices: Sequence[int], epoch: int, size: tuple[int, int], cfg: InpaintConfig, *, seed: int) -> Tensor:
    """The masks (B, 1, H, W) of items ``indices`` in ``epoch``: the ones :class:`InpaintDataset` gives."""
    h, w = size
    return torch.stack([draw_mask(h, w, cfg, mask_rng(seed, epoch, int(i))) for i in indices])


def _box(mask: np.ndarray, rng: random.Random, area: int, room: int) -> None:
    """Paint one rectangle of about ``area`` pixels (at most ``room``, > 0) at a random place."""
    h, w = mask.shape
    aspect = math.exp(rng.uniform(-math.log(3), math.log(3)))  # height / width
    bh = min(h, max(1, math.ceil(area / w), round(math.sqrt(area * aspect))))
    bw = min(w, max(1, round(area / bh)))
    while bh * bw > room:  # rounding up must not pass max_coverage
        bw, bh = (bw - 1, bh) if bw > 1 else (bw, bh - 1)
    top, left = rng.randrange(h - bh + 1), rng.randrange(w - bw + 1)
    mask[top : top + bh, left : left + bw] = True


def _fill(mask: np.ndarray, rng: random.Random, target: int, lo: int, hi: int) -> None:
    """Paint rectangles of the pixels missing to ``target`` while fewer than ``lo`` are set (never
    more than ``hi``); past :data:`MAX_SHAPES` of them, single pixels."""
    for _ in range(MAX_SHAPES):
        covered = int(mask.sum())
        if covered >= lo:
            return
        _box(mask, rng, max(1, target - covered), hi - covered)
    missing = lo - int(mask.sum())
    if missing > 0:
        free = np.flatnonzero(~mask.ravel())
        mask.ravel()[rng.sample(free.tolist(), missing)] = True


def _strokes(mask: np.ndarray, rng: random.Random, target: int, hi: int) -> None:
    """Paint brush strokes until ``target`` pixels are set, never more than ``hi``."""
    h, w = mask.shape
    side = min(h, w)
    for _ in range(MAX_SHAPES):
        radius = max(0.75, rng.uniform(0.05, 0.2) * side / 2)
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(rng.randint(2, 8)):
            angle += rng.uniform(-math.pi / 2, math.pi / 2)
            length = rng.uniform(0.1, 0.4) * max(h, w)
            for _ in range(4):  # the full segment, then halves of it while it passes hi
                y1 = min(max(y + length * math.sin(angle), 0.0), float(h))
                x1 = min(max(x + length * math.cos(angle), 0.0), float(w))
                painted = mask | _capsule(h, w, (y, x), (y1, x1), radius)
                if painted.sum() <= hi:
                    break
                length /= 2
            else:
                return  # even a short segment passes max_coverage: stop here
            mask[:] = painted
            y, x = y1, x1
            if mask.sum() >= target:
                return


def _capsule(h: int, w: int, p0: tuple[float, float], p1: tuple[float, float], r: float) -> np.ndarray:
    """(h, w) bool: the pixels whose centres lie within ``r`` of the segment p0-p1 (y, x in pixels)."""
    out = np.zeros((h, w), dtype=bool)
    y0, y1 = int(max(0, math.floor(min(p0[0], p1[0]) - r))), int(min(h, math.ceil(max(p0[0], p1[0]) + r)))
    x0, x1 = int(max(0, math.floor(min(p0[1], p1[1]) - r))), int(min(w, math.ceil(max(p0[1], p1[1]) + r)))
    if y0 >= y1 or x0 >= x1:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5  # pixel centres
    dy, dx = p1[0] - p0[0], p1[1] - p0[1]
    t = ((yy - p0[0]) * dy + (xx - p0[1]) * dx) / max(dy * dy + dx * dx, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    dist2 = (yy - p0[0] - t * dy) ** 2 + (xx - p0[1] - t * dx) ** 2
    out[y0:y1, x0:x1] = dist2 <= r * r
    return out


class InpaintDataset(ExtendedDataset):
    """Add ``"inpaint_mask"`` (1, S, S) in {0, 1}, 1 = repaint, to each item of ``base``
    (:class:`~ldmctl.data.extended.ExtendedDataset`). The mask of item ``i`` in epoch ``e`` is
    ``draw_mask(..., mask_rng(seed, e, i))``: new masks every epoch, the same for the same key.
    """

    def __init__(self, base: Dataset, cfg: InpaintConfig, *, seed: int = 0) -> None:
        check_masks(cfg)
        self.cfg, self.seed = cfg, seed

        def mask(item: dict[str, Any], epoch: int, index: int) -> Tensor:
            h, w = item["image"].shape[-2:]
            return draw_mask(h, w, cfg, mask_rng(seed, epoch, index))

        kinds = " and ".join(f"{k}es" if k == "box" else f"{k}s" for k in cfg.kinds)
        super().__init__(
            base, MASK_KEY, mask, f" + random {kinds} masks covering {cfg.min_coverage:.0%}-{cfg.max_coverage:.0%}"
        )


__all__ = ["KINDS", "InpaintDataset", "batch_masks", "check_masks", "draw_mask", "mask_rng"]
