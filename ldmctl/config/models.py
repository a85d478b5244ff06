"""The model configs a checkpoint stores (``to_dict`` JSON in its metadata): change them only compatibly.

An autoencoder checkpoint holds an :class:`AutoencoderConfig`; an LDM checkpoint holds an
:class:`LDMConfig` (its UNet, diffusion process, latent and conditioner specs) beside it.
``tests/test_compat.py`` loads checkpoints written before any change and samples them bit-identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AEKind = Literal["kl", "vq"]


@dataclass(frozen=True)
class AutoencoderConfig:
    """First-stage autoencoder (Rombach et al. 2022, §3.1). f = 2 ** (len(channel_mult) - 1)."""

    kind: AEKind = "kl"  # kl: AutoencoderKL; vq: VQModel
    in_channels: int = 3  # image channels
    base_channels: int = 64  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multipliers per level; sets f
    num_res_blocks: int = 2  # ResNet blocks per encoder level (decoder: one more)
    z_channels: int = 4  # latent channels (KL)
    # KL only. posterior_logvar_init: 0 starts q(z|x) with unit variance (very noisy latents).
    # linear_shortcut: a linear path from each f x f pixel patch to the latent mean and back,
    # beside the deep encoder/decoder; train-ae initialises it with a whitened PCA of training
    # patches and the deep path's output layers at zero, so training starts from the best linear
    # autoencoder and the deep path learns what it misses (docs/autoencoder.md)
    posterior_logvar_init: float = 0.0  # initial posterior log-variance (KL)
    linear_shortcut: bool = False  # PCA-initialised linear patch path beside the coders (KL)
    # extra self-attention at these LEVEL INDICES (0 = full resolution, i = 1/2**i of it),
    # not pixel sizes, so the architecture does not depend on the training image size
    attn_resolutions: tuple[int, ...] = ()  # level indices with extra self-attention
    mid_attention: bool = True  # self-attention in the middle block (LDM default)
    dropout: float = 0.0  # in the ResNet blocks
    norm_groups: int = 32  # GroupNorm groups; must divide every width
    # VQ only (VQModel): codebook and commitment (van den Oord et al. 2017, eq. 3)
    n_embed: int = 1024  # codebook size (VQ)
    embed_dim: int = 4  # codebook vector width; the latent has this many channels for VQ
    vq_beta: float = 0.25  # commitment weight beta (VQ)
    vq_restart_dead: bool = True  # re-seed unused codes from encoder outputs
    vq_restart_every: int = 100  # training steps between dead-code restarts

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_channels(self) -> int:
        return self.embed_dim if self.kind == "vq" else self.z_channels


@dataclass(frozen=True)
class UNetConfig:
    """Time-conditional denoising UNet (ADM / LDM style); conditioning widths are derived.

    The four ``*_channels``/``*_dim`` conditioning fields are filled in by the conditioners a
    model is built with (0 = that entry point is absent); the UNet never knows who feeds them.
    """

    in_channels: int = 4  # latent channels of z_t (the conv_in also takes concat_channels)
    out_channels: int = 0  # 0: same as in_channels
    model_channels: int = 64  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 4)  # width multipliers per level (one 2x down per level)
    num_res_blocks: int = 2  # ResBlocks per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...] = (1, 2)  # level indices with a SpatialTransformer after each ResBlock
    mid_attention: bool = True  # SpatialTransformer between the two middle ResBlocks
    position_embedding: bool = False  # add 2-D sinusoidal positions to the image tokens of every SpatialTransformer
    head_channels: int = 32  # width of one attention head (heads = width // head_channels)
    num_heads: int = 0  # > 0: this many heads everywhere instead of head_channels
    transformer_depth: int = 1  # transformer blocks per SpatialTransformer
    ff_mult: int = 4  # GEGLU feed-forward inner width multiplier
    dropout: float = 0.0  # in the ResBlocks
    norm_groups: int = 32  # GroupNorm groups; must divide every width
    scale_shift_norm: bool = False  # time embedding as GroupNorm scale and shift (ADM) instead of a bias
    conv_resample: bool = True  # strided conv / nearest + conv; False: average pool / nearest
    time_embed_mult: int = 4  # timestep-embedding MLP width = time_embed_mult * model_channels
    concat_channels: int = 0  # extra input channels joined to z_t (concat conditioners)
    add_dim: int = 0  # width of the vector added to the time embedding (add conditioners)
    context_dim: int = 0  # cross-attention context width (crossattn conditioners)
    token_dim: int = 0  # width of tokens joined to the self-attention sequence (tokens conditioners)
    checkpointing: bool = False  # gradient checkpointing of each block (less memory, more compute)
    # what pretrained models (Stable Diffusion, CompVis, diffusers; docs/pretrained.md) need
    norm_eps: float = 1e-6  # GroupNorm eps of the ResBlocks and the output norm (Stable Diffusion: 1e-5)
    downsample_padding: int = 0  # 0: asymmetric (0, 1, 0, 1) pad before the stride-2 conv; 1: symmetric (SD)
    upcast_attention: bool = False  # attention scores and softmax in float32 under bf16/fp16 (SD 2.1)
    linear_projection: bool = True  # False: the original files hold proj_in/proj_out as 1x1 convs (SD 1.x)


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and the training objective (Ho et al. 2020; Rombach et al. 2022)."""

    schedule: Literal["linear", "sqrt_linear", "cosine"] = "sqrt_linear"  # beta schedule (sqrt_linear: LDM's)
    timesteps: int = 1000  # T, diffusion steps of training
    linear_start: float = 0.00085  # first beta (linear, sqrt_linear)
    linear_end: float = 0.012  # last beta (linear, sqrt_linear)
    prediction: Literal["eps", "x0", "v"] = "eps"  # what the UNet predicts
    loss: Literal["l2", "l1"] = "l2"  # norm of L_simple
    vlb_weight: float = 0.0  # lambda of L_vlb (CompVis original_elbo_weight); 0 = L_simple only
    min_snr_gamma: float = 0.0  # > 0: min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5
    offset_noise: float = 0.0  # > 0: add this much per-channel constant noise (offset noise)
    timestep_bias_portion: float = 0.0  # > 0: this share of each batch draws t from the bias range, the rest all T
    timestep_bias_begin: int = 750  # first timestep of the bias range (the high-noise steps decide the layout)
    timestep_bias_end: int = 0  # end of the bias range, exclusive; 0 = T


@dataclass(frozen=True)
class ConditionerSpec:
    """One conditioner of a model: a registered plugin name and its options."""

    name: str  # a registered conditioner name (ldmctl plugins lists them), never an import path
    options: dict[str, Any] = field(default_factory=dict)  # fields of that conditioner's Config
    dropout: float = 0.1  # probability of replacing the condition by its null output in training (CFG)


@dataclass(frozen=True)
class LDMConfig:
    """A latent diffusion model: its UNet, its diffusion process and the latent it lives in."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    latent_size: int = 16  # side of the latent the model is trained (and by default sampled) at
    scale_factor: float = 1.0  # latents are multiplied by this (from the autoencoder checkpoint)
    conditioners: tuple[ConditionerSpec, ...] = ()  # conditioning plugins (empty: unconditional)
    sr_scale: int = 0  # > 0: a super-resolution model; its low-res input is this many times smaller
    residual: bool = False  # super-resolution: diffuse (z0 - latent of the bicubic upscale) * residual_scale
    residual_scale: float = 1.0  # 1/std of those residuals, measured when training starts (like scale_factor)
    inpaint: bool = False  # an inpainting model: the UNet also reads the mask and the masked image's latent


__all__ = ["AEKind", "AutoencoderConfig", "ConditionerSpec", "DiffusionConfig", "LDMConfig", "UNetConfig"]
