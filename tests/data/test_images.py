"""Image folders: modes, EXIF, scanning, labels, captions, bad files, crops, determinism."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmctl.config import DataConfig
from ldmctl.data import ImageFolderDataset, iter_image_files, load_image, open_dataset, pil_to_tensor, tensor_to_pil
from ldmctl.data.images import resize_short_side
from ldmctl.errors import ConfigError, DataError


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    """Return an RGB image of random pixels (incompressible, so truncation hurts)."""
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB")


def _save(path: Path, img: Image.Image, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _cfg(root: Path, **kwargs: object) -> DataConfig:
    return DataConfig(source=str(root), **{"size": 8, **kwargs})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# modes and EXIF


def test_grayscale_and_bilevel_become_rgb(tmp_path: Path) -> None:
    gray = load_image(_save(tmp_path / "l.png", Image.new("L", (3, 2), 100)))
    assert gray.mode == "RGB" and gray.size == (3, 2) and gray.getpixel((0, 0)) == (100, 100, 100)
    bilevel = load_image(_save(tmp_path / "b.png", Image.new("1", (3, 2), 1)))
    assert bilevel.getpixel((1, 1)) == (255, 255, 255)


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((1, 0), 1)
    plain = load_image(_save(tmp_path / "p.png", img))
    assert [plain.getpixel((x, 0)) for x in range(2)] == [(255, 0, 0), (0, 0, 255)]
    see_through = load_image(_save(tmp_path / "pt.png", img, transparency=0))
    assert [see_through.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (0, 0, 255)]


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    img = load_image(_save(tmp_path / "c.tiff", Image.new("CMYK", (2, 2), (0, 255, 0, 0))))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 255)  # magenta ink


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
    img.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue stays blue
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    out = load_image(_save(tmp_path / "a.png", img))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((2, 0)))


def test_la_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (0, 0))
    img.putpixel((1, 0), (50, 255))
    out = load_image(_save(tmp_path / "la.png", img))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (50, 50, 50)


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_16_bit_becomes_8_bit(tmp_path: Path, suffix: str) -> None:
    arr = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = _save(tmp_path / f"g16{suffix}", Image.fromarray(arr))
    assert Image.open(path).mode in ("I;16", "I")
    out = load_image(path)
    assert out.mode == "RGB" and [out.getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]


def test_32_bit_integer_mode_i(tmp_path: Path) -> None:
    img = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    out = load_image(_save(tmp_path / "i.tiff", img))
    assert [out.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    path = _save(tmp_path / "rot.jpg", Image.new("RGB", (40, 20), "red"), exif=exif)
    assert Image.open(path).size == (40, 20)
    assert load_image(path).size == (20, 40)


def test_tensor_round_trip() -> None:
    img = _noise(5, 4)
    x = pil_to_tensor(img)
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(x)), np.asarray(img))
    clamped = tensor_to_pil(torch.full((3, 1, 1), 7.0))
    assert clamped.getpixel((0, 0)) == (255, 255, 255)


# --------------------------------------------------------------------------------------------
# scanning, labels, captions


def test_recursive_scan_by_suffix(tmp_path: Path) -> None:
    names = ["a.png", "b.JPG", "c.jpeg", "d.webp", "e.bmp", "f.tif", "sub/deep/g.TIFF"]
    for name in names:
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(name.rsplit(".", 1)[1].lower())
        _save(tmp_path / name, Image.new("RGB", (4, 4)), format=fmt)
    (tmp_path / "notes.txt").write_text("hi")
    _save(tmp_path / "anim.gif", Image.new("RGB", (4, 4)))
    _save(tmp_path / ".hidden" / "h.png", Image.new("RGB", (4, 4)))
    _save(tmp_path / ".dot.png", Image.new("RGB", (4, 4)))
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)]
    assert found == names


def test_labels_from_sub_folders(tmp_path: Path) -> None:
    for name in ["root.png", "dog/1.png", "cat/x/2.png", "cat/3.png"]:
        _save(tmp_path / name, Image.new("RGB", (8, 8)))
    ds = open_dataset(_cfg(tmp_path))
    assert ds.class_names == ["cat", "dog"]
    by_path = {Path(ds[i]["path"]).relative_to(tmp_path).as_posix(): ds[i]["label"] for i in range(len(ds))}
    assert by_path == {"root.png": -1, "dog/1.png": 1, "cat/x/2.png": 0, "cat/3.png": 0}


def test_no_sub_folders_means_label_minus_one(tmp_path: Path) -> None:
    for name in ["a.png", "b.png"]:
        _save(tmp_path / name, Image.new("RGB", (8, 8)))
    ds = open_dataset(_cfg(tmp_path))
    assert ds.class_names == [] and [ds[i]["label"] for i in range(2)] == [-1, -1]


def test_captions_from_metadata_jsonl_and_txt(tmp_path: Path) -> None:
    for name in ["a.png", "b.png", "c.png", "sub/d.png", "sub/e.png"]:
        _save(tmp_path / name, Image.new("RGB", (8, 8)))
    rows = [{"file_name": "a.png", "text": "from root jsonl"}, {"file_name": "sub/d.png", "text": "deep"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "sub" / "metadata.jsonl").write_text(json.dumps({"file_name": "e.png", "text": "local"}))
    (tmp_path / "b.txt").write_text("  from a txt file\n")
    (tmp_path / "a.txt").write_text("metadata wins over this")
    ds = open_dataset(_cfg(tmp_path))
    captions = {Path(ds[i]["path"]).name: ds[i]["caption"] for i in range(len(ds))}
    assert captions == {
        "a.png": "from root jsonl",
        "b.png": "from a txt file",
        "c.png": "",
        "d.png": "deep",
        "e.png": "local",
    }


def test_bad_metadata_line_is_a_data_error(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", Image.new("RGB", (8, 8)))
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match=r"metadata.jsonl:2"):
        open_dataset(_cfg(tmp_path))


# --------------------------------------------------------------------------------------------
# bad files and bad folders


def _bad_folder(root: Path) -> dict[str, Path]:
    """Write two good images and one of each kind of bad file; return them by role."""
    files = {
        "good1": _save(root / "a_good.png", _noise(16, 16, 1)),
        "good2": _save(root / "z_good.png", _noise(16, 16, 2)),
    }
    files["empty"] = root / "b_empty.png"
    files["empty"].write_bytes(b"")
    files["text"] = root / "c_text.png"
    files["text"].write_text("this is not a png")
    for key, suffix, fmt in [("png", "png", "PNG"), ("jpeg", "jpg", "JPEG")]:
        full = _save(root / f"full.{suffix}.tmp", _noise(64, 64, 3), format=fmt)
        files[key] = root / f"d_trunc.{suffix}" if key == "png" else root / f"e_trunc.{suffix}"
        files[key].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        full.unlink()
    files["bomb"] = _save(root / "f_bomb.png", Image.new("RGB", (100, 100)))
    return files


def test_bad_files_are_skipped_counted_and_warned_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = _bad_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ldmctl.data"):
        ds = open_dataset(_cfg(tmp_path, max_pixels=5000))
        assert {Path(p).name for p, _ in ds.skipped} == {"b_empty.png", "c_text.png", "f_bomb.png"}
        assert len(ds) == 4  # two good + two truncated (found only when decoded)
        for _ in range(2):  # decode everything twice: still one warning per bad file
            items = [ds[i] for i in range(len(ds))]
    assert len(ds.skipped) == 5
    reasons = dict(ds.skipped)
    assert "empty" in reasons[str(files["empty"])]
    assert "max_pixels=5000" in reasons[str(files["bomb"])]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 5 and all(m.startswith("skipping ") for m in warned)
    # truncated entries are replaced by the next good image, deterministically
    paths = [Path(item["path"]).name for item in items]
    assert paths == ["a_good.png", "z_good.png", "z_good.png", "z_good.png"]
    assert "skipped 3 bad files" in open_dataset(_cfg(tmp_path, max_pixels=5000)).summary()


def test_folder_of_only_bad_files_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("nope")
    with pytest.raises(DataError, match="none of the 2 image files") as info:
        open_dataset(_cfg(tmp_path))
    assert info.value.hint and "empty" in info.value.hint


def test_empty_and_missing_folders_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files") as info:
        open_dataset(_cfg(tmp_path))
    assert ".png" in (info.value.hint or "")
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(_cfg(tmp_path / "missing"))
    with pytest.raises(DataError, match="is not a folder"):
        open_dataset(_cfg(tmp_path / "readme.txt"))


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    files = _bad_folder(tmp_path)
    for key, pattern in [
        ("empty", "empty"),
        ("text", "not an image"),
        ("png", "cannot be decoded"),
        ("jpeg", "cannot be decoded"),
        ("bomb", "max_pixels"),
    ]:
        with pytest.raises(DataError, match=pattern) as info:
            load_image(files[key], max_pixels=5000)
        assert str(files[key]) in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "nope.png")


# --------------------------------------------------------------------------------------------
# crops, flips, determinism


def _noise_folder(root: Path, n: int = 6) -> Path:
    for i in range(n):
        _save(root / f"{i}.png", _noise(24, 20, i))
    return root


def _images(ds: ImageFolderDataset) -> torch.Tensor:
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def test_random_crops_are_deterministic_per_seed_and_epoch(tmp_path: Path) -> None:
    cfg = _cfg(_noise_folder(tmp_path))
    a, b = ImageFolderDataset(tmp_path, cfg, seed=1), ImageFolderDataset(tmp_path, cfg, seed=1)
    first = _images(a)
    assert first.shape == (6, 3, 8, 8)
    assert torch.equal(first, _images(b))
    assert not torch.equal(first, _images(ImageFolderDataset(tmp_path, cfg, seed=2)))
    a.set_epoch(1)
    assert not torch.equal(first, _images(a))
    a.set_epoch(0)
    assert torch.equal(first, _images(a))


def test_center_crop_without_flip_is_exact(tmp_path: Path) -> None:
    img = _noise(24, 20)
    _save(tmp_path / "a.png", img)
    ds = open_dataset(_cfg(tmp_path, crop="center", flip=False))
    expected = pil_to_tensor(img.crop((8, 6, 16, 14)))
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert torch.equal(ds[0]["image"], expected)


def test_flip_mirrors_about_half_the_items(tmp_path: Path) -> None:
    img = _noise(24, 20)
    _save(tmp_path / "a.png", img)
    ds = open_dataset(_cfg(tmp_path, crop="center", flip=True))
    plain = pil_to_tensor(img.crop((8, 6, 16, 14)))
    seen = []
    for epoch in range(40):
        ds.set_epoch(epoch)
        x = ds[0]["image"]
        assert torch.equal(x, plain) or torch.equal(x, plain.flip(-1))
        seen.append(torch.equal(x, plain.flip(-1)))
    assert 5 < sum(seen) < 35


def test_resize_short_side_then_crop(tmp_path: Path) -> None:
    img = _noise(64, 32)
    _save(tmp_path / "a.png", img)
    ds = open_dataset(_cfg(tmp_path, size=16, crop="center", flip=False, resize=True))
    resized = img.resize((32, 16), Image.Resampling.BICUBIC)
    assert torch.equal(ds[0]["image"], pil_to_tensor(resized.crop((8, 0, 24, 16))))


def test_small_images_are_upscaled(tmp_path: Path) -> None:
    _save(tmp_path / "tiny.png", _noise(6, 4))
    ds = open_dataset(_cfg(tmp_path, size=16))
    assert ds[0]["image"].shape == (3, 16, 16)


def test_out_of_range_index_raises_index_error(tmp_path: Path) -> None:
    ds = open_dataset(_cfg(_noise_folder(tmp_path, 2)))
    with pytest.raises(IndexError):
        ds[2]


def test_channel_shuffle_permutes_colours_deterministically():
    import random as _random

    from PIL import Image as _Image

    from ldmctl.config import DataConfig as _DataConfig
    from ldmctl.data.images import crop_and_flip

    img = _Image.new("RGB", (8, 8), (10, 100, 200))
    cfg = _DataConfig(size=8, flip=False, channel_shuffle=True)
    seen = {crop_and_flip(img, cfg, _random.Random(i)).getpixel((0, 0)) for i in range(40)}
    assert len(seen) == 6 and all(sorted(p) == [10, 100, 200] for p in seen)
    a = crop_and_flip(img, cfg, _random.Random(3)).getpixel((0, 0))
    assert a == crop_and_flip(img, cfg, _random.Random(3)).getpixel((0, 0))


def _ramp(w: int, h: int) -> Image.Image:
    """Grey image whose value is the column index: a crop's slope tells its zoom."""
    arr = np.repeat(np.arange(w, dtype=np.uint8)[None, :, None], h, 0).repeat(3, 2)
    return Image.fromarray(arr, mode="RGB")


def test_min_scale_zooms_out_within_its_range():
    import random as _random

    from ldmctl.data.images import crop_and_flip

    img = _ramp(200, 120)
    plain = DataConfig(size=32, flip=False)
    zoom = DataConfig(size=32, flip=False, min_scale=0.5)
    slopes = []
    for i in range(60):
        out = np.asarray(crop_and_flip(img, zoom, _random.Random(i)), dtype=float)
        assert out.shape == (32, 32, 3)
        slopes.append((out[16, 28, 0] - out[16, 3, 0]) / 25)
        base = np.asarray(crop_and_flip(img, plain, _random.Random(i)), dtype=float)
        assert (base[16, 28, 0] - base[16, 3, 0]) / 25 == 1.0
    assert min(slopes) >= 0.95 and max(slopes) <= 2.05  # s in [0.5, 1]: 1/s source px per px
    assert max(slopes) > 1.7 and min(slopes) < 1.2  # the whole range is used
    a = crop_and_flip(img, zoom, _random.Random(7))
    assert a.tobytes() == crop_and_flip(img, zoom, _random.Random(7)).tobytes()


def test_min_scale_never_asks_for_more_than_the_image():
    import random as _random

    from ldmctl.data.images import crop_and_flip

    img = _ramp(40, 36)  # a 32 px crop can zoom out to at most 36 px of source
    cfg = DataConfig(size=32, min_scale=0.1)
    for i in range(20):
        out = np.asarray(crop_and_flip(img, cfg, _random.Random(i)), dtype=float)
        assert out.shape == (32, 32, 3)
        assert abs(out[16, 31, 0] - out[16, 0, 0]) <= 36


def test_rot90_with_flip_gives_all_eight_symmetries():
    import random as _random

    from ldmctl.data.images import crop_and_flip

    img = Image.fromarray(np.array([[[0] * 3, [1] * 3], [[2] * 3, [3] * 3]], dtype=np.uint8), mode="RGB")
    seen = {crop_and_flip(img, DataConfig(size=2, rot90=True), _random.Random(i)).tobytes() for i in range(200)}
    assert len(seen) == 8
    seen = {crop_and_flip(img, DataConfig(size=2), _random.Random(i)).tobytes() for i in range(200)}
    assert len(seen) == 2  # flip only


def test_min_scale_out_of_range_is_a_config_error():
    from ldmctl.errors import ConfigError

    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="min_scale"):
            DataConfig(min_scale=bad)


def _smooth(w: int, h: int) -> Image.Image:
    """A smooth colour ramp (JPEG's DCT scaling keeps such content nearly exactly)."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def _psnr(a: Image.Image, b: Image.Image) -> float:
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / max((d**2).mean(), 1e-12)))


def test_min_side_decodes_a_large_jpeg_at_a_reduced_scale(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the reduced decode must still be turned upright
    path = _save(tmp_path / "big.jpg", _smooth(800, 600), quality=95, exif=exif)
    full = load_image(path)
    small = load_image(path, min_side=140)  # 600 / 140 > 4: libjpeg decodes at 1/4 scale
    assert full.size == (600, 800) and small.size == (150, 200)
    assert _psnr(resize_short_side(full, 140), resize_short_side(small, 140)) > 40
    assert load_image(path, min_side=400).size == (600, 800)  # no scale keeps 400: full decode
    png = _save(tmp_path / "big.png", _smooth(800, 600))
    assert load_image(png, min_side=140).size == (800, 600)  # only JPEG has DCT scaling


def test_decoded_images_are_cached_within_the_budget(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / f"{i}.png", _noise(64, 48, seed=i))
    cached = ImageFolderDataset(tmp_path, _cfg(tmp_path, size=16))  # 1024 MB: all three fit
    off = ImageFolderDataset(tmp_path, _cfg(tmp_path, size=16, cache_mb=0))
    first = [cached[i]["image"] for i in range(3)]
    assert cached._cache_bytes == 3 * 64 * 48 * 3 and not off._cache
    for i in range(3):
        (tmp_path / f"{i}.png").unlink()  # later items come from memory, crops unchanged
    cached.set_epoch(0)
    for i in range(3):
        assert torch.equal(cached[i]["image"], first[i])
    with pytest.raises(ConfigError, match="cache_mb"):
        DataConfig(cache_mb=-1)


def test_the_cache_holds_the_resized_image_and_stops_at_its_budget(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / f"{i}.png", _noise(80, 40, seed=i))
    ds = ImageFolderDataset(tmp_path, _cfg(tmp_path, size=20, resize=True, cache_mb=1))
    for i in range(3):
        ds[i]
    assert ds._cache_bytes == 3 * 40 * 20 * 3  # resized to a 20 px short side before caching
    big = tmp_path / "big"
    for i in range(3):
        _save(big / f"{i}.png", _smooth(600, 600))  # 1.03 MiB each decoded
    ds = ImageFolderDataset(big, _cfg(big, size=16, cache_mb=2))
    for i in range(3):
        ds[i]
    assert sorted(ds._cache) == [0]  # the first image fits in 2 MiB, a second would not
