"""KL-regularised autoencoder (Rombach et al. 2022, §3.1 "KL-reg.").

The encoder predicts a diagonal Gaussian posterior q(z|x) over a (B, z_channels, H/f, W/f)
latent; a slight KL penalty towards N(0, I) (``AELossConfig.kl_weight`` ~ 1e-6) keeps the latent
well scaled without forcing it to be a VAE prior. ``encode`` returns the posterior mode (or a
sample), ``decode`` maps a latent back to pixels. Neither applies ``scale_factor``: the latent
diffusion model multiplies by it, and the trainer sets it to 1 / std of the latents.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmctl.autoencoder.coders import AEOutput, Decoder, Encoder
from ldmctl.config import AutoencoderConfig
from ldmctl.errors import ConfigError


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) from a (B, 2C, h, w) tensor holding [mean, logvar] on dim 1.

    ``mean``/``std``/``sample`` keep the input's dtype; ``kl`` and ``nll`` are computed in float32
    so that bf16 autocast does not lose the sum over thousands of latent entries.
    """

    def __init__(self, parameters: Tensor) -> None:
        self.parameters = parameters
        self.mean, logvar = parameters.chunk(2, dim=1)  # (B, C, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)) -> Tensor:
        """Draw mean + std * eps, eps ~ N(0, I) from ``generator`` (on any device). With
        ``shard = (rank, world)`` eps is drawn for ``world`` times the batch and rows
        ``rank::world`` are used (data-parallel ranks share one random stream)."""
        rank, world = shard
        device = generator.device if generator is not None else self.mean.device
        shape = (self.mean.shape[0] * world, *self.mean.shape[1:])
        eps = torch.randn(shape, generator=generator, device=device, dtype=self.mean.dtype)[rank::world]
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> Tensor:
        """KL(self || other) summed over all but the batch dim, (B,); other defaults to N(0, I)."""
        dims = tuple(range(1, self.mean.ndim))
        mean, var, logvar = self.mean.float(), self.var.float(), self.logvar.float()
        if other is None:
            return 0.5 * (mean.pow(2) + var - 1.0 - logvar).sum(dim=dims)
        o_mean, o_var, o_logvar = other.mean.float(), other.var.float(), other.logvar.float()
        terms = (mean - o_mean).pow(2) / o_var + var / o_var - 1.0 - logvar + o_logvar
        return 0.5 * terms.sum(dim=dims)

    def nll(self, sample: Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> Tensor:
        """Negative log-likelihood of ``sample`` under this Gaussian, summed over ``dims``."""
        diff = sample.float() - self.mean.float()
        logvar = self.logvar.float()
        return 0.5 * (math.log(2.0 * math.pi) + logvar + diff.pow(2) / logvar.exp()).sum(dim=dims)


class AutoencoderKL(nn.Module):
    """Encoder -> 1x1 quant_conv -> Gaussian posterior -> 1x1 post_quant_conv -> Decoder."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        if cfg.kind != "kl":
            raise ConfigError(f"AutoencoderKL needs model.kind='kl', got {cfg.kind!r}")
        self.config = cfg
        z = cfg.z_channels
        self.encoder = Encoder(cfg, out_channels=2 * z)  # mean and log-variance ("double_z")
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, kernel_size=1)
        if cfg.posterior_logvar_init:
            with torch.no_grad():  # shift the log-variance half of [mean, logvar]
                self.quant_conv.bias[z:] += cfg.posterior_logvar_init
        self.post_quant_conv = nn.Conv2d(z, z, kernel_size=1)
        self.decoder = Decoder(cfg, in_channels=z)
        f, c = cfg.downsample_factor, cfg.in_channels
        # linear_shortcut: latent mean += A * patches(x); image += patches^-1(B z) (see init_linear_shortcut)
        self.shortcut_in = nn.Conv2d(c * f * f, z, kernel_size=1) if cfg.linear_shortcut else None
        self.shortcut_out = nn.Conv2d(z, c * f * f, kernel_size=1) if cfg.linear_shortcut else None
        self.register_buffer("scale_factor", torch.tensor(1.0, dtype=torch.float32))

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's output conv weight (for the adaptive GAN weight of Esser et al. 2021)."""
        return self.decoder.conv_out.weight

    def posterior(self, x: Tensor) -> DiagonalGaussianDistribution:
        """q(z|x) for images x (B, C, H, W) in [-1, 1]."""
        params = self.quant_conv(self.encoder(x))  # (B, 2z, H/f, W/f): [mean, logvar]
        if self.shortcut_in is not None:
            f = self.config.downsample_factor  # the deep path floors odd sizes; crop to match
            x = x[..., : x.shape[-2] // f * f, : x.shape[-1] // f * f]
            linear = self.shortcut_in(F.pixel_unshuffle(x, f))  # (B, z, h, w)
            params = params + torch.cat([linear, torch.zeros_like(linear)], dim=1)
        return DiagonalGaussianDistribution(params)

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Return the posterior mode, or a sample when ``sample`` is true: (B, z, H/f, W/f)."""
        post = self.posterior(x)
        return post.sample(generator) if sample else post.mode()

    def decode(self, z: Tensor) -> Tensor:
        """Map latents (B, z, h, w) to images (B, C, h*f, w*f)."""
        x = self.decoder(self.post_quant_conv(z))
        if self.shortcut_out is not None:
            x = x + F.pixel_shuffle(self.shortcut_out(z), self.config.downsample_factor)
        return x

    @torch.no_grad()
    def init_linear_shortcut(self, images: Tensor) -> None:
        """Start training from the best linear autoencoder of ``images`` (B, C, H, W), H and W
        multiples of f: the shortcut becomes a whitened PCA of their f x f patches (latent
        channel k = the k-th principal component, unit variance over the patches; the decoder
        adds back the mean patch and the z leading components), and the deep path's output layers
        start at zero, so at step 0 the model *is* that PCA. The posterior log-variance starts at
        ``posterior_logvar_init``. Does nothing for a model without ``linear_shortcut``.
        """
        if self.shortcut_in is None or self.shortcut_out is None:
            return
        f, z = self.config.downsample_factor, self.config.z_channels
        patches = F.pixel_unshuffle(images.float(), f).permute(0, 2, 3, 1).reshape(-1, self.shortcut_in.in_channels)
        patches = patches.double()
        mean = patches.mean(dim=0)
        cov = (patches - mean).T @ (patches - mean) / max(len(patches) - 1, 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        order = eigvals.argsort(descending=True)[:z]
        # fix each component's sign (largest entry positive) so the init does not depend on the solver
        vecs = eigvecs[:, order]
        vecs = vecs * vecs.gather(0, vecs.abs().argmax(dim=0, keepdim=True)).sign()
        std = eigvals[order].clamp_min(1e-12).sqrt()
        dtype = self.shortcut_in.weight.dtype
        self.shortcut_in.weight.copy_((vecs / std).T.to(dtype)[:, :, None, None])
        self.shortcut_in.bias.copy_((-(mean @ vecs) / std).to(dtype))
        self.shortcut_out.weight.copy_((vecs * std).to(dtype)[:, :, None, None])
        self.shortcut_out.bias.copy_(mean.to(dtype))
        for conv in (self.encoder.conv_out, self.decoder.conv_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.quant_conv.bias.zero_()
        self.quant_conv.bias[z:] = self.config.posterior_logvar_init

    def forward(
        self, x: Tensor, *, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)
    ) -> AEOutput:
        """Training pass: reconstruct from a posterior sample; reg_loss is the mean per-image KL."""
        post = self.posterior(x)
        recon = self.decode(post.sample(generator, shard))
        kl = post.kl().mean()
        return AEOutput(recon=recon, reg_loss=kl, stats={"kl": float(kl.detach())})


__all__ = ["AutoencoderKL", "DiagonalGaussianDistribution"]
