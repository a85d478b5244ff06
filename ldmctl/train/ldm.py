"""Train a latent diffusion model on a frozen first stage (Rombach et al. 2022, §3.2).

The run (folder, resume, signals, logs, checkpoints, DDP) is :mod:`ldmctl.train.engine`'s; the step
is one :meth:`LatentDiffusion.training_loss <ldmctl.diffusion.ldm.LatentDiffusion.training_loss>`
call. A run folder holds::

    config.json            the full LDMTrainingConfig, with the derived UNet/latent fields
    ae_source.json         the autoencoder's path and SHA-256 (--resume checks it)
    ldm.safetensors        the latest model: UNet, its EMA, the autoencoder, config (one file samples)
    checkpoints/step_XXXXXXX.safetensors + .state.pt   the last K checkpoints (optimizer, RNG, step)
    samples/               preview grids drawn with the EMA weights (written by the CLI)
    log.jsonl, tensorboard/, summary.json

With ``cache_latents`` the data set is encoded once (epoch-0 crops, posterior mode) and training
runs at UNet speed; batch order is still a pure function of (seed, step), so ``--resume`` continues
bit-identically. An inpainting run (``task = inpaint``) also caches the crops themselves and draws
each step's masks from (seed, epoch, index), as :class:`~ldmctl.inpaint.masks.InpaintDataset` does
without the cache; the masked images are encoded per step (docs/inpainting.md).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from ldmctl.checkpoint import load_state, read_checkpoint
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.config import LDMTrainingConfig, to_dict
from ldmctl.data import open_dataset
from ldmctl.diffusion.contrast import check_contrast
from ldmctl.diffusion.ema import EMA
from ldmctl.diffusion.io import load_ldm, save_ldm, split_tensors
from ldmctl.diffusion.ldm import LatentDiffusion
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.files import file_sha256
from ldmctl.inpaint.masks import InpaintDataset, batch_masks
from ldmctl.inpaint.task import IMAGE_KEY, MASK_KEY
from ldmctl.samplers.ddim import ddim
from ldmctl.train import engine
from ldmctl.train.configure import check_train, resolve_ldm
from ldmctl.train.dist import Dist, setup, teardown
from ldmctl.train.finetune import first_stage, freeze, init_model
from ldmctl.train.latents import LatentCache, build_cache, latent_batches, open_cache
from ldmctl.train.loop import Callbacks, NonFiniteGuard, autocast, batch_stream, index_batches, lr_at, set_lr
from ldmctl.train.runfolder import run_folder
from ldmctl.unet import UNet

log = logging.getLogger(__name__)


@dataclass
class LDMRun:
    """The live objects of one train-ldm run: the engine's :class:`~ldmctl.train.engine.Trainer`."""

    latest: ClassVar[str] = "ldm.safetensors"
    preview_name: ClassVar[str] = "samples"

    cfg: LDMTrainingConfig
    model: LatentDiffusion
    ema: EMA
    opt: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    cond_ema: EMA | None = None  # EMA of the conditioners' weights, when they have any
    guard: NonFiniteGuard = field(default_factory=lambda: NonFiniteGuard(5))
    dist: Dist = field(default_factory=Dist)
    net: nn.Module | None = None  # the UNet as trained: in DDP and/or compiled (model.unet itself otherwise)
    scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling (a no-op otherwise)
    meta: dict[str, Any] = field(default_factory=dict)  # checkpoint metadata: the autoencoder's path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unusable files
    preview_batch: dict[str, Any] | None = None  # the conditions (first items) of the preview grids
    ema_modules: tuple[UNet, ConditionerSet] | None = None  # copies the EMA weights go into for previews

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        return train_step(self, batch)

    def save(self, ckpt: Path) -> dict[str, Any]:
        """Write the model (raw and EMA weights); return the optimizer's and EMA's state."""
        meta = {"step": self.step, "train_config": to_dict(self.cfg), **self.meta, "skipped_files": len(self.skipped)}
        save_ldm(self.model, self.ema, ckpt, extra=meta, cond_ema=self.cond_ema)
        state = {"opt": self.opt.state_dict(), "ema_updates": self.ema.updates}
        if self.scaler is not None and self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def restore(self, ckpt: Path, state: dict[str, Any]) -> None:
        parts = split_tensors(read_checkpoint(ckpt, expect_kind="ldm").tensors, str(ckpt))
        load_state(self.model.unet, parts["unet"], str(ckpt))
        self.ema.load_state_dict(parts["ema"], state["ema_updates"])
        load_state(self.model.conditioners, parts["cond"], str(ckpt))
        if self.cond_ema is not None:
            self.cond_ema.load_state_dict(parts["ema_cond"], state["ema_updates"])
        self.opt.load_state_dict(state["opt"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def preview(self) -> dict[str, Tensor]:
        return {"samples": preview(self, *self.ema_modules, self.preview_batch)}

    def summary_extra(self) -> dict[str, Any]:
        return {"skipped_files": [{"path": p, "reason": r} for p, r in self.skipped]}

    def synced(self) -> list[nn.Parameter]:
        """Trained parameters outside the DDP-wrapped UNet, whose gradients are averaged by hand."""
        return [p for p in self.model.conditioners.parameters() if p.requires_grad]


def build_run(
    cfg: LDMTrainingConfig,
    ae: nn.Module,
    conditioners: ConditionerSet,
    dist: Dist | None = None,
    unet: UNet | None = None,
) -> LDMRun:
    """Build the model around ``conditioners`` (from :func:`~ldmctl.train.configure.resolve_ldm`), its EMA and
    optimizer; the UNet is ``unet`` (``--init``) or new, seeded by ``cfg.train.seed``. Parameters frozen by
    ``train_only`` / ``freeze_conditioners`` (:func:`~ldmctl.train.finetune.freeze`) get no optimizer state."""
    d = dist or Dist()
    d.local_batch(cfg.train.batch_size, cfg.train.grad_accum)  # checks the split early
    torch.manual_seed(cfg.train.seed)
    model = LatentDiffusion(cfg.model, ae, unet=unet, conditioners=conditioners).to(d.device)
    freeze(model, cfg)
    ema = EMA(model.unet, cfg.ema.decay, warmup=cfg.ema.warmup)
    trainable = [p for p in model.conditioners.parameters() if p.requires_grad]
    cond_ema = EMA(model.conditioners, cfg.ema.decay, warmup=cfg.ema.warmup) if trainable else None
    params = [p for p in model.unet.parameters() if p.requires_grad] + trainable
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, betas=cfg.train.adam_betas, weight_decay=0.0)
    net = d.wrap(model.unet)
    if cfg.train.compile:
        net = torch.compile(net)
    scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.train.precision == "fp16")
    return LDMRun(
        cfg,
        model,
        ema,
        opt,
        torch.Generator().manual_seed(cfg.train.seed),
        cond_ema=cond_ema,
        guard=NonFiniteGuard(cfg.train.max_nonfinite),
        dist=d,
        net=net,
        scaler=scaler,
    )


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def train_step(run: Any, batch: dict[str, Any]) -> dict[str, float]:
    """One optimisation step on this rank's share of the global batch, in ``grad_accum``
    micro-batches sharing one draw over the global batch (:meth:`LatentDiffusion.training_loss`,
    :mod:`ldmctl.train.dist`). ``run`` is an :class:`LDMRun` or a LoRA run (:mod:`ldmctl.train.lora`):
    the parameters outside the DDP-wrapped ``run.net`` are averaged by hand (``run.synced``), the
    EMA is updated when the run has one."""
    t, d, model = run.cfg.train, run.dist, run.model
    lr = lr_at(
        run.step, base=t.lr, warmup=t.warmup_steps, total=t.max_steps, schedule=t.lr_schedule, min_ratio=t.lr_min_ratio
    )
    set_lr(run.opt, lr)
    model.unet.train()
    model.conditioners.train()
    run.opt.zero_grad(set_to_none=True)
    loss, logs = model.training_loss(
        _to(batch, d.device),
        generator=run.generator,
        net=run.net,
        shard=d.shard,
        micro_batches=t.grad_accum,
        amp=lambda: autocast(t.precision, d.device),
        backward=lambda part: run.scaler.scale(part).backward(),
        contrast=getattr(run.cfg, "contrast", None),
    )
    finite = bool(torch.isfinite(loss).all())
    if not run.guard.ok(torch.tensor(logs["loss"] if d.all_true(finite) else float("nan")), run.step):
        run.opt.zero_grad(set_to_none=True)
        return {**logs, "lr": lr, "skipped": 1.0}
    d.average_grads(run.synced())
    if t.grad_clip > 0:
        run.scaler.unscale_(run.opt)
        params = [p for g in run.opt.param_groups for p in g["params"]]
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
    run.scaler.step(run.opt)
    run.scaler.update()
    if run.ema is not None and (run.step + 1) % run.cfg.ema.every == 0:
        run.ema.update(model.unet)
        if run.cond_ema is not None:
            run.cond_ema.update(model.conditioners)
    logs["lr"] = lr
    return logs


@torch.no_grad()
def preview(run: LDMRun, ema_unet: UNet, ema_conds: ConditionerSet, batch: dict[str, Any]) -> Tensor:
    """A fixed-seed DDIM grid from the EMA weights (images in [-1, 1]), conditioned on ``batch``'s
    conditions (the first items of the data set) for conditional models. A run without an EMA (LoRA)
    passes its own UNet and conditioners."""
    if run.ema is not None:
        run.ema.copy_to(ema_unet)
        if run.cond_ema is not None:
            run.cond_ema.copy_to(ema_conds)
    n = min(run.cfg.sample_count, batch["z0"].shape[0]) if len(ema_conds) else run.cfg.sample_count
    inputs = run.model.derived_inputs(_to({k: v[:n] for k, v in batch.items()}, run.dist.device))
    cond = ema_conds.eval()(inputs) if len(ema_conds) else None
    g = torch.Generator().manual_seed(run.cfg.train.seed + 1)
    z = run.model.sample_latents(
        ddim, n, steps=run.cfg.sample_steps, generator=g, model_fn=run.model.model_fn(cond, unet=ema_unet.eval())
    )
    return run.model.decode(run.model.from_target(z, inputs))


def train_ldm(
    cfg: LDMTrainingConfig,
    ae_path: str | Path | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    callbacks: Callbacks | None = None,
) -> dict[str, Any]:
    """Train an LDM on the latents of autoencoder ``ae_path``; return the run summary.

    On ``resume`` the autoencoder defaults to the one the run started with, and must be unchanged
    (same SHA-256), since the cached latents and the UNet depend on it. Under ``torchrun`` every
    rank runs this function (:mod:`ldmctl.train.dist`); only rank 0 writes files and calls back.
    """
    d = setup(cfg.train.device)
    cb = callbacks or Callbacks()
    try:
        with run_folder(Path(out_dir), resume=resume, main=d.main, say=cb.message):
            return _train(cfg, ae_path, Path(out_dir), resume, cb, d)
    finally:
        teardown(d)


def _train(
    cfg: LDMTrainingConfig, ae_path: str | Path | None, out: Path, resume: bool, cb: Callbacks, d: Dist
) -> dict[str, Any]:
    cb = cb if d.main else Callbacks()
    unet = None
    if resume:
        cfg = engine.prepare_run_dir(cfg, out, resume=True)
        source = json.loads((out / "ae_source.json").read_text())
        ae_path = ae_path or source["path"]
        if file_sha256(ae_path) != source["sha256"]:
            raise CheckpointError(
                f"--resume: autoencoder {str(ae_path)!r} is not the one this run started with",
                hint=f"pass --ae with the original file ({source['path']})",
            )
    elif cfg.init:
        if ae_path is not None:
            raise ConfigError("--ae and --init: a fine-tuned model keeps the autoencoder of its --init checkpoint")
        cfg, ae, conditioners, unet = init_model(cfg)
        ae_path = cfg.init
    elif ae_path is None:
        raise ConfigError("train-ldm needs --ae: an autoencoder checkpoint from train-ae (or --init CKPT)")
    ae = ae if unet is not None else first_stage(ae_path)
    dataset = training_dataset(cfg)
    if unet is None:
        cfg, conditioners = resolve_ldm(cfg, ae, dataset, measure=not resume)
    else:
        check_train(cfg.train)
    check_contrast(cfg.contrast, {c.input_key for c in conditioners.items}, cfg.train.grad_accum)
    if not resume:
        cfg = engine.create_run(cfg, out, d, {"ae_source.json": {"path": str(ae_path), "sha256": file_sha256(ae_path)}})
    run = build_run(cfg, ae, conditioners, d, unet)
    if resume:
        engine.resume(run, out, say=cb.message)
        cb.message(f"resumed at step {run.step}")
    batches, run.preview_batch = training_batches(run, dataset, out, ae_path, cb)
    run.meta, run.skipped = {"autoencoder": str(ae_path)}, dataset.skipped
    run.ema_modules = (
        copy.deepcopy(run.model.unet).requires_grad_(False),
        copy.deepcopy(run.model.conditioners).requires_grad_(False),
    )
    return engine.run(run, batches, engine.Plan.of(cfg.train), out=out, dist=d, callbacks=cb)


def training_dataset(cfg: Any) -> Any:
    """The training data set, wrapped for the super-resolution or inpainting task."""
    dataset = open_dataset(cfg.data, seed=cfg.train.seed)
    if cfg.task == "superres":
        from ldmctl.superres.degrade import SuperresDataset

        return SuperresDataset(dataset, cfg.superres, seed=cfg.train.seed)
    if cfg.task == "inpaint":
        return InpaintDataset(dataset, cfg.inpaint, seed=cfg.train.seed)
    return dataset


def training_batches(
    run: Any, dataset: Any, out: Path, ae_path: str | Path, cb: Callbacks
) -> tuple[Iterator[dict[str, Any]], dict[str, Any]]:
    """This rank's training batches (``z0`` latents and the conditioners' inputs) from the run's
    step on, and the first items of the data set, whose conditions the preview grids use."""
    cfg, d, t = run.cfg, run.dist, run.cfg.train
    keys = run.model.batch_keys()
    if cfg.cache_latents and isinstance(dataset, InpaintDataset):  # masks are drawn per step, not cached
        cache = _latent_cache(run, dataset.base, out, tuple(k for k in keys if k != MASK_KEY), ae_path, cb)
        first = list(range(min(cfg.sample_count, len(cache))))
        return _masked_batches(run, cache, run.step), {**cache.take(first), MASK_KEY: _masks(run, cache, first, 0)}
    if cfg.cache_latents:
        cache = _latent_cache(run, dataset, out, keys, ae_path, cb)
        batches = latent_batches(cache, t.batch_size, seed=t.seed, start_step=run.step, rank=d.rank, world=d.world)
        return batches, cache.take(list(range(min(cfg.sample_count, len(cache)))))
    images = batch_stream(
        dataset, t.batch_size, seed=t.seed, start_step=run.step, num_workers=t.num_workers, rank=d.rank, world=d.world
    )
    batches = ({"z0": run.model.encode(b["image"].to(d.device)), **{k: b[k] for k in keys}} for b in images)
    first = default_collate([dataset[i] for i in range(min(cfg.sample_count, len(dataset)))])
    return batches, {"z0": run.model.encode(first["image"].to(d.device)), **{k: first[k] for k in keys}}


def _masked_batches(run: LDMRun, cache: LatentCache, start_step: int) -> Iterator[dict[str, Any]]:
    """An inpainting run's cached batches, each with the masks :class:`InpaintDataset` gives its
    items in that step's epoch: new masks every epoch, as without the cache. The cache holds the
    epoch-0 crops (``image``), so the task encodes each step's masked images exactly."""
    t, d = run.cfg.train, run.dist
    per_epoch = max(1, len(cache) // t.batch_size)  # the epochs of batch_stream
    indices = index_batches(len(cache), t.batch_size, seed=t.seed, start_step=start_step, rank=d.rank, world=d.world)
    for step, idx in enumerate(indices, start=start_step):
        yield {**cache.take(idx), MASK_KEY: _masks(run, cache, idx, step // per_epoch)}


def _masks(run: LDMRun, cache: LatentCache, idx: list[int], epoch: int) -> Tensor:
    size = tuple(cache.arrays[IMAGE_KEY].shape[-2:])
    return batch_masks(idx, epoch, size, run.cfg.inpaint, seed=run.cfg.train.seed)  # (B, 1, H, W)


def _latent_cache(
    run: LDMRun, dataset: Any, out: Path, keys: tuple[str, ...], ae_path: str | Path, cb: Callbacks
) -> LatentCache:
    """Open the run's latent cache, or encode it (rank 0 encodes while the others wait)."""
    from ldmctl.config import to_dict

    stamp = {
        "autoencoder": file_sha256(ae_path),
        "data": to_dict(run.cfg.data),
        "keys": list(keys),
        "seed": run.cfg.train.seed,
    }
    folder = out / "latents"
    cache = open_cache(folder, stamp)
    if cache is None:
        if run.dist.main:
            started = time.time()
            cache = build_cache(
                lambda x: run.model.encode(x.to(run.dist.device)).cpu(), dataset, folder, keys=keys, stamp=stamp
            )
            cb.message(
                f"cached {len(cache)} latents of shape {cache.latent_shape} in {time.time() - started:.1f} s "
                f"({folder}, memory-mapped)"
            )
        run.dist.barrier()
        cache = cache or open_cache(folder, stamp)
    if cache is None:
        raise CheckpointError(f"the latent cache in {str(folder)!r} could not be read back")
    return cache


__all__ = ["load_ldm", "preview", "save_ldm", "train_ldm", "train_step", "training_batches", "training_dataset"]
