"""builtin:digits / fashion-mnist from generated stand-ins of the Debian files (tests never need them)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from ldmctl.config import DataConfig
from ldmctl.data import labelled, open_dataset
from ldmctl.errors import DataError


@pytest.fixture
def fake_digits(tmp_path, monkeypatch):
    """A 2000x1000 sheet whose tile brightness encodes (class, index within class)."""
    sheet = np.zeros((1000, 2000), dtype=np.uint8)
    for row in range(50):
        for col in range(100):
            within = (row % 5) * 100 + col
            sheet[row * 20 : (row + 1) * 20, col * 20 : (col + 1) * 20] = 255 if within >= 450 else 10 * (row // 5)
    path = tmp_path / "digits.png"
    Image.fromarray(sheet).save(path)
    monkeypatch.setattr(labelled, "DIGITS_PNG", path)
    labelled.digits_tiles.cache_clear()
    yield path
    labelled.digits_tiles.cache_clear()


def test_digits_split_labels_and_items(fake_digits):
    train = open_dataset(DataConfig(source="builtin:digits", size=32))
    hold = open_dataset(DataConfig(source="builtin:digits-holdout", size=32))
    assert len(train) == 4500 and len(hold) == 500
    assert np.bincount(hold.labels).tolist() == [50] * 10
    assert (hold.tiles == 255).all() and (train.tiles < 255).all()  # holdout = tiles 450..499 only
    item = train[460]
    assert item["image"].shape == (3, 32, 32) and item["label"] == int(train.labels[460])
    assert item["caption"] == f"a handwritten digit {labelled.DIGIT_NAMES[item['label']]}"
    assert float(item["image"].mean()) == pytest.approx(10 * item["label"] / 127.5 - 1, abs=1e-5)


def test_missing_debian_packages_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(labelled, "DIGITS_PNG", tmp_path / "nope.png")
    monkeypatch.setattr(labelled, "FASHION_DIR", tmp_path)
    labelled.digits_tiles.cache_clear()
    labelled.fashion_mnist.cache_clear()
    with pytest.raises(DataError) as err:
        open_dataset(DataConfig(source="builtin:digits"))
    assert err.value.hint == "apt-get install opencv-doc"
    with pytest.raises(DataError) as err:
        open_dataset(DataConfig(source="builtin:fashion"))
    assert err.value.hint == "apt-get install dataset-fashion-mnist"
    labelled.digits_tiles.cache_clear()
    labelled.fashion_mnist.cache_clear()


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path, monkeypatch):
    images = np.arange(5 * 28 * 28, dtype=np.int64).reshape(5, 28, 28) % 256
    labels = np.array([0, 9, 3, 3, 1])
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(labelled, "FASHION_DIR", tmp_path)
    labelled.fashion_mnist.cache_clear()
    ds = open_dataset(DataConfig(source="builtin:fashion-test", size=28))
    assert len(ds) == 5 and ds[1]["label"] == 9 and ds[1]["caption"] == "a photo of an ankle boot"
    np.testing.assert_allclose((ds[2]["image"][0].numpy() + 1) * 127.5, images[2], atol=1e-3)
    labelled.fashion_mnist.cache_clear()
