"""Editing an image with any latent diffusion model: img2img, inpainting, outpainting, any size.

``ldmctl sample CKPT --init-image IMG [--strength S] [--mask MASK] [--pad L,R,T,B]`` (docs/editing.md).
:func:`prepare_edit` reads the files into an :class:`Edit`; :func:`~ldmctl.sampling.generate` then
samples with it through the edit's methods (:func:`edit_latents`, :func:`paste_back`; the two
modules are peers, so ``generate`` calls them without importing this one).

* **img2img** (SDEdit, Meng et al. 2022). z0 = E(x) is the init image's latent (posterior mode
  times the scale factor). The sampler starts at its first timestep t0 <= strength * T from
  z_t0 = sqrt(a) z0 + sqrt(1 - a) eps (a = alpha_bar[t0]) and runs its remaining steps with the
  usual conditions; eps is the z_T of plain sampling, the same draw from the same generator.
  Exact identities: strength 0 decodes z0 without calling the UNet, D(E(x)); strength 1 starts
  from eps itself, so it is plain sampling with the same seed, bit for bit.
* **Inpainting by latent blending** (the ``mask``/``x0`` mechanism of CompVis' DDIM sampler). The
  mask M (white = repaint, thresholded at 50 %) is max-pooled to the latent grid and dilated by
  one latent cell: m. Before each step at timestep t the latent outside m is replaced by
  sqrt(a_t) z0 + sqrt(1 - a_t) eps (the same eps throughout), and the final latent is z0 there.
* **Paste-back** (always, with a mask). With alpha the mean of M dilated 0, 1, ..., f times by
  3x3 (f: the first stage's factor), i.e. 1 on M falling linearly to 0 at f + 1 pixels from it
  (Chebyshev distance), the output is ``alpha * D(z) + (1 - alpha) * x``. Guarantee: every pixel
  farther than f pixels from the mask equals the init image exactly (so its 8-bit value is the
  input's), every pixel of the mask is the model's, and the band between them is a linear blend:
  no seam. The band lies inside the latent mask m, so it blends freshly generated content (made
  to agree with the known latent around it) into the original pixels.
* **Outpainting**: ``pad`` grows the canvas by (left, right, top, bottom) pixels, edge pixels
  repeated outward, and the mask covers the new border; then inpainting runs.
* **Any size**: the latent grid is (H / f, W / f). With an init image the size is the image's
  (``height``/``width`` resize it first); sides must be multiples of f times the UNet's
  downsampling, else a ConfigError says so (no silent crop). Conditioners that read a spatial
  input find the grid in ``batch["latent_hw"]``.
* **A model that reads the mask itself** (a dedicated inpainting model, :mod:`ldmctl.inpaint.task`):
  when ``model.task`` has ``editing_inputs(image (3, H, W), mask (1, H, W) or None) -> {batch key:
  item}``, those items become the inputs of its conditioners (the defaults of
  :func:`~ldmctl.sampling.sampling_conditions`), latent blending is off unless asked for, and the
  paste-back stays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ldmctl.data import load_image, pil_to_tensor
from ldmctl.data.images import check_pixels, open_image
from ldmctl.errors import ConfigError, DataError
from ldmctl.samplers import sampler_timesteps
from ldmctl.unet import downsample_factor

IMG2IMG_STRENGTH = 0.75  # the default strength without a mask (CompVis' img2img script)
THRESHOLD = 0.5  # mask values at or above it are repainted


@dataclass(frozen=True)
class Edit:
    """An init image on its canvas and what to do with it (see the module doc)."""

    image: Tensor  # (3, H, W) in [-1, 1]: the init image, resized and padded; (n, 3, H, W): one per sample
    mask: Tensor | None  # (1, H, W) or (n, 1, H, W) in {0, 1}, 1 = repaint; None: img2img
    strength: float  # in [0, 1]
    blend: bool  # latent blending outside the mask during sampling
    factor: int  # f of the first stage
    inputs: dict[str, list[Any]] = field(default_factory=dict)  # items for the model's task

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.image.shape[-2] // self.factor, self.image.shape[-1] // self.factor

    def steps_run(self, sampler: Callable[..., Tensor], num_train: int, steps: int) -> int:
        """:func:`steps_run` of this edit."""
        return steps_run(self, sampler, num_train, steps)

    def latents(
        self,
        model: Any,
        sampler: Callable[..., Tensor],
        n: int,
        *,
        inputs: Mapping[str, Any],
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        model_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        callback: Callable[[int, int, Tensor], None] | None = None,
    ) -> Tensor:
        """:func:`edit_latents` of this edit."""
        run = {"steps": steps, "eta": eta, "generator": generator, "model_fn": model_fn, "callback": callback}
        return edit_latents(model, sampler, self, n, inputs=inputs, **run)

    def paste_back(self, images: Tensor) -> Tensor:
        """:func:`paste_back` of this edit."""
        return paste_back(images, self)


def parse_pad(text: str | None) -> tuple[int, int, int, int]:
    """``"16,16,0,0"`` -> (left, right, top, bottom) in pixels; ConfigError for anything else."""
    if not text:
        return (0, 0, 0, 0)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ConfigError(
            f"--pad {text!r}: write four pixel counts >= 0, LEFT,RIGHT,TOP,BOTTOM", hint="e.g. --pad 32,32,0,0"
        )
    left, right, top, bottom = (int(p) for p in parts)
    return left, right, top, bottom


def check_edit_options(
    init_image: str | Path | None, mask: str | Path | None, pad: str | None, strength: float | None, blend: bool | None
) -> None:
    """Refuse editing options that cannot work, before the model is loaded."""
    if init_image is None:
        for given, flag in ((mask, "--mask"), (pad, "--pad"), (strength, "--strength"), (blend, "--blend")):
            if given is not None:
                raise ConfigError(
                    f"{flag} edits an image: give it with --init-image",
                    hint="e.g. ldmctl sample CKPT --init-image photo.png --mask mask.png",
                )
    if strength is not None and not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ConfigError(
            f"--strength {strength} is outside [0, 1]",
            hint="0 returns the autoencoder's reconstruction, 1 ignores the init image's content",
        )
    parse_pad(pad)


def cell_size(model: Any) -> int:
    """Pixel sides must be multiples of this: f times the UNet's downsampling."""
    return model.autoencoder.config.downsample_factor * downsample_factor(model.config.unet)


def latent_grid(model: Any, height: int | None, width: int | None) -> tuple[int, int] | None:
    """The latent grid of ``height`` x ``width`` pixels (either one None: the trained size); None
    when neither is given. ConfigError unless both are positive multiples of :func:`cell_size`."""
    if height is None and width is None:
        return None
    f, cell = model.autoencoder.config.downsample_factor, cell_size(model)
    trained = model.config.latent_size * f
    h, w = height or trained, width or trained
    if h <= 0 or w <= 0 or h % cell or w % cell:
        raise ConfigError(
            f"--height {h} --width {w}: this model needs sides that are positive multiples of {cell} pixels "
            f"(the first stage's factor {f} x the UNet's downsampling {cell // f})",
            hint=f"e.g. --height {max(cell, h // cell * cell)} --width {max(cell, w // cell * cell)}",
        )
    check_pixels(h, w, f"--height {h} --width {w}")
    return h // f, w // f


def read_mask(path: Path) -> Tensor:
    """A mask image as (1, H, W) in {0, 1}, 1 = repaint: its luminance (alpha ignored; 16-bit and
    float images read in their own range) at or above 50 %. DataError names an unreadable file."""
    img = open_image(path)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(img, dtype=np.float32) / 65535.0
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float32)
    else:
        values = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((values >= THRESHOLD).astype(np.float32))[None]


def _resize(image: Image.Image, mask: Tensor | None, hw: tuple[int, int]) -> tuple[Image.Image, Tensor | None]:
    """The init image (Lanczos) and the mask (area-weighted, then thresholded again) at ``hw``."""
    if (image.height, image.width) == hw:
        return image, mask
    image = image.resize((hw[1], hw[0]), Image.Resampling.LANCZOS)
    if mask is not None:
        mask = F.interpolate(mask[None], size=hw, mode="bilinear", antialias=True)[0]
        mask = (mask >= THRESHOLD).float()
    return image, mask


def _pad(image: Tensor, mask: Tensor | None, pad: tuple[int, int, int, int]) -> tuple[Tensor, Tensor | None]:
    """The canvas: ``image`` with its edge pixels repeated outward, the mask 1 on the new border."""
    if not any(pad):
        return image, mask
    base = mask if mask is not None else torch.zeros_like(image[:1])
    image = F.pad(image[None], pad, mode="replicate")[0]
    return image, F.pad(base[None], pad, value=1.0)[0]


def _check_canvas(model: Any, image: Tensor, path: Path, pad: tuple[int, int, int, int]) -> None:
    f, cell = model.autoencoder.config.downsample_factor, cell_size(model)
    if any(p % f for p in pad):
        raise ConfigError(
            f"--pad {','.join(map(str, pad))}: each side must be a multiple of {f} pixels (the first stage's factor)",
            hint=f"e.g. --pad {','.join(str(-(-p // f) * f) for p in pad)}",
        )
    h, w = image.shape[-2:]
    if h % cell or w % cell:
        padded = " with --pad" if any(pad) else ""
        raise ConfigError(
            f"the init image {str(path)!r} is {w}x{h} pixels{padded}; this model needs sides that are "
            f"multiples of {cell} (the first stage's factor {f} x the UNet's downsampling {cell // f})",
            hint="give --height and --width (multiples of that) to resize it, or crop it",
        )


def _read(flag: str, reader: Callable[[Path], Any], path: Path) -> Any:
    """``reader(path)``, its DataError (a missing file, not an image) naming the option."""
    try:
        return reader(path)
    except DataError as err:
        raise DataError(f"{flag}: {err}", hint=err.hint or f"{flag} takes the path of an image file") from None


def _load_mask(mask_path: Path, image: Image.Image, init_path: Path) -> Tensor:
    mask = _read("--mask", read_mask, mask_path)
    if tuple(mask.shape[-2:]) != (image.height, image.width):
        raise DataError(
            f"the mask {str(mask_path)!r} is {mask.shape[-1]}x{mask.shape[-2]} pixels but the init image "
            f"{str(init_path)!r} is {image.width}x{image.height}: they must be the same size",
            hint="paint the mask over the init image itself (white = repaint)",
        )
    return mask


def prepare_edit(
    model: Any,
    init_image: str | Path,
    *,
    mask: str | Path | None = None,
    pad: str | None = None,
    height: int | None = None,
    width: int | None = None,
    strength: float | None = None,
    blend: bool | None = None,
) -> Edit:
    """Read the init image (and mask), resize to ``height`` x ``width`` when given, pad, check sizes.

    ``strength`` defaults to 1 with a mask or padding, else :data:`IMG2IMG_STRENGTH`; ``blend``
    (latent blending) to on, unless the model's task reads the mask itself.
    """
    check_edit_options(init_image, mask, pad, strength, blend)
    sides = parse_pad(pad)
    picture = _read("--init-image", load_image, init_path := Path(init_image))
    m = _load_mask(Path(mask), picture, init_path) if mask is not None else None
    canvas = ((height or picture.height) + sides[2] + sides[3], (width or picture.width) + sides[0] + sides[1])
    check_pixels(*canvas, "the edited image (--height, --width, --pad)")
    picture, m = _resize(picture, m, (height or picture.height, width or picture.width))
    image, m = _pad(pil_to_tensor(picture), m, sides)
    _check_canvas(model, image, init_path, sides)
    if m is not None and not bool(m.any()):
        raise DataError(
            f"the mask {str(mask)!r} has nothing to repaint: no pixel is at least 50 % white",
            hint="paint the region to repaint white, or leave out --mask for img2img",
        )
    hook = getattr(getattr(model, "task", None), "editing_inputs", None)
    items = hook(image, m) if hook is not None else {}  # e.g. ldmctl.inpaint.task: "image", "inpaint_mask"
    default = 1.0 if m is not None else IMG2IMG_STRENGTH
    return Edit(
        image=image,
        mask=m,
        strength=default if strength is None else float(strength),
        blend=(hook is None) if blend is None else blend,
        factor=model.autoencoder.config.downsample_factor,
        inputs={k: [v] for k, v in items.items()},
    )


def start_timestep(strength: float, num_train: int) -> int:
    """The sampler starts at its first timestep at or below ``strength * num_train``."""
    return math.floor(strength * num_train + 1e-9)  # 0.57 * 1000 is 569.99...: not a step lower


def steps_run(edit: Edit | None, sampler: Callable[..., Tensor], num_train: int, steps: int) -> int:
    """How many sampler steps an edit runs (``steps`` without one; none at strength 0).
    ConfigError when a strength above 0 leaves no step."""
    if edit is None or edit.strength >= 1.0:
        return steps
    if edit.strength <= 0.0:
        return 0
    start = start_timestep(edit.strength, num_train)
    try:
        return len(sampler_timesteps(sampler, num_train, steps, start))
    except ConfigError:
        lowest = sampler_timesteps(sampler, num_train, steps)[-1]
        raise ConfigError(
            f"--strength {edit.strength} starts at t = {start}, below every one of the {steps} steps (the lowest is "
            f"t = {lowest})",
            hint="raise --strength or --steps, or use --strength 0 for the autoencoder's reconstruction",
        ) from None


def latent_mask(mask: Tensor, factor: int) -> Tensor:
    """(B, 1, H, W) pixel mask -> (B, 1, H/f, W/f): a cell is repainted when any of its pixels is,
    then dilated by one cell (so the feather band of :func:`feather` lies inside it)."""
    cells = F.max_pool2d(mask, factor)
    return F.max_pool2d(cells, 3, stride=1, padding=1)


def feather(mask: Tensor, width: int) -> Tensor:
    """(B, 1, H, W) {0, 1} -> the paste-back weight: the mean of ``mask`` dilated 0..``width`` times
    by 3x3: 1 on the mask, (width + 1 - d) / (width + 1) at Chebyshev distance d <= width, else 0."""
    total, grown = mask.clone(), mask
    for _ in range(width):
        grown = F.max_pool2d(grown, 3, stride=1, padding=1)
        total = total + grown
    return total / (width + 1)


def paste_back(images: Tensor, edit: Edit | None) -> Tensor:
    """``images`` (B, 3, H, W) with the kept region of the init image pasted back (see the module doc)."""
    if edit is None or edit.mask is None:
        return images
    alpha = feather(_batched(edit.mask).to(images), edit.factor)  # (1 or B, 1, H, W)
    return alpha * images + (1 - alpha) * _batched(edit.image).to(images)


def _batched(x: Tensor) -> Tensor:
    """One image (C, H, W) as a batch of one; a batch as it is."""
    return x if x.ndim == 4 else x[None]


def _blender(z0: Tensor, eps: Tensor, keep: Tensor, schedule: Any) -> Callable[[Tensor, int], Tensor]:
    """``blend(x, t)``: x inside the latent mask, z0 noised to level t with ``eps`` outside it."""

    def blend(x: Tensor, t: int) -> Tensor:
        a = float(schedule.alphas_cumprod[t])
        known = math.sqrt(a) * z0 + math.sqrt(1.0 - a) * eps
        return torch.where(keep, known.to(x.dtype), x)

    return blend


@torch.no_grad()
def edit_latents(
    model: Any,
    sampler: Callable[..., Tensor],
    edit: Edit,
    n: int,
    *,
    inputs: Mapping[str, Any],
    steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    model_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    callback: Callable[[int, int, Tensor], None] | None = None,
) -> Tensor:
    """The ``n`` sampled latents of ``edit`` (what the diffusion runs on: decode ``model.from_target``)."""
    eps = model.initial_noise(n, generator, edit.latent_hw)  # z_T of plain sampling, drawn alike
    if edit.strength >= 1.0 and not (edit.blend and edit.mask is not None):
        return model.sample_latents(
            sampler, n, steps=steps, eta=eta, generator=generator, model_fn=model_fn, callback=callback, noise=eps
        )
    z0 = model.to_target(model.encode(_batched(edit.image).to(eps.device)).expand(n, -1, -1, -1), inputs)
    if edit.strength <= 0.0:
        return z0  # no step: D(z0) is the autoencoder's reconstruction
    schedule, start, blend, keep = model.schedule, None, None, None
    if edit.strength < 1.0:
        steps_run(edit, sampler, schedule.num_timesteps, steps)  # ConfigError when no step is left
        start = start_timestep(edit.strength, schedule.num_timesteps)
        a = float(schedule.alphas_cumprod[sampler_timesteps(sampler, schedule.num_timesteps, steps, start)[0]])
        x = math.sqrt(a) * z0 + math.sqrt(1.0 - a) * eps
    else:
        x = eps
    if edit.blend and edit.mask is not None:
        keep = latent_mask(_batched(edit.mask).to(eps), edit.factor) < 0.5  # (1 or n, 1, h, w): True = known
        blend = _blender(z0, eps, keep, schedule)
    z = model.sample_latents(
        sampler,
        n,
        steps=steps,
        eta=eta,
        generator=generator,
        model_fn=model_fn,
        callback=callback,
        noise=x,
        start=start,
        blend=blend,
    )
    return z if keep is None else torch.where(keep, z0.to(z.dtype), z)


__all__ = [
    "IMG2IMG_STRENGTH",
    "Edit",
    "cell_size",
    "check_edit_options",
    "edit_latents",
    "feather",
    "latent_grid",
    "latent_mask",
    "paste_back",
    "prepare_edit",
    "read_mask",
    "start_timestep",
    "steps_run",
]
