"""Per-item data loading time of an image folder of phone-size JPEGs (docs/data.md).

    python bench/data_speed.py [FOLDER]

Without FOLDER it writes eight 4000x3000 JPEGs (quality 90) made by upscaling four scikit-image
photos and adding mild noise, to a temporary folder. Prints ms per item for ``data.size = 256``
with and without ``data.resize``, with the cache off (``cache_mb = 0``) and on: the first pass
over the folder and later passes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ldmctl.config import DataConfig
from ldmctl.data.images import ImageFolderDataset


def make_folder(root: Path) -> Path:
    from skimage import data

    photos = [data.chelsea(), data.rocket(), data.coffee(), data.astronaut()]
    rng = np.random.default_rng(0)
    for i in range(8):
        img = Image.fromarray(photos[i % 4]).resize((4000, 3000), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, size=(3000, 4000, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / f"p{i}.jpg", quality=90)
    return root


def time_items(folder: Path, *, resize: bool, cache_mb: int) -> tuple[float, float]:
    ds = ImageFolderDataset(folder, DataConfig(size=256, resize=resize, cache_mb=cache_mb))
    n = len(ds)
    t0 = time.perf_counter()
    for i in range(1, n + 1):  # item 0 was decoded when the data set opened
        ds[i % n]
    t1 = time.perf_counter()
    for i in range(4 * n):
        ds[i % n]
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e3, (t2 - t1) / (4 * n) * 1e3


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(sys.argv[1]) if len(sys.argv) > 1 else make_folder(Path(tmp))
        for resize in (True, False):
            for cache_mb in (0, 1024):
                first, later = time_items(folder, resize=resize, cache_mb=cache_mb)
                print(
                    f"resize={resize!s:5} cache_mb={cache_mb:4}: first pass {first:6.1f} ms/item, "
                    f"later passes {later:6.1f} ms/item",
                    flush=True,
                )


if __name__ == "__main__":
    main()
