"""The training configs: what ``ldmctl train-ae`` and ``ldmctl train-ldm`` run with (``RUN/config.json``).

Each trainer has its own ``train`` section, so neither carries an option it refuses:
:class:`AETrainConfig` (Muon, the scale-factor sample) and :class:`LDMTrainConfig` (micro-batches,
``torch.compile``, fp16) share the fields of :class:`TrainConfig`. Older runs and checkpoints stored
one shared section with every key; each section's ``legacy`` table says what ``from_dict`` does with
the other trainer's keys there: the value this trainer always ran with is dropped, any other is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ldmctl.config.models import AutoencoderConfig, LDMConfig
from ldmctl.errors import ConfigError

Perceptual = Literal["lpips", "none"]
DiscLoss = Literal["hinge", "vanilla"]


@dataclass(frozen=True)
class AELossConfig:
    """L1 + LPIPS + NLL log-variance + KL / codebook + PatchGAN (Esser et al. 2021; LDM)."""

    rec_loss: Literal["l1", "l2"] = "l1"  # pixel term: absolute (L1) or squared (L2, the error PSNR measures)
    rec_weight: float = 1.0  # weight of the pixel term
    perceptual: Perceptual = "lpips"  # none trains without the LPIPS term
    perceptual_net: Literal["alex", "vgg", "squeeze"] = "alex"  # LPIPS backbone
    perceptual_weight: float = 1.0  # weight of LPIPS against L1
    logvar_init: float = 0.0  # learned log-variance of the NLL weighting
    kl_weight: float = 1e-6  # KL to N(0, I) (KL models)
    codebook_weight: float = 1.0  # codebook + commitment loss (VQ models)
    disc_start: int = 50001  # global step at which the GAN term switches on
    disc_weight: float = 0.5  # scales the adaptive GAN weight
    disc_factor: float = 1.0  # multiplies both GAN losses once active
    disc_loss: DiscLoss = "hinge"  # hinge or vanilla (non-saturating)
    disc_layers: int = 3  # PatchGAN stride-2 layers
    disc_channels: int = 64  # PatchGAN first-layer width


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are cropped."""

    source: str = "builtin:photos"  # a folder or builtin:NAME
    size: int = 64  # training crop size in pixels
    crop: Literal["random", "center"] = "random"  # crop position
    resize: bool = False  # resize the short side to `size` before cropping
    flip: bool = True  # random horizontal flip
    channel_shuffle: bool = False  # random RGB permutation (colour augmentation)
    min_scale: float = 1.0  # random zoom-out: a crop covers size/s source pixels, s uniform in [min_scale, 1]
    rot90: bool = False  # random quarter-turn rotation (with flip: all 8 square symmetries)
    max_pixels: int = 89_478_485  # decompression-bomb guard (PIL's default limit)
    cache_mb: int = 1024  # keep decoded (with resize: resized) folder images in memory up to this many MB; 0: off

    def __post_init__(self) -> None:
        if not 0.0 < self.min_scale <= 1.0:
            raise ConfigError(f"data.min_scale must be in (0, 1], got {self.min_scale}")
        if self.cache_mb < 0:
            raise ConfigError(f"data.cache_mb must be >= 0, got {self.cache_mb}")
        if self.size * self.size > self.max_pixels:  # the decompression-bomb bound holds for crops too
            raise ConfigError(
                f"data.size={self.size}: {self.size}x{self.size} is more than data.max_pixels={self.max_pixels}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings both trainers take (the shared part of their ``train`` sections)."""

    batch_size: int = 8  # images per optimisation step
    max_steps: int = 1000  # total optimisation steps
    lr: float = 1e-4  # peak learning rate (train-ae: generator and discriminator)
    adam_betas: tuple[float, float] = (0.5, 0.9)  # Adam betas (GAN-style default)
    warmup_steps: int = 0  # linear learning-rate warm-up
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine decays to lr * lr_min_ratio
    lr_min_ratio: float = 0.1  # final lr / peak lr for cosine
    seed: int = 0  # init, data order, posterior sampling
    grad_clip: float = 0.0  # 0 disables
    log_every: int = 10  # steps between log.jsonl lines
    sample_every: int = 200  # reconstruction / sample grid PNG
    save_every: int = 500  # steps between checkpoints
    keep_last: int = 2  # step checkpoints kept
    num_workers: int = 0  # DataLoader worker processes
    device: str = "auto"  # auto (this rank's GPU if any, else MPS, else CPU), cpu, cuda, cuda:N or mps
    max_nonfinite: int = 5  # a NaN/inf loss skips its step; this many in a row stop the run

    # keys of the other trainer found in an old shared section: key -> (the value this trainer ran
    # with, dropped; None: any value, dropped) and the message that refuses any other value
    legacy: ClassVar[dict[str, tuple[Any, str]]] = {}


@dataclass(frozen=True)
class AETrainConfig(TrainConfig):
    """The ``train`` section of train-ae: the shared fields, the optimizer choice and the scale-factor sample."""

    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast of the forward pass (CPU/GPU)
    optimizer: Literal["adam", "muon"] = "adam"  # muon: Muon for weight matrices, Adam for the rest
    scale_samples: int = 64  # images used to estimate the latent scale factor

    legacy: ClassVar[dict[str, tuple[Any, str]]] = {
        "grad_accum": (1, "train.grad_accum = {value} is a train-ldm option; train-ae takes whole batches"),
        "compile": (False, "train.compile = {value} is a train-ldm option (it compiles the UNet)"),
    }


@dataclass(frozen=True)
class LDMTrainConfig(TrainConfig):
    """The ``train`` section of train-ldm: the shared fields, fp16, micro-batches and ``torch.compile``."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16: autocast (CPU/GPU); fp16: autocast + grad scaler (GPU)
    grad_accum: int = 1  # micro-batches per step: batch_size is split, same result, less memory
    compile: bool = False  # torch.compile the UNet for training

    legacy: ClassVar[dict[str, tuple[Any, str]]] = {
        "optimizer": ("adam", "train.optimizer = {value} is implemented for train-ae only; train-ldm uses AdamW"),
        "scale_samples": (None, ""),  # train-ldm takes the scale factor from the autoencoder
    }


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the UNet weights, used for sampling."""

    decay: float = 0.9999  # target decay
    warmup: bool = True  # decay_n = min(decay, (1 + n) / (10 + n)) as CompVis' LitEma
    every: int = 1  # update every this many optimisation steps


@dataclass(frozen=True)
class DegradationConfig:
    """How (low-res, high-res) pairs are made for super-resolution (BSR-style options, all off by default)."""

    scale: int = 4  # high-res side / low-res side
    blur: float = 0.0  # > 0: Gaussian blur, sigma drawn from [0, blur] high-res px, before downscaling
    noise: float = 0.0  # > 0: Gaussian noise, std drawn from [0, noise] (images in [0, 1]), after downscaling
    jpeg: int = 0  # > 0: JPEG-compress the low-res image at a quality drawn from [jpeg, 95]


MaskKind = Literal["box", "stroke"]


@dataclass(frozen=True)
class InpaintConfig:
    """The random masks an inpainting model trains with (``task = inpaint``; ldmctl/inpaint/masks.py)."""

    min_coverage: float = 0.1  # smallest fraction of the image a training mask covers
    max_coverage: float = 0.5  # largest fraction of the image a training mask covers
    kinds: tuple[MaskKind, ...] = ("box", "stroke")  # each mask is one kind: box (rectangles), stroke (brush strokes)


@dataclass(frozen=True)
class ContrastConfig:
    """A hard-negative caption contrast beside the denoising loss (ldmctl/diffusion/contrast.py)."""

    weight: float = 0.0  # > 0: add weight * mean(relu(margin - (error under the negative - error under the caption)))
    margin: float = 0.01  # how much higher the plain squared error must be under the negative caption
    swaps: tuple[str, ...] = ()  # "a:b" word pairs exchanged to make a caption's negative, e.g. "left:right"
    key: str = "caption"  # the batch key (text) whose words are swapped


@dataclass(frozen=True)
class AETrainingConfig:
    """Everything `ldmctl train-ae` needs; stored beside the weights for --resume."""

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: AELossConfig = field(default_factory=AELossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: AETrainConfig = field(default_factory=AETrainConfig)


@dataclass(frozen=True)
class LDMTrainingConfig:
    """Everything `ldmctl train-ldm` needs; stored beside the weights for --resume."""

    model: LDMConfig = field(default_factory=LDMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: LDMTrainConfig = field(default_factory=LDMTrainConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    cache_latents: bool = True  # encode the data set once (no random crops/flips after that)
    sample_steps: int = 50  # DDIM steps for the preview grids
    sample_count: int = 16  # images in each preview grid
    task: Literal["generate", "superres", "inpaint"] = "generate"  # superres: from low-res images; inpaint: fill masks
    superres: DegradationConfig = field(default_factory=DegradationConfig)  # low-res inputs (task = superres)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)  # random training masks (task = inpaint)
    # hard-negative captions beside the denoising loss (ldmctl/diffusion/contrast.py; off while weight = 0)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    # fine-tuning (train-ldm --init): the model, its autoencoder and conditioners come from this checkpoint
    init: str = ""  # an LDM checkpoint to start from ("" = from scratch)
    train_only: tuple[str, ...] = ()  # glob patterns of UNet parameter names to train (empty: all), e.g. "*attn2*"
    freeze_conditioners: bool = False  # keep every conditioner's weights (e.g. a jointly trained text encoder) fixed


__all__ = [
    "AELossConfig",
    "AETrainConfig",
    "ContrastConfig",
    "AETrainingConfig",
    "DataConfig",
    "DegradationConfig",
    "DiscLoss",
    "EMAConfig",
    "InpaintConfig",
    "LDMTrainConfig",
    "LDMTrainingConfig",
    "MaskKind",
    "Perceptual",
    "TrainConfig",
]
