"""An automatic checker for ``builtin:shapes`` prompts: does an image show what its caption says?

The image is segmented by colour: every pixel far enough from white is assigned to the nearest
palette colour; each colour's pixels are split into 4-connected components; tiny components are
noise. A component's shape comes from how much of its bounding box it fills (square ~1.0,
circle ~pi/4, triangle ~0.5) and its position from its centroid. A caption matches when every
object it names (colour and shape) is found and, for two objects, their centroids stand in the
named relation ("to the left of": the first centroid's x is smaller, etc.).

``shapes=`` widens the shape vocabulary for new-concept checks (docs/lora.md): with ``"ring"`` in
it, a component that encloses a hole (background pixels its outline cuts off from the box border,
at least a tenth of its own area) is a ring, whatever its fill; with ``"bar"``, a component whose
bounding box is at least twice as long as it is wide is a bar. The default, builtin:shapes' three
shapes, looks for neither, so the base scores do not change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ldmctl.data.shapes import COLOURS, RELATIONS, SHAPE_NAMES

EXTRA_SHAPES = ("ring", "bar")  # shapes the checker can recognise beyond builtin:shapes' own (opt-in)

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # (6, 3)
_NAMES = list(COLOURS)
_CAPTION = re.compile(r"^a (\w+) (\w+)(?: (to the left of|to the right of|above|below) a (\w+) (\w+))?$")


@dataclass(frozen=True)
class Found:
    colour: str
    shape: str
    cx: float
    cy: float
    area: int


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (y, x) pixel coordinates."""
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        comps.append(np.array(pixels))
    return comps


def _hole_area(pixels: np.ndarray) -> int:
    """Pixels inside the component's bounding box that it encloses (not reachable from the box's
    border through pixels outside the component)."""
    ys, xs = pixels[:, 0] - pixels[:, 0].min(), pixels[:, 1] - pixels[:, 1].min()
    inside = np.zeros((ys.max() + 3, xs.max() + 3), dtype=bool)  # a one-pixel frame of background
    inside[ys + 1, xs + 1] = True
    reached = next(c for c in _components(~inside) if ((c[:, 0] == 0) & (c[:, 1] == 0)).any())  # the frame's
    return int((~inside).sum() - len(reached))


def _shape_of(pixels: np.ndarray, shapes: tuple[str, ...] = SHAPE_NAMES) -> str:
    if "ring" in shapes and _hole_area(pixels) >= max(2, 0.1 * len(pixels)):
        return "ring"
    ys, xs = pixels[:, 0], pixels[:, 1]
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    if "bar" in shapes and max(height, width) >= 2 * min(height, width):
        return "bar"
    fill = len(pixels) / (height * width)
    if fill > 0.9:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"


def find_objects(
    image: Tensor, *, min_area_frac: float = 0.004, white_dist: float = 90.0, shapes: tuple[str, ...] = SHAPE_NAMES
) -> list[Found]:
    """Objects in one image (3, H, W) in [-1, 1], largest first."""
    rgb = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    h, w, _ = rgb.shape
    ink = np.linalg.norm(rgb - 255.0, axis=-1) > white_dist
    nearest = np.argmin(((rgb[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1), axis=-1)  # (H, W)
    found = []
    for k, name in enumerate(_NAMES):
        for pixels in _components(ink & (nearest == k)):
            if len(pixels) < max(4, min_area_frac * h * w):
                continue
            found.append(
                Found(
                    name, _shape_of(pixels, shapes), float(pixels[:, 1].mean()), float(pixels[:, 0].mean()), len(pixels)
                )
            )
    return sorted(found, key=lambda f: -f.area)


def parse_caption(caption: str, shapes: tuple[str, ...] = SHAPE_NAMES) -> tuple[list[tuple[str, str]], str | None]:
    """[(colour, shape), ...] and the relation (or None) of a builtin:shapes caption."""
    m = _CAPTION.match(caption.strip())
    if not m or m.group(1) not in COLOURS or m.group(2) not in shapes:
        raise ValueError(f"not a builtin:shapes caption: {caption!r}")
    objects = [(m.group(1), m.group(2))]
    if m.group(3):
        if m.group(4) not in COLOURS or m.group(5) not in shapes or m.group(3) not in RELATIONS:
            raise ValueError(f"not a builtin:shapes caption: {caption!r}")
        objects.append((m.group(4), m.group(5)))
    return objects, m.group(3)


def _relation_holds(a: Found, b: Found, relation: str) -> bool:
    return {"to the left of": a.cx < b.cx, "to the right of": a.cx > b.cx, "above": a.cy < b.cy, "below": a.cy > b.cy}[
        relation
    ]


def check(image: Tensor, caption: str, *, shapes: tuple[str, ...] = SHAPE_NAMES) -> dict[str, bool]:
    """Per-aspect verdicts for one image: ``objects`` (every named colour+shape present),
    ``relation`` (objects present and placed as named; True for one-object captions), ``match``.
    ``shapes``: the shape names captions may use (add :data:`EXTRA_SHAPES` to look for them)."""
    wanted, relation = parse_caption(caption, shapes)
    found = find_objects(image, shapes=shapes)
    picks = []
    for colour, shape in wanted:
        hit = next((f for f in found if f.colour == colour and f.shape == shape and f not in picks), None)
        picks.append(hit)
    objects_ok = all(p is not None for p in picks)
    relation_ok = objects_ok and (relation is None or _relation_holds(picks[0], picks[1], relation))
    return {"objects": objects_ok, "relation": relation_ok, "match": relation_ok}


def score(images: Tensor, captions: list[str], *, shapes: tuple[str, ...] = SHAPE_NAMES) -> dict[str, float]:
    """Match rates over a batch: overall, and separately for one- and two-object captions."""
    verdicts = [check(img, cap, shapes=shapes) for img, cap in zip(images, captions, strict=True)]
    two = [v for v, c in zip(verdicts, captions, strict=True) if parse_caption(c, shapes)[1] is not None]
    one = [v for v, c in zip(verdicts, captions, strict=True) if parse_caption(c, shapes)[1] is None]

    def rate(vs: list[dict[str, bool]], key: str) -> float:
        return float(np.mean([v[key] for v in vs])) if vs else float("nan")

    return {
        "match": rate(verdicts, "match"),
        "two_object_match": rate(two, "match"),
        "two_object_objects": rate(two, "objects"),
        "one_object_match": rate(one, "match"),
        "n": len(verdicts),
        "n_two": len(two),
    }


__all__ = ["EXTRA_SHAPES", "Found", "check", "find_objects", "parse_caption", "score"]
