"""Every configuration dataclass, the presets, and the preset -> file -> --set -> resolve flow.

Configs are frozen dataclasses: data, not behaviour. ``to_dict``/``from_dict`` round-trip them
through JSON (checkpoints store that JSON in their safetensors metadata, so a file rebuilds its
own model). ``from_dict`` is strict: an unknown key is a :class:`ConfigError`, never ignored.
"""

from __future__ import annotations

import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from ldmctl.errors import ConfigError

T = TypeVar("T")

AEKind = Literal["kl", "vq"]
Perceptual = Literal["lpips", "none"]
DiscLoss = Literal["hinge", "vanilla"]


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


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by train-ae and, later, train-ldm."""

    batch_size: int = 8  # images per optimisation step
    max_steps: int = 1000  # total optimisation steps
    lr: float = 1e-4  # peak learning rate (generator and discriminator)
    adam_betas: tuple[float, float] = (0.5, 0.9)  # Adam betas (GAN-style default)
    optimizer: Literal["adam", "muon"] = "adam"  # train-ae: muon = Muon for weight matrices, Adam for the rest
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
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16: autocast (CPU/GPU); fp16: autocast + grad scaler (GPU)
    grad_accum: int = 1  # micro-batches per step: batch_size is split, same result, less memory
    device: str = "auto"  # auto (this rank's GPU if any, else CPU), cpu or cuda
    compile: bool = False  # torch.compile the UNet for training (train-ldm)
    max_nonfinite: int = 5  # a NaN/inf loss skips its step; this many in a row stop the run
    scale_samples: int = 64  # images used to estimate the latent scale factor


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


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the UNet weights, used for sampling."""

    decay: float = 0.9999  # target decay
    warmup: bool = True  # decay_n = min(decay, (1 + n) / (10 + n)) as CompVis' LitEma
    every: int = 1  # update every this many optimisation steps


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


@dataclass(frozen=True)
class DegradationConfig:
    """How (low-res, high-res) pairs are made for super-resolution (BSR-style options, all off by default)."""

    scale: int = 4  # high-res side / low-res side
    blur: float = 0.0  # > 0: Gaussian blur, sigma drawn from [0, blur] high-res px, before downscaling
    noise: float = 0.0  # > 0: Gaussian noise, std drawn from [0, noise] (images in [0, 1]), after downscaling
    jpeg: int = 0  # > 0: JPEG-compress the low-res image at a quality drawn from [jpeg, 95]


@dataclass(frozen=True)
class LDMTrainingConfig:
    """Everything `ldmctl train-ldm` needs; stored beside the weights for --resume."""

    model: LDMConfig = field(default_factory=LDMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    cache_latents: bool = True  # encode the data set once (no random crops/flips after that)
    sample_steps: int = 50  # DDIM steps for the preview grids
    sample_count: int = 16  # images in each preview grid
    task: Literal["generate", "superres"] = "generate"  # superres: learn high-res images from low-res ones
    superres: DegradationConfig = field(default_factory=DegradationConfig)  # low-res inputs (task = superres)


@dataclass(frozen=True)
class AETrainingConfig:
    """Everything `ldmctl train-ae` needs; stored beside the weights for --resume."""

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: AELossConfig = field(default_factory=AELossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------
# presets: real, selectable configurations. `tiny` is what the tests use.

_MULT_TEMPLATE = {"tiny": (1, 2, 2, 2, 2), "small": (1, 2, 2, 4, 4), "base": (1, 2, 4, 4, 4)}

PRESETS: dict[str, AETrainingConfig] = {
    "tiny": AETrainingConfig(
        model=AutoencoderConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                                norm_groups=4, n_embed=64),
        loss=AELossConfig(disc_start=1, disc_layers=2, disc_channels=8),
        data=DataConfig(size=16),
        train=TrainConfig(batch_size=4, max_steps=20, lr=1e-3, sample_every=10, save_every=10,
                          scale_samples=8),
    ),
    "small": AETrainingConfig(
        model=AutoencoderConfig(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2),
        data=DataConfig(size=64),
        train=TrainConfig(batch_size=8, max_steps=5000, lr=2e-4),
    ),
    "base": AETrainingConfig(
        model=AutoencoderConfig(base_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2),
        loss=AELossConfig(disc_start=50001),
        data=DataConfig(size=256),
        train=TrainConfig(batch_size=8, max_steps=100_000, lr=4.5e-6 * 8),
    ),
}


_LDM_TRAIN = dict(adam_betas=(0.9, 0.999), lr_schedule="cosine", lr_min_ratio=0.1)

LDM_PRESETS: dict[str, LDMTrainingConfig] = {
    "tiny": LDMTrainingConfig(
        model=LDMConfig(unet=UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                        attention_levels=(1,), head_channels=8, norm_groups=4)),
        data=DataConfig(size=16),
        train=TrainConfig(batch_size=4, max_steps=20, lr=1e-3, sample_every=10, save_every=10, **_LDM_TRAIN),
        ema=EMAConfig(decay=0.99), sample_steps=5, sample_count=4,
    ),
    # the bench's `small` UNet (diffusers block_out (64, 128, 256), attention at levels 1 and 2)
    "small": LDMTrainingConfig(
        model=LDMConfig(unet=UNetConfig(model_channels=64, channel_mult=(1, 2, 4))),
        data=DataConfig(size=64),
        train=TrainConfig(batch_size=32, max_steps=20_000, lr=2e-4, warmup_steps=500, sample_every=1000,
                          save_every=1000, **_LDM_TRAIN),
    ),
    "base": LDMTrainingConfig(
        model=LDMConfig(unet=UNetConfig(model_channels=128, channel_mult=(1, 2, 4))),
        data=DataConfig(size=128),
        train=TrainConfig(batch_size=32, max_steps=100_000, lr=1e-4, warmup_steps=1000, sample_every=2000,
                          save_every=2000, **_LDM_TRAIN),
    ),
}


def ldm_preset(name: str) -> LDMTrainingConfig:
    """Return the named train-ldm preset, or raise ConfigError listing the choices."""
    if name not in LDM_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(LDM_PRESETS)}")
    return LDM_PRESETS[name]


def preset(name: str) -> AETrainingConfig:
    """Return the named preset, or raise ConfigError listing the choices."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def channel_mult_for_f(f: int, preset_name: str = "small") -> tuple[int, ...]:
    """Channel multipliers giving downsampling factor ``f`` (4, 8 or 16) in a preset's style."""
    if f not in (4, 8, 16):
        raise ConfigError(f"--f {f} is not supported; choose one of [4, 8, 16]")
    levels = int(math.log2(f)) + 1
    return _MULT_TEMPLATE.get(preset_name, _MULT_TEMPLATE["small"])[:levels]


# --------------------------------------------------------------------------------------------
# dict <-> dataclass, strict


def to_dict(cfg: Any) -> dict[str, Any]:
    """Convert a config dataclass (nested) into plain JSON-able dicts and lists."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = [to_dict(v) if is_dataclass(v) else v for v in value]
        out[f.name] = value
    return out


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict, strictly: unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}", hint=f"known keys: {sorted(known)}")
    kwargs = {k: _coerce(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a missing required field
        raise ConfigError(f"{cls.__name__}: {err}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check/convert one JSON value against a type annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if is_dataclass(tp):
        return from_dict(tp, value)  # type: ignore[arg-type]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


# --------------------------------------------------------------------------------------------
# config files and --set overrides


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a .toml or .json config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        if p.suffix == ".toml":
            return tomllib.loads(p.read_text())
        if p.suffix == ".json":
            return json.loads(p.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(p)!r} is not valid: {err}") from None
    raise ConfigError(f"config file {str(p)!r}: use a .toml or .json file")


def merge(cfg: T, data: dict[str, Any]) -> T:
    """Return ``cfg`` with the (possibly partial, nested) dict ``data`` applied on top."""
    base = to_dict(cfg)
    _deep_update(base, data, type(cfg).__name__)
    return from_dict(type(cfg), base)


def _deep_update(base: dict[str, Any], data: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key {key!r}", hint=f"known keys: {sorted(base)}")
        if isinstance(base[key], dict) and isinstance(value, dict):
            _deep_update(base[key], value, f"{where}.{key}")
        else:
            base[key] = value


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """Turn ``["model.z_channels=8", "loss.disc_start=0"]`` into a nested dict.

    Values are parsed as JSON when they can be (numbers, booleans, lists), else kept as strings.
    """
    out: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. model.z_channels=8")
        key, raw = item.split("=", 1)
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def with_updates(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that drops ``None`` values (options the user did not give)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return replace(cfg, **changes) if changes else cfg  # type: ignore[type-var]


def validate_ae(cfg: AETrainingConfig) -> AETrainingConfig:
    """Check cross-field constraints of a train-ae config; return it unchanged if valid."""
    m, t, d = cfg.model, cfg.train, cfg.data
    widths = {m.base_channels * k for k in m.channel_mult}
    if any(w % m.norm_groups for w in widths):
        raise ConfigError(f"model.norm_groups={m.norm_groups} must divide every width {sorted(widths)}")
    if d.size % m.downsample_factor:
        raise ConfigError(f"data.size={d.size} is not a multiple of f={m.downsample_factor}")
    for name in ("batch_size", "max_steps"):
        if getattr(t, name) <= 0:
            raise ConfigError(f"train.{name} must be positive, got {getattr(t, name)}")
    if not (t.lr > 0 and math.isfinite(t.lr)):
        raise ConfigError(f"train.lr must be a positive number, got {t.lr}")
    return cfg


def reference_markdown() -> str:
    """The configuration reference (every field, its value in each preset and its comment).

    ``docs/config.md`` embeds this text and a test keeps the two equal.
    """
    lines = ["## train-ae", ""]
    lines += _reference_tables(PRESETS, [("model", AutoencoderConfig), ("loss", AELossConfig),
                                         ("data", DataConfig), ("train", TrainConfig)])
    lines += ["## train-ldm", ""]
    lines += _reference_tables(LDM_PRESETS, [("model.unet", UNetConfig), ("model.diffusion", DiffusionConfig),
                                             ("model", LDMConfig), ("data", DataConfig), ("train", TrainConfig),
                                             ("ema", EMAConfig), ("superres", DegradationConfig),
                                             ("", LDMTrainingConfig)])
    return "\n".join(lines)


def _reference_tables(presets: dict[str, Any], sections: list[tuple[str, type]]) -> list[str]:
    import inspect
    import re

    lines: list[str] = []
    names = list(presets)
    for sec, cls in sections:
        src = inspect.getsource(cls)
        title = f"`{sec}` ({cls.__name__})" if sec else f"top level ({cls.__name__})"
        lines += [f"### {title}", "", "| field | " + " | ".join(names) + " | meaning |",
                  "|---" * (len(names) + 2) + "|"]
        for f in fields(cls):
            m = re.search(rf"^ +{f.name}: .*?#\s*(.*)$", src, re.MULTILINE)
            if m is None:  # a nested section, listed in its own table
                continue
            vals = []
            for p in names:
                obj = presets[p]
                for part in filter(None, sec.split(".")):
                    obj = getattr(obj, part)
                vals.append(getattr(obj, f.name))
            shown = [str(list(v) if isinstance(v, tuple) else v) for v in vals]
            key = f"{sec}.{f.name}" if sec else f.name
            lines.append(f"| `{key}` | " + " | ".join(shown) + f" | {m.group(1)} |")
        lines.append("")
    return lines


__all__ = [
    "LDM_PRESETS",
    "PRESETS",
    "AEKind",
    "AELossConfig",
    "AETrainingConfig",
    "AutoencoderConfig",
    "DataConfig",
    "ConditionerSpec",
    "DiffusionConfig",
    "EMAConfig",
    "LDMConfig",
    "LDMTrainingConfig",
    "TrainConfig",
    "UNetConfig",
    "channel_mult_for_f",
    "from_dict",
    "ldm_preset",
    "load_file",
    "merge",
    "parse_set",
    "preset",
    "reference_markdown",
    "to_dict",
    "validate_ae",
    "with_updates",
]
