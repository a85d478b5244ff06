"""Image folders: decoding any file to 8-bit RGB, crops, labels, captions and bad-file policy.

Every image goes through :func:`load_image` (EXIF orientation applied; L, 1, P, PA, LA, RGBA,
CMYK, YCbCr, I;16 and I become RGB, with transparency composited on white). A folder becomes an
:class:`ImageFolderDataset`: labels come from the top-level sub-folder names, captions from
``metadata.jsonl`` (Hugging Face imagefolder convention) or a ``.txt`` file beside each image, and
the other fields of ``metadata.jsonl`` become item keys too (:mod:`ldmctl.data.metadata`).

Bad files never stop a run. At scan time each header is opened (cheap) and files that are empty,
not images, or larger than ``DataConfig.max_pixels`` are skipped; at load time a file that fails
to decode (e.g. truncated) is skipped and its item is replaced by the next good image. Either way
the file gets one warning and an entry in ``dataset.skipped``, as does a ``metadata.jsonl`` row
naming a missing file. A ``metadata.jsonl`` that is not UTF-8 JSON, or names a file outside the
data folder, is a DataError: it is the user's description of the data, not one bad file.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ldmctl.config import DataConfig
from ldmctl.data.metadata import folder_captions, folder_metadata
from ldmctl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = DataConfig.max_pixels
MAX_ASPECT = 100  # longer side / shorter side; checked from the header, before decoding
WHITE = (255, 255, 255)

Item = dict[str, Any]  # {"image": (3, S, S) float in [-1, 1], "label": int, "caption": str, "path": str}


# --------------------------------------------------------------------------------------------
# decoding


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 0) -> Image.Image:
    """Decode ``path`` into an 8-bit RGB image with its EXIF orientation applied.

    ``min_side`` > 0 says the caller needs the image only with its shorter side at least that
    long (it will downscale it): a JPEG is then decoded at the smallest of 1/2, 1/4 or 1/8 scale
    that still keeps it (libjpeg's DCT scaling: many times faster on large photos).

    Raises DataError (message names the file and the reason) for a missing, empty, truncated,
    non-image or oversized file.
    """
    img = open_image(path, max_pixels=max_pixels, min_side=min_side)
    try:
        return to_rgb(img)
    except ValueError as err:
        raise DataError(f"image {str(path)!r}: {err}") from None


def open_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 0) -> Image.Image:
    """Decode ``path`` in its own mode (L, RGBA, I;16, ...) with its EXIF orientation applied;
    ``min_side``, checks and errors as for :func:`load_image`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image {str(p)!r} does not exist or is not a file")
    try:
        with _open_checked(p, max_pixels) as img:
            w, h = img.size
            if min_side > 0 and img.format == "JPEG" and min(w, h) >= 2 * min_side:
                # Pillow picks the largest DCT scale whose result is at least the size asked for
                img.draft(None, (math.ceil(w * min_side / min(w, h)), math.ceil(h * min_side / min(w, h))))
            img.load()
            img = ImageOps.exif_transpose(img)
    except DataError as err:
        raise DataError(f"image {str(p)!r}: {err}") from None
    except Exception as err:  # noqa: BLE001 - corrupt files make Pillow raise almost anything
        raise DataError(f"image {str(p)!r} cannot be decoded: {_reason(err)}") from None
    return img


def check_pixels(h: int, w: int, what: str) -> None:
    """ConfigError for an image to be made that has more pixels than any input may have."""
    if h * w > DEFAULT_MAX_PIXELS:
        raise ConfigError(f"{what}: {w}x{h} is {h * w:,} pixels, more than the {DEFAULT_MAX_PIXELS:,} allowed")


def probe_image(path: Path, max_pixels: int) -> str | None:
    """Open only the header of ``path``; return why it is unusable, or None if it looks fine."""
    try:
        with _open_checked(path, max_pixels):
            return None
    except DataError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - see load_image
        return _reason(err)


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open ``path`` lazily and refuse it if it has more than ``max_pixels`` pixels."""
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes)")
    with warnings.catch_warnings():
        # we apply our own limit below; Pillow's warning would only duplicate it
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError:
            raise DataError("more pixels than Pillow's decompression-bomb limit") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise DataError(f"{w}x{h} is more than data.max_pixels={max_pixels} pixels")
    if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
        img.close()  # resized to a short side of S, it would take S * S * aspect pixels
        raise DataError(f"{w}x{h} has an aspect ratio beyond {MAX_ASPECT}:1")
    return img


def _reason(err: BaseException) -> str:
    """Turn a Pillow exception into a short human reason."""
    if isinstance(err, Image.UnidentifiedImageError):
        return "not an image Pillow can read"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit data (PNG/TIFF) scaled to 8 bits; mode "I" holds 16-bit files too
        arr = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(arr / 257.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        arr = np.nan_to_num(arr * scale + 0.5)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode in ("PA", "LA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (*WHITE, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError:
        raise ValueError(f"unsupported image mode {mode!r}") from None


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """Convert an image to a (3, H, W) float32 tensor in [-1, 1]."""
    arr = np.array(to_rgb(img), dtype=np.uint8)  # (H, W, 3), a writable copy
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """Convert a (3, H, W) tensor in [-1, 1] to an RGB image (clamped, rounded)."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(x.shape)}")
    u8 = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(u8.permute(1, 2, 0).numpy(), mode="RGB")


# --------------------------------------------------------------------------------------------
# crops


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    """Return the RNG for one item: the same (seed, epoch, index) always draws the same crop."""
    return random.Random(f"ldmctl/{seed}/{epoch}/{index}")  # str seeds hash via SHA-512


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Resize (bicubic, antialiased) so that the shorter side is ``size`` pixels."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img.resize(new, Image.Resampling.BICUBIC)


def crop_and_flip(img: Image.Image, cfg: DataConfig, rng: random.Random) -> Image.Image:
    """Apply ``cfg``: optional short-side resize, random/center crop of ``cfg.size``, h-flip.

    An image smaller than the crop is upscaled (bicubic) first. The RNG draws, in this order,
    the zoom (only when ``min_scale < 1``), the crop offset, the flip, the quarter turn (only with
    ``rot90``) and the channel order (only with ``channel_shuffle``), so switching an optional
    augmentation off leaves the draws of the others unchanged. With ``min_scale < 1`` the crop
    covers ``size / s`` source pixels (``s`` uniform in ``[min_scale, 1]``, never more than the
    image allows) and is resized to ``size`` with an antialiased bicubic filter: the same photo
    seen from further away, with denser detail. ``channel_shuffle`` permutes R, G and B (colour
    augmentation for autoencoders: every hue arrangement is a valid image to reconstruct).
    """
    size = cfg.size
    if cfg.resize or min(img.size) < size:
        img = resize_short_side(img, size)
    w, h = img.size
    side = size
    if cfg.min_scale < 1.0:
        scale = max(rng.uniform(cfg.min_scale, 1.0), size / min(w, h))
        side = min(min(w, h), round(size / scale))
    if cfg.crop == "random":
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
    else:
        left, top = (w - side) // 2, (h - side) // 2
    if side != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    elif (left, top, w, h) != (0, 0, size, size):
        img = img.crop((left, top, left + size, top + size))
    if cfg.flip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if cfg.rot90:
        turns = rng.randrange(4)
        if turns:
            img = img.transpose(
                (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[turns - 1]
            )
    if cfg.channel_shuffle:
        bands = img.split()
        order = rng.sample(range(3), 3)
        img = Image.merge("RGB", [bands[i] for i in order])
    return img


# --------------------------------------------------------------------------------------------
# folders: files, labels (captions and extra fields: ldmctl.data.metadata)


def iter_image_files(root: str | Path) -> list[Path]:
    """List image files under ``root``, recursively, sorted; hidden files and folders are skipped."""
    base = Path(root)
    if not base.is_dir():
        what = "is not a folder" if base.exists() else "does not exist"
        raise DataError(
            f"data folder {str(base)!r} {what}", hint="pass a folder of images, or builtin:photos / builtin:synthetic"
        )
    found = [
        p
        for p in base.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(base).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def folder_labels(root: Path, files: list[Path]) -> tuple[list[str], list[int]]:
    """Return (sorted class names, one label per file) from top-level sub-folder names.

    Files directly in ``root`` get -1, as do all files when there are no sub-folders.
    """
    tops = [p.relative_to(root).parts for p in files]
    names = sorted({parts[0] for parts in tops if len(parts) > 1})
    index = {name: i for i, name in enumerate(names)}
    return names, [index[parts[0]] if len(parts) > 1 else -1 for parts in tops]


# --------------------------------------------------------------------------------------------
# the dataset


class ImageFolderDataset(Dataset):
    """A folder of images (recursive) as a map-style dataset of item dicts.

    Items: ``{"image": (3, S, S) float in [-1, 1], "label": int, "caption": str, "path": str}``,
    plus the extra ``metadata.jsonl`` fields named in ``fields``.
    Crops and flips are drawn from ``item_rng(seed, epoch, index)``; call :meth:`set_epoch`
    between epochs for new crops. With DataLoader workers, ``skipped`` only sees the files found
    bad at scan time and in the main process.
    """

    def __init__(self, root: str | Path, cfg: DataConfig, *, seed: int = 0) -> None:
        self.root, self.cfg, self.seed, self.epoch = Path(root), cfg, seed, 0
        self._cache: dict[int, Image.Image] = {}  # decoded images, see _decode
        self._cache_bytes = 0
        files = iter_image_files(self.root)
        self.skipped: list[tuple[str, str]] = []
        self.class_names, labels = folder_labels(self.root, files)
        captions, extra = folder_metadata(self.root, files, skip=self._skip)
        self.fields = tuple(extra)  # extra item keys from metadata.jsonl
        self._entries: list[tuple[Path, int, str, dict[str, Any]]] = []
        for i, (path, label, caption) in enumerate(zip(files, labels, captions, strict=True)):
            if caption is None:  # its metadata row was bad: already skipped and counted
                continue
            reason = probe_image(path, cfg.max_pixels)
            if reason is None:
                self._entries.append((path, label, caption, {k: v[i] for k, v in extra.items()}))
            else:
                self._skip(path, reason)
        self._bad: set[int] = set()  # entries that failed to decode at load time
        if not self._entries:
            self._raise_empty(len(files))
        self._load_good(0)  # one image must decode: a folder of truncated files fails now, not mid-run
        log.info("%s", self.summary())

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append((str(path), reason))
        log.warning("skipping %s: %s", path, reason)

    def _raise_empty(self, n_files: int) -> None:
        if n_files == 0:
            raise DataError(
                f"no image files in {str(self.root)!r}", hint=f"supported suffixes: {' '.join(sorted(IMAGE_SUFFIXES))}"
            )
        raise DataError(
            f"none of the {n_files} image files in {str(self.root)!r} is usable",
            hint=f"first problem: {self.skipped[0][0]}: {self.skipped[0][1]}",
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and flips ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def summary(self) -> str:
        """Describe the data set in one line: images, classes, captions, skipped files."""
        n_cap = sum(1 for _, _, caption, _ in self._entries if caption)
        return (
            f"{len(self._entries)} images in {self.root} ({len(self.class_names)} classes, "
            f"{n_cap} captions); skipped {len(self.skipped)} bad files"
        )

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Item:
        if not 0 <= index < len(self._entries):
            raise IndexError(f"index {index} out of range for {len(self._entries)} images")
        rng = item_rng(self.seed, self.epoch, index)
        i, img = self._load_good(index)
        path, label, caption, extra = self._entries[i]
        img = crop_and_flip(img, self.cfg, rng)
        return {"image": pil_to_tensor(img), "label": label, "caption": caption, "path": str(path), **extra}

    def _load_good(self, index: int) -> tuple[int, Image.Image]:
        """Decode entry ``index``, or the next entry (cyclically) that decodes."""
        n = len(self._entries)
        for k in range(index, index + n):
            i = k % n
            if i in self._bad:
                continue
            path = self._entries[i][0]
            try:
                return i, self._decode(i, path)
            except DataError as err:
                self._bad.add(i)
                self._skip(path, str(err))
        raise DataError(
            f"none of the images in {str(self.root)!r} can be decoded",
            hint=f"first problem: {self.skipped[0][0]}: {self.skipped[0][1]}",
        )

    def _decode(self, i: int, path: Path) -> Image.Image:
        """Entry ``i`` as RGB, resized already when ``cfg.resize`` (decoded at a reduced JPEG
        scale when that suffices). Images are kept in memory while they fit in ``cfg.cache_mb``
        (first come, first kept: with random access an LRU would only churn), so a small folder
        is decoded once per process (DataLoader workers hold their own caches, for one epoch)."""
        if i in self._cache:
            return self._cache[i]
        size = self.cfg.size
        img = load_image(path, max_pixels=self.cfg.max_pixels, min_side=size if self.cfg.resize else 0)
        if self.cfg.resize:
            img = resize_short_side(img, size)
        nbytes = img.width * img.height * 3
        if self._cache_bytes + nbytes <= self.cfg.cache_mb * 2**20:
            self._cache[i] = img
            self._cache_bytes += nbytes
        return img


__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolderDataset",
    "Item",
    "check_pixels",
    "crop_and_flip",
    "folder_captions",
    "folder_labels",
    "item_rng",
    "iter_image_files",
    "load_image",
    "pil_to_tensor",
    "probe_image",
    "resize_short_side",
    "tensor_to_pil",
    "to_rgb",
]
