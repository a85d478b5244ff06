"""Extra metadata.jsonl fields become item keys (what a conditioner reading a new key trains on)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from ldmctl.config import DataConfig
from ldmctl.data import open_dataset
from ldmctl.errors import DataError


def _folder(root: Path, rows: list[dict], n: int = 3) -> Path:
    for i in range(n):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / f"{i}.png")
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def _open(root: Path):
    return open_dataset(DataConfig(source=str(root), size=8, crop="center", flip=False))


def test_extra_fields_are_item_keys_and_collate(tmp_path):
    rows = [
        {"file_name": f"{i}.png", "text": f"image {i}", "brightness": b, "palette": p, "night": i == 0}
        for i, (b, p) in enumerate([(0.5, "warm"), (1, "cool"), (0.25, "grey")])
    ]
    ds = _open(_folder(tmp_path, rows))
    assert ds.fields == ("brightness", "palette", "night")
    items = sorted((ds[i] for i in range(3)), key=lambda it: it["path"])
    assert [it["brightness"] for it in items] == [0.5, 1.0, 0.25] and isinstance(items[1]["brightness"], float)
    assert [it["palette"] for it in items] == ["warm", "cool", "grey"] and items[0]["caption"] == "image 0"
    batch = default_collate(items)
    assert batch["brightness"].dtype == torch.float64 and batch["palette"] == ["warm", "cool", "grey"]
    assert batch["night"].tolist() == [True, False, False]


@pytest.mark.parametrize(
    "rows,why",
    [
        ([{"file_name": "0.png", "x": 1}, {"file_name": "1.png", "x": 2}], "missing (or null) for 1 of 3 images"),
        ([{"file_name": f"{i}.png", "x": v} for i, v in enumerate([1, "a", 2])], "all be strings or all numbers"),
        ([{"file_name": f"{i}.png", "x": [i]} for i in range(3)], "all be strings or all numbers"),
        ([{"file_name": f"{i}.png", "label": 7} for i in range(3)], "every item already has a 'label'"),
    ],
)
def test_unusable_fields_are_left_out_with_a_warning(tmp_path, caplog, rows, why):
    with caplog.at_level(logging.WARNING, logger="ldmctl.data.metadata"):
        ds = _open(_folder(tmp_path, rows))
    assert ds.fields == () and "x" not in ds[0] and ds[0]["label"] == -1
    assert why in caplog.text and "left out of the items" in caplog.text


def test_a_joined_source_keeps_only_the_fields_every_part_has(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _folder(a, [{"file_name": f"{i}.png", "x": i, "y": "p"} for i in range(3)])
    _folder(b, [{"file_name": f"{i}.png", "x": i * 2} for i in range(3)])
    ds = _open(f"{a},{b}")
    assert ds.fields == ("x",) and all(set(ds[i]) == {"image", "label", "caption", "path", "x"} for i in range(6))


def test_a_non_unicode_extra_value_is_a_data_error(tmp_path):
    (tmp_path / "metadata.jsonl").write_bytes(b'{"file_name": "0.png", "mood": "\\ud800"}\n')
    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    with pytest.raises(DataError, match="'mood' value is not valid Unicode"):
        _open(tmp_path)
