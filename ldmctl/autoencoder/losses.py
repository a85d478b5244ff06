"""First-stage training objective: L1 + LPIPS, learned-variance NLL, KL / codebook, PatchGAN.

Follows the LDM ``LPIPSWithDiscriminator`` recipe (Rombach et al. 2022, §3.1 and appendix G;
Esser et al. 2021, eq. 4-7):

1. rec = rec_weight * |x - x_hat| + perceptual_weight * LPIPS(x, x_hat)  (per pixel; LPIPS is
   broadcast over pixels, so it carries C*H*W times its value after the sum below);
   ``rec_loss = "l2"`` uses (x - x_hat)^2 instead of |x - x_hat|
2. nll = sum_pixels(rec / exp(logvar) + logvar), mean over the batch (VQ: mean over pixels
   too, as in taming's VQ loss); ``logvar`` is learned
3. + kl_weight * KL (KL models) or codebook_weight * codebook loss (VQ models)
4. + d_weight * disc_factor * (-mean D(x_hat)) once ``step >= disc_start``, where d_weight
   balances the gradients of nll and the GAN term at the decoder's last layer (eq. 7).

The LPIPS network is injected (``perceptual``) so tests and ``--perceptual none`` need no
weights. It is held as a submodule (so ``.to(device)`` moves it) but left out of
``state_dict``: it is frozen, pretrained and rebuilt from its own files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmctl.autoencoder.coders import AEOutput
from ldmctl.autoencoder.discriminator import NLayerDiscriminator
from ldmctl.config import AELossConfig
from ldmctl.errors import ConfigError


def adaptive_weight(
    nll: Tensor,
    g_loss: Tensor,
    last_layer: nn.Parameter,
    disc_weight: float,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Esser et al. 2021, eq. 7: ||grad_L(nll)|| / (||grad_L(g_loss)|| + 1e-4), clamped to
    [0, 1e4], detached, times ``disc_weight`` (L = the decoder's last layer). ``reduce`` maps
    each local gradient to the global one (data-parallel training averages it across ranks)."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if reduce is not None:
        nll_grad, g_grad = reduce(nll_grad), reduce(g_grad)
    weight = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 * (mean softplus(-D(x)) + mean softplus(D(x_hat))): the non-saturating GAN loss."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


_D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


class AELoss(nn.Module):
    """Holds the learned ``logvar`` and the PatchGAN ``discriminator``; computes both losses.

    Optimise ``logvar`` together with the autoencoder and ``discriminator.parameters()`` with
    the discriminator optimizer; ``parameters()`` also lists the frozen LPIPS weights
    (requires_grad False) when a perceptual net is given.
    """

    def __init__(
        self, cfg: AELossConfig, *, kind: Literal["kl", "vq"], perceptual: nn.Module | None = None, in_channels: int = 3
    ) -> None:
        super().__init__()
        if kind not in ("kl", "vq"):
            raise ConfigError(f"AELoss kind {kind!r} is not one of ['kl', 'vq']")
        if cfg.disc_loss not in _D_LOSSES:
            raise ConfigError(f"loss.disc_loss={cfg.disc_loss!r} is not one of {sorted(_D_LOSSES)}")
        self.cfg, self.kind = cfg, kind
        self.logvar = nn.Parameter(torch.tensor(float(cfg.logvar_init)))
        self.discriminator = NLayerDiscriminator(in_channels, cfg.disc_channels, cfg.disc_layers)
        self.grad_reduce: Callable[[Tensor], Tensor] | None = None  # set by data-parallel training
        self.perceptual = perceptual
        # public since torch 2.4 (same hook signature as the older private name)
        getattr(self, "register_state_dict_post_hook", self._register_state_dict_hook)(_drop_perceptual)
        self.register_load_state_dict_post_hook(_ignore_missing_perceptual)

    def gan_active(self, step: int) -> bool:
        """Whether the GAN terms (generator and discriminator) are on at ``step``."""
        return step >= self.cfg.disc_start

    def generator_loss(
        self, x: Tensor, out: AEOutput, *, step: int, last_layer: nn.Parameter | None
    ) -> tuple[Tensor, dict[str, float]]:
        """Autoencoder objective for images x and the model's output; returns (loss, logs).

        d_weight: adaptive (eq. 7) when ``last_layer`` is given and a graph exists; the fixed
        ``disc_weight`` when ``last_layer`` is None; 0 when gradients are off (evaluation, as in
        LDM), so a validation loss measures reconstruction + regulariser only.
        """
        cfg, recon = self.cfg, out.recon
        err = (x - recon).abs() if cfg.rec_loss == "l1" else (x - recon).square()  # (B, C, H, W)
        rec = cfg.rec_weight * err
        logs: dict[str, float] = {"rec": float(err.detach().mean())}
        if self.perceptual is not None and cfg.perceptual_weight > 0:
            p = self.perceptual(x, recon)  # (B,)
            rec = rec + cfg.perceptual_weight * p[:, None, None, None]
            logs["p"] = float(p.detach().mean())
        per_pixel = rec / torch.exp(self.logvar) + self.logvar
        # KL: summed over pixels, mean over the batch (LDM's LPIPSWithDiscriminator). VQ: mean
        # over everything (taming's VQ loss), so the mean-reduced codebook/commitment term keeps
        # its intended weight against reconstruction.
        nll = per_pixel.sum() / x.shape[0] if self.kind == "kl" else per_pixel.mean()
        reg_weight = cfg.kl_weight if self.kind == "kl" else cfg.codebook_weight
        loss = nll + reg_weight * out.reg_loss
        g_loss, d_weight = nll.new_zeros(()), nll.new_zeros(())
        if self.gan_active(step) and cfg.disc_factor > 0:
            g_loss = -self.discriminator(recon).mean()
            d_weight = self._d_weight(nll, g_loss, last_layer)
            loss = loss + d_weight * cfg.disc_factor * g_loss
        logs.update(
            {
                "nll": float(nll.detach()),
                self.kind: float(out.reg_loss.detach()),
                "g": float(g_loss.detach()),
                "d_weight": float(d_weight),
                "logvar": float(self.logvar.detach()),
                "loss": float(loss.detach()),
            }
        )
        return loss, logs

    def _d_weight(self, nll: Tensor, g_loss: Tensor, last_layer: nn.Parameter | None) -> Tensor:
        if last_layer is None:
            return nll.new_tensor(self.cfg.disc_weight)
        if not (torch.is_grad_enabled() and nll.requires_grad and g_loss.requires_grad):
            return nll.new_zeros(())
        return adaptive_weight(nll, g_loss, last_layer, self.cfg.disc_weight, reduce=self.grad_reduce)

    def discriminator_loss(self, x: Tensor, recon: Tensor, *, step: int) -> tuple[Tensor, dict[str, float]]:
        """PatchGAN loss on real x and detached reconstructions; zero before ``disc_start``."""
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(recon.detach())
        factor = self.cfg.disc_factor if self.gan_active(step) else 0.0
        d_loss = factor * _D_LOSSES[self.cfg.disc_loss](logits_real, logits_fake)
        logs = {
            "d": float(d_loss.detach()),
            "logits_real": float(logits_real.detach().mean()),
            "logits_fake": float(logits_fake.detach().mean()),
        }
        return d_loss, logs


def _drop_perceptual(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict hook: leave the frozen LPIPS weights out of AELoss checkpoints."""
    for key in [k for k in state if k.startswith(prefix + "perceptual.")]:
        del state[key]


def _ignore_missing_perceptual(module: nn.Module, incompatible: Any) -> None:
    """load_state_dict hook: a checkpoint without LPIPS weights loads strictly."""
    keys = incompatible.missing_keys
    keys[:] = [k for k in keys if not k.startswith("perceptual.") and ".perceptual." not in k]


__all__ = ["AELoss", "adaptive_weight", "hinge_d_loss", "vanilla_d_loss"]
