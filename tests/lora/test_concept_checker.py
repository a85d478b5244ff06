"""The new-concept shapes of the LoRA worked case (docs/lora.md): the shapes checker finds bars and
rings only when asked to (``shapes=``), and leaves builtin:shapes scoring as it was otherwise."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from ldmctl.config import DataConfig
from ldmctl.data.images import pil_to_tensor
from ldmctl.data.shapes import COLOURS, SHAPE_NAMES, ShapesDataset
from ldmctl.eval.shapes_check import EXTRA_SHAPES, check, find_objects, parse_caption, score

ALL = SHAPE_NAMES + EXTRA_SHAPES


def _image(draw_fn) -> torch.Tensor:
    img = Image.new("RGB", (32, 32), (255, 255, 255))
    draw_fn(ImageDraw.Draw(img))
    return pil_to_tensor(img)


def test_bar_and_ring_are_found_only_when_asked_for():
    bar = _image(lambda d: d.rectangle((6, 14, 24, 19), fill=COLOURS["red"]))
    ring = _image(
        lambda d: (d.ellipse((8, 8, 20, 20), fill=COLOURS["blue"]), d.ellipse((11, 11, 17, 17), fill=(255, 255, 255)))
    )
    assert find_objects(bar, shapes=ALL)[0].shape == "bar"
    assert find_objects(ring, shapes=ALL)[0].shape == "ring"
    assert find_objects(bar)[0].shape in SHAPE_NAMES
    assert find_objects(ring)[0].shape in SHAPE_NAMES
    assert check(bar, "a red bar", shapes=ALL)["match"]
    assert not check(bar, "a blue bar", shapes=ALL)["match"]
    assert check(ring, "a blue ring", shapes=ALL)["match"]
    with pytest.raises(ValueError):
        parse_caption("a red bar")


def test_extra_shapes_do_not_claim_builtin_shapes():
    ds = ShapesDataset(DataConfig(source="builtin:shapes", size=32), seed=5, length=120)
    items = [ds[i] for i in range(120)]
    images, captions = torch.stack([it["image"] for it in items]), [it["caption"] for it in items]
    assert score(images, captions, shapes=ALL)["match"] == score(images, captions)["match"]
