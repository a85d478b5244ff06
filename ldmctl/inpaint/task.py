"""Inpainting as a task of the composed model (Stable Diffusion's inpainting UNet): its batch keys
and the inputs it derives.

An inpainting model (``LDMConfig.inpaint``) is an ordinary :class:`~ldmctl.diffusion.ldm.LatentDiffusion`
whose UNet also reads, joined to z_t on the channel axis, the mask and the latent of the masked
image (``mask-concat`` and ``masked-latent-concat``, ``plugins/ldmctl_conditioners/inpaint.py``).
This module is the one place that knows the batch keys of that task:

* ``image``         (B, 3, H, W) in [-1, 1]: the image to inpaint (a training item's image; the
  init image at sample time);
* ``inpaint_mask``  (B, 1, H, W) in {0, 1}, 1 = repaint (:class:`~ldmctl.inpaint.masks.InpaintDataset`
  draws random ones for training; the user's mask at sample time);
* ``masked_latent`` (B, C, H/f, W/f): ``E(image * (1 - mask)) * scale_factor``, the masked pixels
  set to 0 (grey) before encoding, as Stable Diffusion does; derived here, never stored.

The diffusion target is ``z0`` itself. The composed model calls this through its ``task``
(duck-typed, so this module imports no model code).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import Tensor

from ldmctl.config import ConditionerSpec, LDMConfig, LDMTrainingConfig
from ldmctl.errors import ConfigError, InputError

IMAGE_KEY = "image"  # the image to inpaint
MASK_KEY = "inpaint_mask"  # 1 = repaint, 0 = keep
MASKED_LATENT_KEY = "masked_latent"  # the latent of the masked image, derived from the two above
CONDITIONERS = ("mask-concat", "masked-latent-concat")  # what an inpainting model's UNet reads, in this order
MISSING = "this is an inpainting model: give --init-image and --mask"
MISSING_HINT = "white pixels of the mask are repainted; with --input: --input image=IMG --input inpaint_mask=MASK"


class InpaintTask:
    """Derived inputs of an inpainting model (see the module doc); the target is ``z0`` itself."""

    def __init__(self, cfg: LDMConfig, input_keys: set[str]) -> None:
        self.needs_latent = MASKED_LATENT_KEY in input_keys

    def derived_keys(self) -> frozenset[str]:
        """Batch keys this task derives itself (a data set never has to provide them)."""
        return frozenset({MASKED_LATENT_KEY})

    def source_keys(self, input_keys: list[str]) -> tuple[str, ...]:
        """The data keys the derived inputs are made from: the mask, and the image when it is encoded."""
        return (IMAGE_KEY, MASK_KEY) if self.needs_latent else (MASK_KEY,)

    def inputs(self, model: Any, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """``batch`` plus ``masked_latent`` (when a conditioner reads it) and ``latent_hw``. The image
        must be the output's size: ``batch["latent_hw"]`` times f, or the trained size when not
        given. InputError when the mask or the image is missing or of another size."""
        mask = batch.get(MASK_KEY)
        if not isinstance(mask, Tensor):
            raise InputError(MISSING, hint=MISSING_HINT)
        if MASKED_LATENT_KEY in batch or not self.needs_latent:
            return batch
        image = batch.get(IMAGE_KEY)
        if not isinstance(image, Tensor):
            raise InputError(MISSING, hint=MISSING_HINT)
        _check_pair(image, mask)
        f, s = model.autoencoder.config.downsample_factor, model.config.latent_size
        h, w = image.shape[-2:]
        hw = tuple(batch.get("latent_hw") or (s, s))
        if (h, w) != (hw[0] * f, hw[1] * f):
            raise InputError(
                f"the image to inpaint is {h}x{w} px (HxW), but the output is {hw[0] * f}x{hw[1] * f} px",
                hint="give it with --init-image (the output then has its size), or an image of the output size",
            )
        device = next(model.autoencoder.parameters()).device
        keep = (mask < 0.5).to(device=device, dtype=image.dtype)
        z = model.encode(image.to(device) * keep)  # masked pixels set to 0 (grey) before encoding
        return {**batch, MASKED_LATENT_KEY: z, "latent_hw": hw}

    def to_target(self, z0: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """The diffusion runs on ``z0`` itself."""
        return z0

    def from_target(self, z: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """The inverse of :meth:`to_target`: the identity."""
        return z

    def editing_inputs(self, init_image: Tensor | None, mask: Tensor | None) -> dict[str, Tensor]:
        """The entries this model's conditioners read for ``sample --init-image IMG --mask MASK``:
        ``init_image`` in [-1, 1] and ``mask`` (1 = repaint, binarised at 0.5), either one item each,
        (3, H, W) and (1, H, W), or batches, (B, 3, H, W) and (B or 1, 1, H, W); the result has the
        same form. :meth:`inputs` then derives the masked latent. InputError when either is missing
        or the mask repaints nothing (an inpainting model needs both), or their shapes disagree."""
        if init_image is None or mask is None or not bool((mask > 0.5).any()):
            raise InputError(MISSING, hint=MISSING_HINT)
        item = init_image.ndim == 3
        image, m = (init_image[None], mask[None]) if item else (init_image, mask)
        if m.ndim == 4 and image.ndim == 4 and m.shape[0] == 1 < image.shape[0]:
            m = m.expand(image.shape[0], -1, -1, -1)
        _check_pair(image, m)
        out = {IMAGE_KEY: image.float().clamp(-1, 1), MASK_KEY: (m > 0.5).float()}
        return {k: v[0] for k, v in out.items()} if item else out

    def uncond_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """What the unconditional branch of guidance keeps from the derived ``inputs``: the mask and
        the masked latent are inputs, not conditions (pass as ``negative`` to ``ConditionerSet.null``)."""
        return {k: inputs[k] for k in (MASK_KEY, MASKED_LATENT_KEY, "latent_hw") if k in inputs}


def _check_pair(image: Tensor, mask: Tensor) -> None:
    """InputError unless ``image`` is (B, 3, H, W) and ``mask`` (B, 1, H, W) of the same B, H, W."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise InputError(f"the image to inpaint must be (B, 3, H, W), got {tuple(image.shape)}")
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise InputError(f"the inpainting mask must be (B, 1, H, W), got {tuple(mask.shape)}")
    if mask.shape[0] != image.shape[0] or mask.shape[-2:] != image.shape[-2:]:
        raise InputError(
            f"the mask {tuple(mask.shape[-2:])} and the image {tuple(image.shape[-2:])} (HxW) differ "
            f"(batch {mask.shape[0]} and {image.shape[0]})",
            hint="give a mask of the image's size",
        )


def with_inpaint_task(cfg: LDMTrainingConfig) -> LDMTrainingConfig:
    """For ``task = inpaint``: mark the model as an inpainting model and make sure its UNet reads the
    mask and the masked latent (``mask-concat`` and ``masked-latent-concat`` are added in front of
    the other conditioners when missing; their condition dropout is always 0). Otherwise refuse
    the inpainting fields. The mask options are checked where masks are drawn (``inpaint.masks``)."""
    from ldmctl.conditioning.registry import canonical_name

    specs = cfg.model.conditioners
    names = {canonical_name(s.name) for s in specs}
    if cfg.task != "inpaint":
        if cfg.model.inpaint or names & set(CONDITIONERS):
            raise ConfigError(
                "model.inpaint and the mask-concat / masked-latent-concat conditioners are for inpainting models",
                hint='set task = "inpaint" (--task inpaint)',
            )
        return cfg
    if cfg.model.sr_scale > 0 or cfg.model.residual:
        raise ConfigError("an inpainting model cannot also be a super-resolution model (model.sr_scale, residual)")
    added = tuple(ConditionerSpec(n, {}, dropout=0.0) for n in CONDITIONERS if n not in names)
    specs = tuple(replace(s, dropout=0.0) if canonical_name(s.name) in CONDITIONERS else s for s in specs)
    return replace(cfg, model=replace(cfg.model, conditioners=(*added, *specs), inpaint=True))


__all__ = ["CONDITIONERS", "IMAGE_KEY", "MASKED_LATENT_KEY", "MASK_KEY", "MISSING", "InpaintTask", "with_inpaint_task"]
