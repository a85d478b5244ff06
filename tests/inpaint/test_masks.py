"""Random inpainting masks: deterministic per (seed, epoch, index), inside the coverage range, the
shapes of their kind; the data set wrapper that adds them."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

from ldmctl.config import InpaintConfig
from ldmctl.errors import ConfigError
from ldmctl.inpaint.masks import InpaintDataset, batch_masks, check_masks, draw_mask, mask_rng
from ldmctl.inpaint.task import MASK_KEY


@pytest.mark.parametrize("kind", ["box", "stroke"])
@pytest.mark.parametrize(
    "size,lo,hi", [((16, 16), 0.1, 0.5), ((64, 64), 0.1, 0.5), ((24, 40), 0.3, 0.3), ((32, 32), 0.6, 0.95)]
)
def test_masks_are_binary_and_cover_the_configured_range(kind, size, lo, hi):
    cfg = InpaintConfig(min_coverage=lo, max_coverage=hi, kinds=(kind,))
    h, w = size
    n = h * w
    covers = []
    for i in range(40):
        m = draw_mask(h, w, cfg, mask_rng(0, 0, i))
        assert m.shape == (1, h, w) and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        px = int(m.sum())
        assert math.ceil(lo * n - 1e-9) <= px <= max(math.ceil(lo * n - 1e-9), math.floor(hi * n + 1e-9)), (i, px)
        covers.append(px / n)
    if hi - lo > 0.2:  # the coverage is drawn from the range, not stuck at one end of it
        assert max(covers) - min(covers) > (hi - lo) / 3


def test_masks_are_a_pure_function_of_seed_epoch_and_index():
    cfg = InpaintConfig()
    a = batch_masks([0, 1, 2, 3], 0, (32, 32), cfg, seed=7)
    assert torch.equal(a, batch_masks([0, 1, 2, 3], 0, (32, 32), cfg, seed=7))
    assert a.shape == (4, 1, 32, 32)
    assert not torch.equal(a, batch_masks([0, 1, 2, 3], 1, (32, 32), cfg, seed=7))  # new masks each epoch
    assert not torch.equal(a, batch_masks([0, 1, 2, 3], 0, (32, 32), cfg, seed=8))
    assert not torch.equal(a[0], a[1])
    assert torch.equal(a[2], draw_mask(32, 32, cfg, mask_rng(7, 0, 2)))


def _rows_and_cols(m: torch.Tensor) -> tuple[int, int]:
    return int(m[0].any(1).sum()), int(m[0].any(0).sum())


def test_box_masks_are_rectangles_and_stroke_masks_are_not():
    boxes, strokes = InpaintConfig(kinds=("box",)), InpaintConfig(kinds=("stroke",))
    filled = []
    for i in range(30):
        m = draw_mask(64, 64, boxes, mask_rng(0, 0, i))
        rows, cols = _rows_and_cols(m)
        filled.append(float(m.sum()) / (rows * cols))  # a single rectangle fills its bounding box
        s = draw_mask(64, 64, strokes, mask_rng(0, 0, i))
        assert float(s.sum()) / math.prod(_rows_and_cols(s)) < 1.0  # strokes never fill their bounding box
    assert sum(f == 1.0 for f in filled) >= 10  # most box masks are one rectangle (more when it hits the border)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"min_coverage": 0.6, "max_coverage": 0.5}, "min_coverage"),
        ({"min_coverage": -0.1}, "min_coverage"),
        ({"max_coverage": 1.5}, "max_coverage"),
        ({"kinds": ()}, "kinds"),
        ({"kinds": ("circle",)}, "kinds"),
    ],
)
def test_bad_mask_options_are_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match):
        check_masks(InpaintConfig(**fields))


class _Images(Dataset):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((3, 16, 16), i / 5.0), "caption": f"item {i}"}

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def summary(self) -> str:
        return "5 test images"


def test_inpaint_dataset_adds_a_mask_and_keeps_the_item():
    base = _Images()
    ds = InpaintDataset(base, InpaintConfig(), seed=3)
    item = ds[2]
    assert set(item) == {"image", "caption", MASK_KEY} and item["caption"] == "item 2"
    assert item[MASK_KEY].shape == (1, 16, 16) and torch.equal(item["image"], base[2]["image"])
    assert torch.equal(item[MASK_KEY], ds[2][MASK_KEY])  # deterministic for (seed, epoch, index)
    assert torch.equal(item[MASK_KEY], batch_masks([2], 0, (16, 16), InpaintConfig(), seed=3)[0])
    ds.set_epoch(1)
    assert base.epochs == [1] and not torch.equal(item[MASK_KEY], ds[2][MASK_KEY])
    assert len(ds) == 5 and ds.skipped == [] and "masks covering 10%-50%" in ds.summary()
    with pytest.raises(ConfigError, match="kinds"):
        InpaintDataset(base, InpaintConfig(kinds=()))
