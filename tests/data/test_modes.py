"""Image modes for super-resolution: split -> merge round trips, alpha, padding (generated images)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ldmctl.data.modes import crop_to, merge_image, pad_to_multiple, split_image, upscale_alpha
from ldmctl.errors import ConfigError, DataError

H, W = 9, 14


def _u8(channels: int, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (H, W, channels), dtype=np.uint8)
    return arr[..., 0] if channels == 1 else arr


def _rgb() -> Image.Image:
    return Image.fromarray(_u8(3))


def _palette_with_transparency() -> Image.Image:
    """A real P image with a transparent palette index, as decoded from a PNG."""
    pal = Image.new("P", (W, H))
    pal.putpalette(list(np.random.default_rng(1).integers(0, 256, 16 * 3)))
    pal.putdata(list(_u8(1, seed=2).reshape(-1) % 16))
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=3)
    buf.seek(0)
    img = Image.open(buf)
    img.load()
    return img


# (input image, expected output mode, expected output pixels as an image of that mode)
def _cases() -> dict[str, tuple[Image.Image, str, Image.Image]]:
    rgb, rgba = _rgb(), Image.fromarray(_u8(4))
    grey, la = Image.fromarray(_u8(1)), Image.fromarray(_u8(2), mode="LA")
    binary = Image.fromarray(_u8(1) > 127).convert("1")
    pal = rgb.quantize(colors=16)
    pal_t = _palette_with_transparency()
    pa = rgba.convert("PA")
    cmyk, ycc, hsv = rgb.convert("CMYK"), rgb.convert("YCbCr"), rgb.convert("HSV")
    return {
        "RGB": (rgb, "RGB", rgb),
        "RGBA": (rgba, "RGBA", rgba),
        "L": (grey, "L", grey),
        "LA": (la, "LA", la),
        "1": (binary, "L", binary.convert("L")),
        "P": (pal, "RGB", pal.convert("RGB")),
        "P+transparency": (pal_t, "RGBA", pal_t.convert("RGBA")),
        "PA": (pa, "RGBA", pa.convert("RGBA")),
        "CMYK": (cmyk, "CMYK", cmyk),
        "YCbCr": (ycc, "RGB", ycc.convert("RGB")),
        "HSV": (hsv, "RGB", hsv.convert("RGB")),
        "RGBa": (rgba.convert("RGBa"), "RGBa", rgba.convert("RGBa")),
        "La": (la.convert("La"), "La", la.convert("La")),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_eight_bit_round_trip(case):
    img, out_mode, expected = _cases()[case]
    rgb, alpha, mode = split_image(img)
    assert mode == img.mode and rgb.shape == (3, H, W) and rgb.dtype == torch.float32
    assert rgb.min() >= -1 and rgb.max() <= 1
    assert (alpha is not None) == (out_mode in ("RGBA", "LA", "RGBa", "La"))
    if alpha is not None:
        assert alpha.shape == (1, H, W) and alpha.min() >= 0 and alpha.max() <= 1
    out = merge_image(rgb, alpha, mode)
    assert out.mode == out_mode and out.size == img.size
    diff = np.abs(np.asarray(out).astype(int) - np.asarray(expected).astype(int))
    # premultiplied modes lose up to one level un-premultiplying; every other mode is exact
    assert diff.max() <= (1 if out_mode in ("RGBa", "La") else 0)


def test_grey_becomes_three_equal_channels_and_luma_on_the_way_back():
    rgb, _, _ = split_image(Image.fromarray(_u8(1)))
    assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    colour = torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 2, 2)  # pure red
    assert np.asarray(merge_image(colour, None, "L"))[0, 0] == round(0.299 * 255)


@pytest.mark.parametrize("byte_order", ["<u2", ">u2"])
def test_sixteen_bit_keeps_precision(byte_order):
    levels = np.random.default_rng(3).integers(0, 65536, (H, W)).astype(byte_order)
    img = Image.fromarray(levels)
    assert img.mode in ("I;16", "I;16B")
    rgb, alpha, mode = split_image(img)
    assert alpha is None and mode == img.mode
    expected = torch.from_numpy(levels.astype(np.float64) / 65535 * 2 - 1).float()
    assert (rgb - expected).abs().max() < 1e-6  # 1 level = 3e-5: not squeezed through 8 bits
    out = merge_image(rgb, None, mode)
    assert out.mode == "I;16"
    assert np.abs(np.asarray(out).astype(np.int64) - levels.astype(np.int64)).max() <= 1


def test_mode_i_and_f():
    levels = np.random.default_rng(4).integers(0, 65536, (H, W)).astype(np.int32)
    rgb, _, mode = split_image(Image.fromarray(levels))
    out = merge_image(rgb, None, mode)
    assert mode == out.mode == "I" and np.abs(np.asarray(out) - levels).max() <= 1
    unit = np.random.default_rng(5).random((H, W)).astype(np.float32)
    rgb, _, mode = split_image(Image.fromarray(unit))
    out = merge_image(rgb, None, mode)
    assert mode == out.mode == "F" and np.abs(np.asarray(out) - unit).max() < 1e-6
    # F in 0..255 (Pillow's own convention for L -> F) is read as such and written as [0, 1]
    rgb255, _, _ = split_image(Image.fromarray(unit * 255))
    assert torch.allclose(rgb255, rgb, atol=1e-5)


def test_alpha_upscaled_separately_and_merged():
    img = Image.fromarray(_u8(4))
    rgb, alpha, mode = split_image(img)
    big_rgb = torch.nn.functional.interpolate(rgb[None], scale_factor=4, mode="bicubic")[0]
    big_alpha = upscale_alpha(alpha, (4 * H, 4 * W))
    assert big_alpha.shape == (1, 4 * H, 4 * W) and big_alpha.min() >= 0 and big_alpha.max() <= 1
    out = merge_image(big_rgb, big_alpha, mode)  # big_rgb overshoots [-1, 1]: merge clamps
    assert out.mode == "RGBA" and out.size == (4 * W, 4 * H)
    assert upscale_alpha(alpha[None], (2, 3)).shape == (1, 1, 2, 3)


def test_missing_alpha_means_opaque():
    rgb, _, _ = split_image(_rgb())
    out = merge_image(rgb, None, "RGBA")
    assert out.mode == "RGBA" and (np.asarray(out)[..., 3] == 255).all()


def test_unsupported_mode_is_a_data_error():
    class Odd:
        mode, info = "XYZ", {}

        def convert(self, mode):
            raise ValueError(f"conversion from XYZ to {mode} not supported")

    with pytest.raises(DataError, match="XYZ"):
        split_image(Odd())  # type: ignore[arg-type]


def test_pad_crop_round_trip_uses_reflect():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 13, 17)
    padded, (h, w) = pad_to_multiple(x, 8)
    assert padded.shape == (2, 3, 16, 24) and (h, w) == (13, 17)
    assert torch.equal(crop_to(padded, h, w), x)
    assert torch.equal(padded[:, :, 13, :17], x[:, :, 11])  # reflect: row 13 mirrors row 11
    assert torch.equal(padded[:, :, :13, 17], x[:, :, :, 15])
    single, size = pad_to_multiple(x[0], 8)
    assert single.shape == (3, 16, 24) and size == (13, 17) and torch.equal(single, padded[0])
    same, _ = pad_to_multiple(x, 1)
    assert same is x


def test_tiny_image_pads_with_replicate():
    x = torch.arange(6, dtype=torch.float32).reshape(1, 2, 3)  # (C, H, W) = 1 x 2 x 3
    padded, size = pad_to_multiple(x, 8)
    assert padded.shape == (1, 8, 8) and size == (2, 3)
    assert (padded[:, 2:, :3] == x[:, 1:2, :]).all()  # bottom: copies of the last row
    assert (padded[:, :2, 3:] == x[:, :, 2:3]).all()  # right: copies of the last column
    assert torch.equal(crop_to(padded, *size), x)
    wide, _ = pad_to_multiple(torch.randn(1, 2, 30), 8)  # short axis replicates, long one reflects
    assert wide.shape == (1, 8, 32)


def test_bad_padding_arguments():
    with pytest.raises(ConfigError):
        pad_to_multiple(torch.zeros(1, 4, 4), 0)
    with pytest.raises(ValueError):
        crop_to(torch.zeros(1, 4, 4), 5, 4)
