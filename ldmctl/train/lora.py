"""``train-lora``: low-rank adapters on the attention layers of a trained text-to-image model.

The base model (any ldmctl LDM checkpoint: trained here, converted from Stable Diffusion, exported)
stays frozen; only the adapters (:mod:`ldmctl.lora`) train, with the same objective, condition
dropout, batches, latent cache, resume, signals and previews as train-ldm (one engine,
:mod:`ldmctl.train.engine`; one step, :func:`ldmctl.train.ldm.train_step`). A run folder holds::

    config.json          the LoRATrainingConfig
    base_source.json     the base checkpoint's path and SHA-256 (--resume checks it)
    lora.safetensors     the latest adapter (a small file naming its base; ldmctl sample --lora)
    checkpoints/step_XXXXXXX.safetensors + .state.pt, samples/, log.jsonl, summary.json

The defaults (zero-initialised ``up``, a learning-rate warm-up, gradient clipping at 1, alpha =
rank, lr 1e-4) are the conservative ones the stability sweep of docs/lora.md found safe: learning
rate decides stability there (1e-2 collapses whatever the rest); warm-up and clipping changed
nothing measurable in the stable runs and are kept as cheap insurance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ldmctl.config import DataConfig, LDMTrainConfig, to_dict
from ldmctl.diffusion.io import load_ldm
from ldmctl.diffusion.ldm import LatentDiffusion
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.lora import LoRAConfig, add_lora, base_hash, check_lora_config, load_lora_state_dict, read_lora_file
from ldmctl.lora import save_lora as write_adapter
from ldmctl.train import engine
from ldmctl.train.configure import check_train
from ldmctl.train.dist import Dist, setup, teardown
from ldmctl.train.ldm import preview, train_step, training_batches, training_dataset
from ldmctl.train.loop import Callbacks, NonFiniteGuard
from ldmctl.train.runfolder import run_folder


def _lora_train() -> LDMTrainConfig:
    return LDMTrainConfig(
        batch_size=4,
        max_steps=500,
        lr=1e-4,
        adam_betas=(0.9, 0.999),
        warmup_steps=50,
        grad_clip=1.0,
        sample_every=100,
        save_every=100,
    )


@dataclass(frozen=True)
class LoRATrainingConfig:
    """Everything ``ldmctl train-lora`` needs; stored in the run folder for --resume."""

    base: str = ""  # the LDM checkpoint the adapters adapt
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(size=0))  # size 0: the base model's image size
    train: LDMTrainConfig = field(default_factory=_lora_train)
    cache_latents: bool = True  # encode the data set once
    sample_steps: int = 25  # DDIM steps of the preview grids
    sample_count: int = 8  # images in each preview grid (conditions: the first items of the data)
    task: Literal["generate"] = "generate"  # adapters train text-to-image (and other generative) models


@dataclass
class LoRARun:
    """The live objects of one train-lora run: the engine's :class:`~ldmctl.train.engine.Trainer`."""

    latest: ClassVar[str] = "lora.safetensors"
    preview_name: ClassVar[str] = "samples"

    cfg: LoRATrainingConfig
    model: LatentDiffusion
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    guard: NonFiniteGuard = field(default_factory=lambda: NonFiniteGuard(5))
    dist: Dist = field(default_factory=Dist)
    scaler: torch.amp.GradScaler | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    preview_batch: dict[str, Any] | None = None
    ema: None = None  # adapters train without an EMA: previews and files show the weights as trained
    net: None = None  # the UNet is not DDP-wrapped: the adapters' gradients are averaged by hand

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        return train_step(self, batch)

    def synced(self) -> list[nn.Parameter]:
        return self.params

    def save(self, ckpt: Path) -> dict[str, Any]:
        extra = {"step": self.step, "train_config": to_dict(self.cfg)}
        write_adapter(ckpt, self.model, self.cfg.lora, base=self.cfg.base, extra=extra)
        state: dict[str, Any] = {"opt": self.opt.state_dict()}
        if self.scaler is not None and self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def restore(self, ckpt: Path, state: Mapping[str, Any]) -> None:
        tensors, _ = read_lora_file(ckpt)
        load_lora_state_dict(self.model, tensors)
        self.opt.load_state_dict(state["opt"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def preview(self) -> dict[str, Tensor]:
        return {"samples": preview(self, self.model.unet, self.model.conditioners, self.preview_batch)}

    def summary_extra(self) -> dict[str, Any]:
        return {
            "adapter_parameters": sum(p.numel() for p in self.params),
            "base": self.cfg.base,
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def _base_model(cfg: LoRATrainingConfig, device: torch.device) -> tuple[LoRATrainingConfig, LatentDiffusion]:
    """The frozen base model, and the config with the data size filled in (0: the base's)."""
    if not cfg.base:
        raise ConfigError("train-lora needs the base checkpoint (CKPT)")
    model = load_ldm(cfg.base, weights="ema", device=device)
    if model.task is not None:
        raise ConfigError("train-lora adapts generative models; this base is a super-resolution or inpainting model")
    f = model.autoencoder.config.downsample_factor
    size = cfg.data.size or model.config.latent_size * f
    if size % f:
        raise ConfigError(f"data.size={size} is not a multiple of the base model's f={f}")
    model.requires_grad_(False)
    return replace(cfg, data=replace(cfg.data, size=size)), model


def _build(cfg: LoRATrainingConfig, model: LatentDiffusion, d: Dist) -> LoRARun:
    params = add_lora(model, cfg.lora, seed=cfg.train.seed)
    t = cfg.train
    opt = torch.optim.AdamW(params, lr=t.lr, betas=t.adam_betas, weight_decay=0.0)
    scaler = torch.amp.GradScaler(d.device.type, enabled=t.precision == "fp16")
    return LoRARun(
        cfg,
        model,
        params,
        opt,
        torch.Generator().manual_seed(t.seed),
        guard=NonFiniteGuard(t.max_nonfinite),
        dist=d,
        scaler=scaler,
    )


def _check_base(out: Path, base: str) -> None:
    source = json.loads((out / "base_source.json").read_text())
    if base_hash(base) != source["sha256"]:
        raise CheckpointError(
            f"--resume: base checkpoint {base!r} is not the one this run started with ({source['path']})"
        )


def train_lora(
    cfg: LoRATrainingConfig, out: str | Path, *, resume: bool = False, callbacks: Callbacks | None = None
) -> dict[str, Any]:
    """Train LoRA adapters on ``cfg.base``; return the run summary (``checkpoint``: the adapter file)."""
    d = setup(cfg.train.device)
    cb = callbacks or Callbacks()
    try:
        with run_folder(Path(out), resume=resume, main=d.main, say=cb.message):
            return _train(cfg, Path(out), resume, cb, d)
    finally:
        teardown(d)


def _train(cfg: LoRATrainingConfig, out: Path, resume: bool, cb: Callbacks, d: Dist) -> dict[str, Any]:
    cb = cb if d.main else Callbacks()
    check_lora_config(cfg.lora)
    check_train(cfg.train)
    if resume:
        cfg = engine.prepare_run_dir(cfg, out, resume=True)
        _check_base(out, cfg.base)
    cfg, model = _base_model(cfg, d.device)
    d.local_batch(cfg.train.batch_size, cfg.train.grad_accum)
    dataset = training_dataset(cfg)
    if not resume:
        source = {"path": cfg.base, "sha256": base_hash(cfg.base)}
        cfg = engine.create_run(cfg, out, d, {"base_source.json": source})
    run = _build(cfg, model, d)
    if resume:
        engine.resume(run, out)
        cb.message(f"resumed at step {run.step}")
    batches, run.preview_batch = training_batches(run, dataset, out, cfg.base, cb)
    run.skipped = dataset.skipped
    return engine.run(run, batches, engine.Plan.of(cfg.train), out=out, dist=d, callbacks=cb)


__all__ = ["LoRARun", "LoRATrainingConfig", "train_lora"]
