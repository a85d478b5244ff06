"""Evaluation reports: which images, which metrics, per-image rows and means, as JSON-able dicts."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmctl.config import DataConfig
from ldmctl.data import holdout_photos, iter_image_files, load_image, open_dataset, pil_to_tensor
from ldmctl.errors import ConfigError, DataError
from ldmctl.eval.metrics import bicubic_roundtrip, lpips_distance, psnr, quantize_8bit, ssim
from ldmctl.files import atomic_write

log = logging.getLogger(__name__)

MIN_SIDE = 11  # SSIM's Gaussian window (eval.metrics.ssim) needs images at least this large


def center_crop(x: Tensor, size: int) -> Tensor:
    """Center-crop (C, H, W) to ``size`` x ``size``; an image too small for it is a DataError."""
    h, w = x.shape[-2:]
    if min(h, w) < size:
        raise DataError(
            f"an image of {w}x{h} px is smaller than the evaluation crop {size}",
            hint="pass a smaller --size, or --size 0 for whole images",
        )
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def load_eval_images(
    source: str, *, size: int = 0, limit: int = 0, multiple: int = 1, skipped: list[tuple[str, str]] | None = None
) -> list[tuple[str, Tensor]]:
    """Images to evaluate on, as ``(name, (3, H, W) in [0, 1])``; ``size`` > 0 center-crops, and
    the bottom/right edges are cut so that H and W are multiples of ``multiple``.

    ``source`` is a folder (every image in it, recursively), ``builtin:photos-holdout`` (the
    photos never used for training) or another ``builtin:NAME`` (its first ``limit`` items).
    A file of a folder that cannot be decoded, or is too small to score, is logged and appended
    to ``skipped`` as ``(path, reason)``, never fatal; a folder with no usable image is a DataError.
    """
    if size < 0 or 0 < size < MIN_SIDE:
        raise ConfigError(f"--size {size}: use 0 (whole images) or at least {MIN_SIDE} px (the SSIM window)")
    if limit < 0:
        raise ConfigError(f"--limit {limit}: use 0 (all images) or a positive count")
    if "," in source and not Path(source).exists():
        items = [
            it
            for part in source.split(",")
            if part.strip()
            for it in load_eval_images(part.strip(), size=size, limit=limit, multiple=multiple, skipped=skipped)
        ]
        return items[:limit] if limit else items
    if source == "builtin:photos-holdout":
        items = [(name, pil_to_tensor(img)) for name, img in holdout_photos()]
    elif source.startswith("builtin:"):
        ds = open_dataset(DataConfig(source=source, size=size or 64, crop="center", flip=False))
        n = min(len(ds), limit or 64)
        items = [(it.get("path") or f"{source}#{i}", it["image"]) for i, it in ((i, ds[i]) for i in range(n))]
    else:
        min_side = max(size, -(-MIN_SIDE // multiple) * multiple)
        items = _folder_images(Path(source), min_side, limit, skipped)
    items = [(name, (x + 1) / 2) for name, x in items]
    if size:
        items = [(name, center_crop(x, size)) for name, x in items]
    items = [
        (name, x[..., : x.shape[-2] // multiple * multiple, : x.shape[-1] // multiple * multiple]) for name, x in items
    ]
    if not items:
        first = f"first problem: {skipped[0][0]}: {skipped[0][1]}" if skipped else None
        raise DataError(f"no image to evaluate in {source!r}", hint=first)
    return items


EVAL_MAX_PIXELS = 2048 * 2048  # a larger image is evaluated resized to this many pixels (aspect kept)


def _side_within_bound(path: Path) -> int:
    """0, or the short side a large JPEG may be decoded at (DCT scaling) before :func:`_bounded`."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception:  # noqa: BLE001 - load_image reports the real problem
        return 0
    scale = min(1.0, (EVAL_MAX_PIXELS / max(1, w * h)) ** 0.5)
    return int(min(w, h) * scale) if scale < 1 else 0


def _bounded(img: Any, path: Path) -> Any:
    """``img`` resized (Lanczos, aspect kept) to at most EVAL_MAX_PIXELS pixels, with a warning that
    says so: memory per image stays bounded whatever the file holds."""
    w, h = img.size
    if w * h <= EVAL_MAX_PIXELS:
        return img
    scale = (EVAL_MAX_PIXELS / (w * h)) ** 0.5
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    log.warning(
        "%s: %dx%d px evaluated resized to %dx%d (at most %d pixels an image)", path, w, h, *size, EVAL_MAX_PIXELS
    )
    from PIL import Image

    return img.resize(size, resample=Image.Resampling.LANCZOS)


def _folder_images(
    folder: Path, min_side: int, limit: int, skipped: list[tuple[str, str]] | None
) -> list[tuple[str, Tensor]]:
    """The first ``limit`` (0: all) usable images of ``folder`` as (path, (3, H, W) in [-1, 1])."""
    items: list[tuple[str, Tensor]] = []
    for path in iter_image_files(folder):
        try:
            x = pil_to_tensor(_bounded(load_image(path, min_side=_side_within_bound(path)), path))
            if min(x.shape[-2:]) < min_side:
                raise DataError(
                    f"image {str(path)!r}: {x.shape[-1]}x{x.shape[-2]} px is smaller than "
                    f"the {min_side} px this evaluation needs"
                )
        except DataError as err:
            log.warning("skipping %s: %s", path, err)
            if skipped is not None:
                skipped.append((str(path), str(err)))
            continue
        items.append((str(path), x))
        if len(items) == limit:
            break
    return items


def evaluate_reconstructions(
    images: list[tuple[str, Tensor]],
    restore: Callable[[Tensor], Tensor],
    *,
    baseline_factor: int = 0,
    perceptual: nn.Module | None = None,
    on_output: Callable[[str, str, Tensor], None] | None = None,
) -> dict[str, Any]:
    """Score ``restore(x)`` (and bicubic x``baseline_factor`` down-up, if > 0) against each image.

    Outputs are rounded to 8 bits first, exactly as the PNGs ``reconstruct`` writes.
    Returns ``{"rows": [...per image...], "mean": {...}}`` with psnr/ssim (and lpips) columns.
    ``on_output(name, label, image)`` receives every scored output (e.g. to save it).
    """
    rows: list[dict[str, Any]] = []
    for name, x in images:
        x = x.unsqueeze(0)
        outputs = {"model": quantize_8bit(restore(x))}
        if baseline_factor:
            outputs["bicubic"] = quantize_8bit(bicubic_roundtrip(x, baseline_factor))
        row: dict[str, Any] = {"image": name, "size": f"{x.shape[-1]}x{x.shape[-2]}"}
        for label, y in outputs.items():
            if on_output is not None:
                on_output(name, label, y[0])
            row[f"{label}_psnr"] = float(psnr(y, x)[0])
            row[f"{label}_ssim"] = float(ssim(y, x)[0])
            if perceptual is not None:
                row[f"{label}_lpips"] = float(lpips_distance(perceptual, y, x)[0])
        rows.append(row)
    keys = [k for k in rows[0] if k not in ("image", "size")]
    mean = {k: _finite_mean([r[k] for r in rows]) for k in keys}
    return {"rows": rows, "mean": mean, "n": len(rows)}


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def autoencoder_restorer(ae: nn.Module, *, precision: str = "fp32", **tiling: int) -> Callable[[Tensor], Tensor]:
    """``x in [0, 1] -> reconstruction in [0, 1]`` for :func:`evaluate_reconstructions`, run where
    ``ae`` is under the autocast of ``precision``; ``tiling`` (``tile``, ``overlap``) goes to
    :func:`ldmctl.autoencoder.apply.reconstruct`."""
    from ldmctl.autoencoder.apply import reconstruct

    def restore(x: Tensor) -> Tensor:
        with torch.no_grad():
            return (reconstruct(ae, x * 2 - 1, precision=precision, **tiling) + 1) / 2

    return restore


def write_json(results: dict[str, Any], path: Path) -> Path:
    """``results`` as strict JSON (NaN and infinities become null)."""
    text = json.dumps(_finite(results), indent=2, ensure_ascii=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
