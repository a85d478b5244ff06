"""Vector-quantised autoencoder (Rombach et al. 2022, §3.1 "VQ-reg."; van den Oord et al. 2017).

Following the LDM convention the quantiser sits at the start of the decoder: ``encode`` returns
the continuous pre-quantisation latent (B, embed_dim, H/f, W/f) that the diffusion model works
on, and ``decode`` quantises it before decoding. Codes that go unused between two calls of
``restart_dead_codes`` are re-seeded from random encoder outputs so the codebook does not
collapse onto a few entries (Dhariwal et al. 2020, Jukebox, §3.1 "random restarts").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ldmctl.autoencoder.coders import AEOutput, Decoder, Encoder
from ldmctl.config import AutoencoderConfig
from ldmctl.errors import ConfigError


class Quantized(NamedTuple):
    z_q: Tensor  # (B, D, h, w) straight-through quantised latent
    loss: Tensor  # scalar codebook + beta * commitment loss
    indices: Tensor  # (B, h, w) int64 code indices
    perplexity: Tensor  # scalar, exp(entropy of code usage in the batch), in [1, n_embed]
    usage: Tensor  # scalar, fraction of codes used in the batch, in (0, 1]


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with a straight-through estimator (van den Oord et al. 2017).

    loss = ||sg[z] - e||^2 + beta * ||z - sg[e]||^2 (eq. 3, as means over latent entries).
    ``usage_count`` (a non-persistent buffer) counts how often each code was picked since the
    last restart; the model adds to it in training forward passes only.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)
        self.register_buffer("usage_count", torch.zeros(n_embed, dtype=torch.long), persistent=False)

    def nearest(self, z: Tensor) -> Tensor:
        """Indices (B, h, w) of the closest code (L2) to each latent vector of z (B, D, h, w)."""
        b, _, h, w = z.shape
        flat = rearrange(z, "b d h w -> (b h w) d")
        # distances in float32 even under bf16 autocast: argmin over near-ties needs precision
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat, codes = flat.float(), self.embedding.weight.float()
            dist = (
                flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ codes.t() + codes.pow(2).sum(1)[None, :]
            )  # (BHW, K), ||z||^2 - 2 z.e + ||e||^2
            idx = dist.argmin(dim=1)
        return rearrange(idx, "(b h w) -> b h w", b=b, h=h, w=w)

    def forward(self, z: Tensor) -> Quantized:
        idx = self.nearest(z)
        e = rearrange(self.embedding(idx), "b h w d -> b d h w").to(z.dtype)
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        z_q = z + (e - z).detach()  # straight-through: forward e, backward identity
        counts = torch.bincount(idx.flatten(), minlength=self.n_embed).float()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        usage = (counts > 0).float().mean()
        return Quantized(z_q, loss, idx, perplexity, usage)

    @torch.no_grad()
    def record_usage(self, indices: Tensor) -> None:
        """Add the codes in ``indices`` to ``usage_count``."""
        self.usage_count += torch.bincount(indices.flatten(), minlength=self.n_embed)

    @torch.no_grad()
    def restart_dead_codes(self, z: Tensor, *, generator: torch.Generator | None = None) -> int:
        """Re-seed every code unused since the last call with a random vector from ``z``.

        ``z`` is (B, D, h, w) or (N, D). Vectors are drawn without replacement when there are
        enough of them. Resets ``usage_count`` and returns how many codes were re-seeded.
        """
        vectors = rearrange(z, "b d h w -> (b h w) d") if z.ndim == 4 else z
        dead = torch.nonzero(self.usage_count == 0).flatten()
        self.usage_count.zero_()
        n_dead, n_vec = int(dead.numel()), int(vectors.shape[0])
        if n_dead == 0 or n_vec == 0:
            return 0
        device = generator.device if generator is not None else vectors.device
        if n_vec >= n_dead:
            pick = torch.randperm(n_vec, generator=generator, device=device)[:n_dead]
        else:
            pick = torch.randint(n_vec, (n_dead,), generator=generator, device=device)
        weight = self.embedding.weight
        weight[dead.to(weight.device)] = vectors[pick.to(vectors.device)].to(weight)
        return n_dead


class VQModel(nn.Module):
    """Encoder -> quant_conv -> (latent) -> VectorQuantizer -> post_quant_conv -> Decoder."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        if cfg.kind != "vq":
            raise ConfigError(f"VQModel needs model.kind='vq', got {cfg.kind!r}")
        self.config = cfg
        self.encoder = Encoder(cfg, out_channels=cfg.z_channels)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, kernel_size=1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.vq_beta)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, kernel_size=1)
        self.decoder = Decoder(cfg, in_channels=cfg.z_channels)
        self.register_buffer("scale_factor", torch.tensor(1.0, dtype=torch.float32))

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's output conv weight (for the adaptive GAN weight of Esser et al. 2021)."""
        return self.decoder.conv_out.weight

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Return the continuous pre-quantisation latent (B, embed_dim, H/f, W/f).

        ``sample`` and ``generator`` are accepted for interface parity with AutoencoderKL and
        ignored: VQ encoding is deterministic.
        """
        return self.quant_conv(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        """Quantise latents (B, embed_dim, h, w) to their nearest codes, then decode to images."""
        return self._decode_quantized(self.quantize(z).z_q)

    def _decode_quantized(self, z_q: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def forward(
        self, x: Tensor, *, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)
    ) -> AEOutput:
        """Training pass; reg_loss is the codebook + commitment loss. Records code usage.

        ``generator`` is accepted for parity with AutoencoderKL; VQ has no sampling.
        """
        q = self.quantize(self.encode(x))
        if self.training:
            self.quantize.record_usage(q.indices)
        stats = {"perplexity": float(q.perplexity), "usage": float(q.usage)}
        return AEOutput(recon=self._decode_quantized(q.z_q), reg_loss=q.loss, stats=stats)

    def restart_dead_codes(self, z_batch: Tensor, *, generator: torch.Generator | None = None) -> int:
        """Re-seed codes unused since the last call from ``z_batch`` = ``encode(x)`` outputs.

        Does nothing (returns 0) when ``config.vq_restart_dead`` is false; otherwise returns the
        number of codes re-seeded. The trainer calls it every ``config.vq_restart_every`` steps.
        """
        if not self.config.vq_restart_dead:
            return 0
        return self.quantize.restart_dead_codes(z_batch.detach(), generator=generator)


__all__ = ["Quantized", "VQModel", "VectorQuantizer"]
