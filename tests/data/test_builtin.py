"""Built-in data sets: registry errors, synthetic determinism, bundled photos and the holdout."""

from __future__ import annotations

import sys

import pytest
import torch

from ldmctl.config import DataConfig
from ldmctl.data import BUILTINS, HOLDOUT, TRAIN_PHOTOS, holdout_photos, open_dataset
from ldmctl.data.builtin import PHOTOS_EPOCH_LENGTH, load_photo
from ldmctl.data.synthetic import SHAPES
from ldmctl.errors import ConfigError, DataError


def _stack(ds: object, n: int) -> torch.Tensor:
    return torch.stack([ds[i]["image"] for i in range(n)])  # type: ignore[index]


def test_unknown_builtin_lists_the_choices() -> None:
    with pytest.raises(DataError) as info:
        open_dataset(DataConfig(source="builtin:nope"))
    message = str(info.value)
    assert "builtin:nope" in message
    assert all(f"builtin:{name}" in message for name in BUILTINS)


def test_bare_builtin_name_hints_at_the_prefix(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    with pytest.raises(DataError) as info:
        open_dataset(DataConfig(source="synthetic"))
    assert info.value.hint == "for the built-in data set write builtin:synthetic"


def test_non_positive_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.size"):
        open_dataset(DataConfig(source="builtin:synthetic", size=0))


# --------------------------------------------------------------------------------------------
# synthetic


@pytest.mark.parametrize("size", [16, 37])
def test_synthetic_items(size: int) -> None:
    ds = open_dataset(DataConfig(source="builtin:synthetic", size=size), seed=3)
    assert ds.class_names == list(SHAPES) and ds.skipped == []
    for i in range(20):
        item = ds[i]
        assert item["image"].shape == (3, size, size)
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert 0 <= item["label"] < len(SHAPES)
        assert SHAPES[item["label"]] in item["caption"]
        assert item["path"] == f"synthetic:{i}"


def test_synthetic_is_deterministic_per_seed_and_index() -> None:
    cfg = DataConfig(source="builtin:synthetic", size=16)
    a, b = open_dataset(cfg, seed=0), open_dataset(cfg, seed=0)
    assert torch.equal(_stack(a, 8), _stack(b, 8))
    assert [a[i]["caption"] for i in range(8)] == [b[i]["caption"] for i in range(8)]
    assert torch.equal(a[5]["image"], b[5]["image"])  # random access, any order
    assert not torch.equal(_stack(a, 8), _stack(open_dataset(cfg, seed=1), 8))
    assert len({a[i]["label"] for i in range(64)}) == len(SHAPES)


# --------------------------------------------------------------------------------------------
# bundled photos


@pytest.fixture(scope="module")
def photo_packages() -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")


def test_holdout_is_disjoint_from_train() -> None:
    train = {(p.package, p.source) for p in TRAIN_PHOTOS}
    holdout = {(p.package, p.source) for p in HOLDOUT}
    assert len(train) == len(TRAIN_PHOTOS) and len(holdout) == len(HOLDOUT) == 3
    assert not train & holdout
    assert not {p.name for p in TRAIN_PHOTOS} & {p.name for p in HOLDOUT}


def test_holdout_photos_are_full_size_rgb(photo_packages: None) -> None:
    photos = holdout_photos()
    assert [name for name, _ in photos] == [p.name for p in HOLDOUT]
    for (_, img), photo in zip(photos, HOLDOUT, strict=True):
        assert img.mode == "RGB" and img.size == photo.size and min(img.size) >= 256


def test_train_photo_sizes_match_the_documented_table(photo_packages: None) -> None:
    for photo in TRAIN_PHOTOS:
        img = load_photo(photo)
        assert img.mode == "RGB" and img.size == photo.size, photo.name


def test_builtin_photos_yields_deterministic_random_crops(photo_packages: None) -> None:
    cfg = DataConfig(source="builtin:photos", size=32)
    ds = open_dataset(cfg, seed=0)
    assert len(ds) == PHOTOS_EPOCH_LENGTH and ds.skipped == []
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["label"] == -1 and item["caption"]
    assert item["path"] == TRAIN_PHOTOS[0].path
    n = 2 * len(TRAIN_PHOTOS)
    first = _stack(ds, n)
    assert first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, _stack(open_dataset(cfg, seed=0), n))
    ds.set_epoch(1)
    assert not torch.equal(first, _stack(ds, n))
    assert not torch.equal(first, _stack(open_dataset(cfg, seed=1), n))


def test_builtin_photos_upscales_and_resizes(photo_packages: None) -> None:
    big = open_dataset(DataConfig(source="builtin:photos", size=320, crop="center"))
    assert big[1]["image"].shape == (3, 320, 320)  # chelsea is 451x300: upscaled first
    whole = open_dataset(DataConfig(source="builtin:photos", size=24, resize=True))
    assert whole[len(TRAIN_PHOTOS) - 1]["image"].shape == (3, 24, 24)


def test_photos_holdout_dataset_has_one_item_per_photo(photo_packages: None) -> None:
    cfg = DataConfig(source="builtin:photos-holdout", size=256, crop="center", flip=False)
    ds = open_dataset(cfg)
    assert len(ds) == len(HOLDOUT)
    assert [ds[i]["path"] for i in range(len(ds))] == [p.path for p in HOLDOUT]
    assert ds[0]["image"].shape == (3, 256, 256)


def test_missing_source_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    load_photo.cache_clear()
    try:
        with pytest.raises(DataError, match="skimage") as info:
            open_dataset(DataConfig(source="builtin:photos"))
        assert info.value.hint == "pip install scikit-image"
    finally:
        load_photo.cache_clear()
