"""Super-resolution with an LDM-SR model (an LDM whose ``concat`` conditioner reads the low-res image).

The model is duck-typed (any :class:`~ldmctl.diffusion.ldm.LatentDiffusion`), so this module imports no model code.

:func:`upscale` takes one RGB image (3, h, w) in [-1, 1] of any size and returns (3, s*h, s*w):

1. pad bottom/right (reflect) so that the output side is a multiple of f * d (autoencoder factor
   times the UNet's downsampling), so any size works; the padding is cropped off at the end;
2. the concat condition is computed once for the whole latent grid, and z_T is drawn once for
   the whole latent from one seeded generator, so a seed gives the same image whatever the tiles;
3. the sampler runs on the whole latent, but its ``model_fn`` evaluates the UNet on overlapping
   latent tiles and blends the predictions (:func:`~ldmctl.tiling.tiled_apply`) at
   every step: neighbouring tiles agree on their overlap throughout sampling, so there are no seams;
4. a residual model (``config.residual``) samples the difference from the latent of the bicubic
   upscale, which is added back here;
5. the latent is decoded in overlapping tiles too, blended the same way; for a residual model
   with ``detail_transfer`` the output is bicubic + D(z) - D(z_bicubic) (two decodes).

Memory: the whole-image tensors are the latent, the sampler's few latent-sized buffers and the
output image (a 1024 x 1024 output with f = 2 has a 4 x 512 x 512 latent: 4 MB per tensor);
network activations are those of one tile (``tile`` latent cells a side), whatever the image
size. An image no larger than one tile runs in one piece, exactly as without tiling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ldmctl.conditioning.base import Cond
from ldmctl.data.modes import crop_to, pad_to_multiple, resize
from ldmctl.device import autocast, module_device
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.samplers import get_sampler
from ldmctl.samplers.common import spacing
from ldmctl.superres.task import LATENT_KEY, LOW_RES_KEY, READS_LOW_RES, upscale_image
from ldmctl.tiling import Progress, count_tiles, tiled_apply
from ldmctl.unet import downsample_factor


def sr_scale(model: Any) -> int:
    """The model's upscaling factor; a CheckpointError if it is not a super-resolution model."""
    if model.config.sr_scale <= 0 or not READS_LOW_RES & {c.input_key for c in model.conditioners.items}:
        raise CheckpointError(
            "this checkpoint is not a super-resolution model (train one with `ldmctl train-ldm --task superres`)"
        )
    return model.config.sr_scale


def input_multiple(model: Any) -> int:
    """Low-res sides are padded to a multiple of this, so the output fits the latent grid."""
    s = sr_scale(model)
    cell = model.autoencoder.config.downsample_factor * downsample_factor(model.config.unet)
    return cell // math.gcd(s, cell)


def _check_tiles(model: Any, tile: int, overlap: int) -> None:
    d = downsample_factor(model.config.unet)
    if tile < d or tile % d:
        raise ConfigError(f"--tile {tile} must be a positive multiple of {d} latent cells (the UNet's downsampling)")
    if not 0 <= overlap < tile:
        raise ConfigError(f"--overlap {overlap} must be >= 0 and smaller than --tile {tile}")


def tiled_model_fn(model: Any, cond: Cond, *, tile: int, overlap: int) -> Callable[[Tensor, Tensor], Tensor]:
    """``model_fn(z_t, t)`` evaluating the UNet tile by tile; ``cond.concat`` is sliced per tile."""

    def model_fn(z_t: Tensor, t: Tensor) -> Tensor:
        def one(zt: Tensor, at: tuple[int, int]) -> Tensor:
            y0, x0 = at
            h, w = zt.shape[-2:]
            c = replace(cond, concat=cond.concat[..., y0 : y0 + h, x0 : x0 + w]) if cond.concat is not None else cond
            return model.unet(zt, t, c)

        return tiled_apply(one, z_t, tile=tile, overlap=overlap)

    return model_fn


def _inputs(model: Any, lr: Tensor, hw: tuple[int, int], *, tile: int, overlap: int, latent: bool = False) -> dict:
    """The conditioners' batch for the whole image; a ``cond_latent`` (the latent of the bicubic
    upscale) is encoded tile by tile, so memory stays bounded as for sampling."""
    batch = {LOW_RES_KEY: lr, "latent_hw": hw}
    if latent or any(c.input_key == LATENT_KEY for c in model.conditioners.items):
        f = model.autoencoder.config.downsample_factor
        up = upscale_image(lr, (hw[0] * f, hw[1] * f))

        def encode(t: Tensor, at: tuple[int, int]) -> Tensor:
            y, x = at[0] * f, at[1] * f
            return model.encode(up[..., y : y + t.shape[-2] * f, x : x + t.shape[-1] * f])

        batch[LATENT_KEY] = tiled_apply(encode, torch.zeros(1, 1, *hw), tile=tile, overlap=overlap)
    return batch


# the dihedral group of the square: (transposed?, flipped rows?, flipped columns?); each is its own inverse
# when applied as transpose-then-flip forward and flip-then-transpose back
_DIHEDRAL = [
    (False, False, False),
    (False, False, True),
    (False, True, False),
    (False, True, True),
    (True, False, False),
    (True, False, True),
    (True, True, False),
    (True, True, True),
]


def _forward(x: Tensor, t: tuple[bool, bool, bool]) -> Tensor:
    if t[0]:
        x = x.transpose(-1, -2)
    dims = [d for d, on in ((-2, t[1]), (-1, t[2])) if on]
    return x.flip(dims) if dims else x


def _inverse(x: Tensor, t: tuple[bool, bool, bool]) -> Tensor:
    dims = [d for d, on in ((-2, t[1]), (-1, t[2])) if on]
    x = x.flip(dims) if dims else x
    return x.transpose(-1, -2) if t[0] else x


@torch.no_grad()
def upscale(
    model: Any,
    lr: Tensor,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    seed: int = 0,
    tile: int = 64,
    overlap: int = 16,
    strength: float = 1.0,
    detail_transfer: bool = True,
    ensemble: int = 1,
    back_project: int = 0,
    progress: Progress | None = None,
    precision: str = "fp32",
) -> Tensor:
    """:func:`upscale_once`, or with ``ensemble`` = 2, 4 or 8 the mean of that many runs on flipped
    and transposed copies of the input, each mapped back (geometric self-ensemble: averages out
    what the model invents differently per orientation; ``ensemble`` times the cost). Then
    ``back_project`` rounds of :func:`back_projection` (0: none)."""
    if ensemble not in (1, 2, 4, 8):
        raise ConfigError(f"--ensemble {ensemble} must be 1, 2, 4 or 8")
    if back_project < 0:
        raise ConfigError(f"--back-project {back_project} must be >= 0")
    out = None
    for k, t in enumerate(_DIHEDRAL[:ensemble]):
        report = (lambda done, total, k=k: progress(k * total + done, ensemble * total)) if progress else None
        y = _inverse(
            upscale_once(
                model,
                _forward(lr, t),
                sampler=sampler,
                steps=steps,
                eta=eta,
                seed=seed,
                tile=tile,
                overlap=overlap,
                strength=strength,
                detail_transfer=detail_transfer,
                progress=report,
                precision=precision,
            ),
            t,
        )
        out = y if out is None else out + y
    return back_projection(out / ensemble, lr.float().to(out.device), back_project)


def back_projection(hr: Tensor, lr: Tensor, rounds: int) -> Tensor:
    """Iterative back-projection (Irani and Peleg, 1991): ``rounds`` times, downscale ``hr``
    (3, s*h, s*w) to the size of ``lr`` (3, h, w) as the degradation does (antialiased bicubic),
    and add the bicubic upscale of what differs from ``lr``. The result, downscaled, gives back
    the input far more closely: what the model drew is kept where it agrees with the input and
    corrected where it does not (e.g. a colour or brightness drift of the first stage). The
    error shrinks geometrically; a few rounds reach its floor. Values are clamped to [-1, 1] at
    the end."""
    if rounds <= 0:
        return hr
    size, low = tuple(hr.shape[-2:]), tuple(lr.shape[-2:])
    for _ in range(rounds):
        hr = hr + resize(lr - resize(hr, low), size)
    return hr.clamp(-1, 1)


def _check_args(model: Any, lr: Tensor, sampler: str, strength: float, tile: int, overlap: int) -> None:
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"--strength {strength} must be in (0, 1]")
    if strength < 1.0 and sampler != "ddim":
        raise ConfigError("--strength below 1 needs --sampler ddim")
    if lr.ndim != 3 or lr.shape[0] != 3:
        raise ConfigError(f"upscale expects a (3, h, w) image, got {tuple(lr.shape)}")
    sr_scale(model)
    _check_tiles(model, tile, overlap)


def _start(model: Any, inputs: dict, noise: Tensor, strength: float, steps: int) -> tuple[Tensor, dict, int]:
    """z_T and the sampler's extra arguments: pure noise, or for ``strength`` < 1 the latent of the
    bicubic upscale noised to t = strength * T (SDEdit); also the number of steps that will run."""
    if strength >= 1.0:
        return noise, {}, steps
    start = int(strength * (model.schedule.num_timesteps - 1))
    ts = [t for t in spacing(model.schedule.num_timesteps, steps, "leading", offset=1).tolist() if t <= start]
    if not ts:
        raise ConfigError(f"--strength {strength} leaves none of the {steps} steps; raise --steps or --strength")
    ab = float(model.schedule.alphas_cumprod[ts[0]])
    start_z = model.to_target(inputs[LATENT_KEY], inputs)  # the bicubic upscale (zero residual)
    return ab**0.5 * start_z + (1 - ab) ** 0.5 * noise, {"start": start}, len(ts)


@torch.no_grad()
def upscale_once(
    model: Any,
    lr: Tensor,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    seed: int = 0,
    tile: int = 64,
    overlap: int = 16,
    strength: float = 1.0,
    detail_transfer: bool = True,
    progress: Progress | None = None,
    precision: str = "fp32",
) -> Tensor:
    """Super-resolve ``lr`` (3, h, w) in [-1, 1] to (3, s*h, s*w) in [-1, 1] (see the module doc).

    ``tile`` and ``overlap`` are in latent cells (one cell is f output pixels). ``strength`` < 1
    (DDIM only) starts sampling at t = strength * T from the latent of the bicubic upscale noised
    to that level (SDEdit) instead of from pure noise: less is invented, more is kept of the
    input. ``detail_transfer`` (residual models only) returns the bicubic upscale plus the
    decoded difference D(z) - D(z_bicubic) instead of D(z), so the autoencoder's own error on
    the bicubic content cancels out. ``progress(done, total)`` counts UNet tile evaluations,
    then decoder tiles. The model runs where its weights are, the UNet and decoder under the autocast
    of ``precision`` (z_T is drawn on the CPU); the result is float32, on ``lr``'s device.
    """
    _check_args(model, lr, sampler, strength, tile, overlap)
    s, f = sr_scale(model), model.autoencoder.config.downsample_factor
    fn, device = get_sampler(sampler), module_device(model.unet)
    autocast(precision, device)  # refuses a precision the device cannot do, before any step
    padded, (h, w) = pad_to_multiple(lr.float().to(device), input_multiple(model))
    lh, lw = padded.shape[-2] * s // f, padded.shape[-1] * s // f
    latent = strength < 1.0 or model.config.residual
    inputs = _inputs(model, padded[None], (lh, lw), tile=tile, overlap=overlap, latent=latent)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, model.latent_shape[0], lh, lw), generator=g).to(device)
    noise, extra, runs = _start(model, inputs, noise, strength, steps)
    per_pass = count_tiles(lh, lw, tile, overlap)  # tiles of one UNet step, or of one decode
    transfer = detail_transfer and model.config.residual
    total = (runs + (2 if transfer else 1)) * per_pass
    on_step = (lambda i, _n, _z: progress((i + 1) * per_pass, total)) if progress else None
    with autocast(precision, device):
        z = _sample(
            model, fn, inputs, noise, g, steps=steps, eta=eta, tile=tile, overlap=overlap, extra=extra, on_step=on_step
        )
        decode = _tiled_decoder(model, tile, overlap, progress, done=runs * per_pass, total=total)
        image = decode(z).float()
        if transfer:
            image = upscale_image(padded[None], (lh * f, lw * f)) + image - decode(inputs[LATENT_KEY]).float()
    return crop_to(image[0], h * s, w * s).clamp(-1, 1).to(lr.device)


def _sample(
    model: Any,
    fn: Callable[..., Tensor],
    inputs: dict,
    z_T: Tensor,
    generator: torch.Generator,
    *,
    steps: int,
    eta: float,
    tile: int,
    overlap: int,
    extra: dict,
    on_step: Callable[[int, int, Tensor], None] | None,
) -> Tensor:
    """The sampler ``fn`` run from ``z_T`` on the whole latent, the UNet evaluated in overlapping,
    blended tiles (steps 2 to 4 of the module doc); the latent to decode."""
    model_fn = tiled_model_fn(model, model.cond(inputs), tile=tile, overlap=overlap)
    prediction = model.config.diffusion.prediction
    z = fn(
        model_fn,
        model.schedule,
        z_T,
        steps=steps,
        prediction=prediction,
        eta=eta,
        generator=generator,
        callback=on_step,
        **extra,
    )
    return model.from_target(z, inputs)


def _tiled_decoder(
    model: Any, tile: int, overlap: int, progress: Progress | None, *, done: int, total: int
) -> Callable[[Tensor], Tensor]:
    """``decode(z)``: the autoencoder's decoder applied in overlapping, blended tiles of ``tile``
    latent cells; each call goes on with ``progress(done, total)`` by one count per tile."""
    f = model.autoencoder.config.downsample_factor
    counted = done

    def decode(latent: Tensor) -> Tensor:
        nonlocal counted
        base = counted
        report = (lambda i, _n: progress(base + i, total)) if progress else None
        out = tiled_apply(
            lambda zt, _at: model.decode(zt), latent, tile=tile, overlap=overlap, scale=f, progress=report
        )
        counted += count_tiles(latent.shape[-2], latent.shape[-1], tile, overlap)
        return out

    return decode


__all__ = ["back_projection", "input_multiple", "sr_scale", "tiled_model_fn", "upscale", "upscale_once"]
