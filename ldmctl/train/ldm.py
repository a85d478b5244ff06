"""Train a latent diffusion model on a frozen first stage (Rombach et al. 2022, §3.2).

A run folder holds::

    config.json            the full LDMTrainingConfig, with the derived UNet/latent fields
    ldm.safetensors        the latest model: UNet, its EMA, the autoencoder, config (one file samples)
    checkpoints/step_XXXXXXX.safetensors + .state.pt   the last K checkpoints (optimizer, RNG, step)
    samples/               preview grids drawn with the EMA weights
    log.jsonl, summary.json

With ``cache_latents`` the data set is encoded once (epoch-0 crops, posterior mode) and training
runs at UNet speed; batch order is still a pure function of (seed, step), so ``--resume`` continues
bit-identically.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from ldmctl.checkpoint import load_autoencoder, load_state, load_train_state, read_checkpoint, save_train_state
from ldmctl.conditioning.base import Cond, LatentSpec
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.config import ConditionerSpec, LDMTrainingConfig, from_dict, to_dict
from ldmctl.data import open_dataset
from ldmctl.diffusion.ema import EMA
from ldmctl.diffusion.io import load_ldm, save_ldm, split_tensors
from ldmctl.diffusion.ldm import LatentDiffusion
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.files import file_sha256
from ldmctl.samplers.ddim import ddim
from ldmctl.superres.task import measure_residual_scale, with_task
from ldmctl.train.loop import (
    Callbacks,
    NonFiniteGuard,
    autocast,
    StopSignals,
    Throughput,
    batch_stream,
    due,
    lr_at,
    prepare_run_dir,
    rng_state,
    set_lr,
    set_rng_state,
    write_log,
)
from ldmctl.train.dist import Dist, setup, teardown
from ldmctl.train.latents import LatentCache, build_cache, latent_batches, open_cache
from ldmctl.unet import UNet, check_unet_config, downsample_factor

log = logging.getLogger(__name__)


@dataclass
class LDMRun:
    """The live objects of one train-ldm run."""

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


def resolve_ldm(cfg: LDMTrainingConfig, ae: nn.Module, dataset: Any = None) -> LDMTrainingConfig:
    """Derive what the autoencoder and the conditioners fix, never written by hand: latent channels,
    latent size, scale factor, and the UNet's conditioning widths; validate."""
    f, c = ae.config.downsample_factor, ae.config.latent_channels
    if cfg.data.size % f:
        raise ConfigError(f"data.size={cfg.data.size} is not a multiple of the autoencoder's f={f}")
    latent = cfg.data.size // f
    specs = tuple(configure_spec(s, dataset) for s in cfg.model.conditioners) if dataset is not None else cfg.model.conditioners
    widths = ConditionerSet(specs, LatentSpec(c, latent, f)).unet_widths()
    unet = replace(cfg.model.unet, in_channels=c, **widths)
    check_unet_config(unet)
    if latent % downsample_factor(unet):
        raise ConfigError(f"latent side {latent} (= {cfg.data.size} px / f {f}) is not a multiple of the UNet's "
                          f"{downsample_factor(unet)} (one 2x downsampling per unet.channel_mult level)",
                          hint="use a larger --size or fewer unet.channel_mult levels")
    model = replace(cfg.model, unet=unet, latent_size=latent, scale_factor=float(ae.scale_factor), conditioners=specs)
    for name in ("batch_size", "max_steps"):
        if getattr(cfg.train, name) <= 0:
            raise ConfigError(f"train.{name} must be positive, got {getattr(cfg.train, name)}")
    if not cfg.train.lr > 0:
        raise ConfigError(f"train.lr must be positive, got {cfg.train.lr}")
    return replace(cfg, model=model)


def configure_spec(spec: ConditionerSpec, dataset: Any) -> ConditionerSpec:
    """Let a conditioner fill data-dependent options (e.g. the number of classes) into its spec."""
    from ldmctl.conditioning.compose import build_conditioner  # noqa: F401 - registry check first
    from ldmctl.conditioning.registry import get_conditioner

    cls = get_conditioner(spec.name).cls
    cfg = cls.configure(from_dict(cls.Config, dict(spec.options)), dataset)
    return replace(spec, options=to_dict(cfg))


def build_run(cfg: LDMTrainingConfig, ae: nn.Module, dist: Dist | None = None) -> LDMRun:
    d = dist or Dist()
    if cfg.train.optimizer != "adam":
        raise ConfigError(f"train.optimizer = {cfg.train.optimizer!r} is implemented for train-ae only",
                          hint="train-ldm uses AdamW: leave train.optimizer at 'adam'")
    d.local_batch(cfg.train.batch_size, cfg.train.grad_accum)  # checks the split early
    torch.manual_seed(cfg.train.seed)
    model = LatentDiffusion(cfg.model, ae).to(d.device)
    ema = EMA(model.unet, cfg.ema.decay, warmup=cfg.ema.warmup)
    trainable = [p for p in model.conditioners.parameters() if p.requires_grad]
    cond_ema = EMA(model.conditioners, cfg.ema.decay, warmup=cfg.ema.warmup) if trainable else None
    opt = torch.optim.AdamW(list(model.unet.parameters()) + trainable, lr=cfg.train.lr, betas=cfg.train.adam_betas,
                            weight_decay=0.0)
    net = d.wrap(model.unet)
    if cfg.train.compile:
        net = torch.compile(net)
    scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.train.precision == "fp16")
    return LDMRun(cfg, model, ema, opt, torch.Generator().manual_seed(cfg.train.seed), cond_ema=cond_ema,
                  guard=NonFiniteGuard(cfg.train.max_nonfinite), dist=d, net=net, scaler=scaler)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _rows(cond: Cond, idx: slice) -> Cond:
    return Cond(**{f.name: (v[idx] if (v := getattr(cond, f.name)) is not None else None) for f in fields(Cond)})


def _leaves(cond: Cond) -> tuple[Cond, list[tuple[Tensor, Tensor]]]:
    """Cut the conditioners' graph off the UNet's: the UNet's micro-batches backpropagate into leaf
    copies of the condition tensors, whose summed gradients then go through the conditioners once."""
    pairs, out = [], {}
    for f in fields(Cond):
        v = getattr(cond, f.name)
        if v is not None and v.requires_grad:
            leaf = v.detach().requires_grad_(True)
            pairs.append((v, leaf))
            v = leaf
        out[f.name] = v
    return Cond(**out), pairs


def train_step(run: LDMRun, batch: dict[str, Any]) -> dict[str, float]:
    """One optimisation step on this rank's share of the global batch, in ``grad_accum``
    micro-batches. Random draws cover the global batch (see :mod:`ldmctl.train.dist`)."""
    t, d, model = run.cfg.train, run.dist, run.model
    lr = lr_at(run.step, base=t.lr, warmup=t.warmup_steps, total=t.max_steps, schedule=t.lr_schedule,
               min_ratio=t.lr_min_ratio)
    set_lr(run.opt, lr)
    model.unet.train()
    model.conditioners.train()
    batch = model.derived_inputs(_to(batch, d.device))
    with autocast(t.precision, d.device):
        cond = model.cond(batch, generator=run.generator, train_dropout=True, shard=d.shard)
    z0 = model.to_target(batch["z0"], batch)
    steps, noise = model.objective.draw(z0, run.generator, shard=d.shard)
    cond_in, pairs = _leaves(cond) if cond is not None else (Cond(), [])
    b, m = z0.shape[0], z0.shape[0] // t.grad_accum
    run.opt.zero_grad(set_to_none=True)
    finite, parts = True, []
    for i in range(t.grad_accum):
        rows = slice(i * m, (i + 1) * m)
        last = i == t.grad_accum - 1
        c = _rows(cond_in, rows)
        with (contextlib.nullcontext() if last else d.no_sync(run.net)), autocast(t.precision, d.device):
            loss, logs = model.objective(lambda z, tt, c=c: run.net(z, tt, c), z0[rows], t=steps[rows], noise=noise[rows])
            finite = finite and bool(torch.isfinite(loss.detach()).all())
            run.scaler.scale(loss * (m / b)).backward()
        parts.append(logs)
    if pairs:
        torch.autograd.backward([v for v, _ in pairs], [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                                                        for _, leaf in pairs])
    logs = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
    if not run.guard.ok(torch.tensor(logs["loss"] if d.all_true(finite) else float("nan")), run.step):
        run.opt.zero_grad(set_to_none=True)
        return {**logs, "lr": lr, "skipped": 1.0}
    d.average_grads([p for p in model.conditioners.parameters() if p.requires_grad])
    if t.grad_clip > 0:
        run.scaler.unscale_(run.opt)
        params = [p for g in run.opt.param_groups for p in g["params"]]
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
    run.scaler.step(run.opt)
    run.scaler.update()
    if (run.step + 1) % run.cfg.ema.every == 0:
        run.ema.update(model.unet)
        if run.cond_ema is not None:
            run.cond_ema.update(model.conditioners)
    logs["lr"] = lr
    return logs


def save_run(run: LDMRun, out: Path, extra: dict[str, Any]) -> Path:
    ckpt_dir = out / "checkpoints"
    ckpt = ckpt_dir / f"step_{run.step:07d}.safetensors"
    meta = {"step": run.step, "train_config": to_dict(run.cfg), **extra}
    save_ldm(run.model, run.ema, ckpt, extra=meta, cond_ema=run.cond_ema)
    state = {"step": run.step, "opt": run.opt.state_dict(), "ema_updates": run.ema.updates,
             "rng": rng_state(run.generator)}
    if run.scaler is not None and run.scaler.is_enabled():
        state["scaler"] = run.scaler.state_dict()
    save_train_state(ckpt.with_suffix(".state.pt"), state)
    save_ldm(run.model, run.ema, out / "ldm.safetensors", extra=meta, cond_ema=run.cond_ema)
    for old in sorted(ckpt_dir.glob("step_*.safetensors"))[: -run.cfg.train.keep_last]:
        old.unlink(missing_ok=True)
        old.with_suffix(".state.pt").unlink(missing_ok=True)
    return ckpt


def restore_run(run: LDMRun, out: Path) -> None:
    ckpts = [c for c in sorted((out / "checkpoints").glob("step_*.safetensors")) if c.with_suffix(".state.pt").is_file()]
    if not ckpts:
        raise CheckpointError(f"--resume: {str(out)!r} has no complete checkpoint yet",
                              hint="drop --resume and start again, or use a new --out")
    parts = split_tensors(read_checkpoint(ckpts[-1], expect_kind="ldm").tensors, str(ckpts[-1]))
    load_state(run.model.unet, parts["unet"], str(ckpts[-1]))
    state = load_train_state(ckpts[-1].with_suffix(".state.pt"))
    run.ema.load_state_dict(parts["ema"], state["ema_updates"])
    load_state(run.model.conditioners, parts["cond"], str(ckpts[-1]))
    if run.cond_ema is not None:
        run.cond_ema.load_state_dict(parts["ema_cond"], state["ema_updates"])
    run.opt.load_state_dict(state["opt"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], run.generator)
    run.step = int(state["step"])


@torch.no_grad()
def preview(run: LDMRun, ema_unet: UNet, ema_conds: ConditionerSet, batch: dict[str, Any]) -> Tensor:
    """A fixed-seed DDIM grid from the EMA weights (images in [-1, 1]), conditioned on ``batch``'s
    conditions (the first items of the data set) for conditional models."""
    run.ema.copy_to(ema_unet)
    if run.cond_ema is not None:
        run.cond_ema.copy_to(ema_conds)
    n = min(run.cfg.sample_count, batch["z0"].shape[0]) if len(ema_conds) else run.cfg.sample_count
    inputs = run.model.derived_inputs(_to({k: v[:n] for k, v in batch.items()}, run.dist.device))
    cond = ema_conds.eval()(inputs) if len(ema_conds) else None
    g = torch.Generator().manual_seed(run.cfg.train.seed + 1)
    z = run.model.sample_latents(ddim, n, steps=run.cfg.sample_steps, generator=g,
                                 model_fn=run.model.model_fn(cond, unet=ema_unet.eval()))
    return run.model.decode(run.model.from_target(z, inputs))


def train_ldm(cfg: LDMTrainingConfig, ae_path: str | Path | None, out_dir: str | Path, *, resume: bool = False,
              callbacks: Callbacks | None = None) -> dict[str, Any]:
    """Train an LDM on the latents of autoencoder ``ae_path``; return the run summary.

    On ``resume`` the autoencoder defaults to the one the run started with, and must be unchanged
    (same SHA-256), since the cached latents and the UNet depend on it. Under ``torchrun`` every
    rank runs this function (:mod:`ldmctl.train.dist`); only rank 0 writes files and calls back.
    """
    d = setup(cfg.train.device)
    try:
        return _train(cfg, ae_path, Path(out_dir), resume, callbacks or Callbacks(), d)
    finally:
        teardown(d)


def _train(cfg: LDMTrainingConfig, ae_path: str | Path | None, out: Path, resume: bool, cb: Callbacks,
           d: Dist) -> dict[str, Any]:
    if not d.main:
        cb = Callbacks()
    if resume:
        cfg = prepare_run_dir(cfg, out, resume=True)
        source = json.loads((out / "ae_source.json").read_text())
        ae_path = ae_path or source["path"]
        if file_sha256(ae_path) != source["sha256"]:
            raise CheckpointError(f"--resume: autoencoder {str(ae_path)!r} is not the one this run started with",
                                  hint=f"pass --ae with the original file ({source['path']})")
    elif ae_path is None:
        raise ConfigError("train-ldm needs --ae: an autoencoder checkpoint from train-ae")
    ae = load_autoencoder(ae_path)
    cfg = with_task(cfg)
    dataset = open_dataset(cfg.data, seed=cfg.train.seed)
    if cfg.task == "superres":
        from ldmctl.superres.degrade import SuperresDataset

        dataset = SuperresDataset(dataset, cfg.superres, seed=cfg.train.seed)
    cfg = resolve_ldm(cfg, ae, dataset)
    if not resume:
        cfg = measure_residual_scale(cfg, ae, dataset)
        if d.main:
            cfg = prepare_run_dir(cfg, out, resume=False)
            (out / "ae_source.json").write_text(json.dumps({"path": str(ae_path), "sha256": file_sha256(ae_path)}))
        d.barrier()
    run = build_run(cfg, ae, d)
    if resume:
        restore_run(run, out)
        cb.message(f"resumed at step {run.step}")
    t = cfg.train
    keys = run.model.batch_keys()
    if cfg.cache_latents:
        cache = _latent_cache(run, dataset, out, keys, ae_path, cb)
        batches = latent_batches(cache, t.batch_size, seed=t.seed, start_step=run.step, rank=d.rank, world=d.world)
        preview_batch = cache.take(list(range(min(cfg.sample_count, len(cache)))))
    else:
        images = batch_stream(dataset, t.batch_size, seed=t.seed, start_step=run.step, num_workers=t.num_workers,
                              rank=d.rank, world=d.world)
        batches = ({"z0": run.model.encode(b["image"].to(d.device)), **{k: b[k] for k in keys}} for b in images)
        first = default_collate([dataset[i] for i in range(min(cfg.sample_count, len(dataset)))])
        preview_batch = {"z0": run.model.encode(first["image"].to(d.device)), **{k: first[k] for k in keys}}
    return _loop(run, batches, out, dataset, cb, ae_path, preview_batch)


def _latent_cache(run: LDMRun, dataset: Any, out: Path, keys: tuple[str, ...], ae_path: str | Path,
                  cb: Callbacks) -> LatentCache:
    """Open the run's latent cache, or encode it (rank 0 encodes while the others wait)."""
    from ldmctl.config import to_dict

    stamp = {"autoencoder": file_sha256(ae_path), "data": to_dict(run.cfg.data), "keys": list(keys),
             "seed": run.cfg.train.seed}
    folder = out / "latents"
    cache = open_cache(folder, stamp)
    if cache is None:
        if run.dist.main:
            started = time.time()
            cache = build_cache(lambda x: run.model.encode(x.to(run.dist.device)).cpu(), dataset, folder,
                                keys=keys, stamp=stamp)
            cb.message(f"cached {len(cache)} latents of shape {cache.latent_shape} in {time.time() - started:.1f} s "
                       f"({folder}, memory-mapped)")
        run.dist.barrier()
        cache = cache or open_cache(folder, stamp)
    if cache is None:
        raise CheckpointError(f"the latent cache in {str(folder)!r} could not be read back")
    return cache


def _loop(run: LDMRun, batches: Any, out: Path, dataset: Any, cb: Callbacks, ae_path: str | Path,
          preview_batch: dict[str, Any]) -> dict[str, Any]:
    t, d = run.cfg.train, run.dist
    ema_unet = copy.deepcopy(run.model.unet).requires_grad_(False)
    ema_conds = copy.deepcopy(run.model.conditioners).requires_grad_(False)
    speed, started, logs = Throughput(), time.time(), {}
    extra = {"autoencoder": str(ae_path), "skipped_files": len(dataset.skipped)}
    logfile = (out / "log.jsonl").open("a") if d.main else contextlib.nullcontext()
    with StopSignals() as stop, logfile:
        while run.step < t.max_steps:
            logs = train_step(run, next(batches))
            run.step += 1
            logs["steps_per_s"] = speed.tick()
            cb.step(run.step, logs)
            if d.main and due(run.step, t.log_every, t.max_steps):
                write_log(logfile, run.step, logs)
            if d.main and due(run.step, t.sample_every, t.max_steps):
                cb.images(run.step, f"samples_{run.step:07d}", {"samples": preview(run, ema_unet, ema_conds, preview_batch)})
            stopping = d.any_true(stop.requested is not None)
            if due(run.step, t.save_every, t.max_steps) or stopping:
                if d.main:
                    cb.saved(run.step, str(save_run(run, out, extra)))
                d.barrier()
            if stopping:
                cb.message(f"{stop.requested or 'SIGTERM'}: stopped at step {run.step} with a checkpoint; "
                           "continue with --resume")
                break
    summary = {
        "interrupted": stop.requested or (run.step < t.max_steps and "stopped") or None,
        "steps": run.step, "seconds": round(time.time() - started, 2),
        "steps_per_s": round(logs.get("steps_per_s", 0.0), 3),
        "final": {k: round(v, 6) for k, v in logs.items() if isinstance(v, float)},
        "skipped_files": [{"path": p, "reason": r} for p, r in dataset.skipped],
        "checkpoint": str(out / "ldm.safetensors"),
        "processes": d.world,
    }
    if d.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = ["load_ldm", "measure_residual_scale", "resolve_ldm", "save_ldm", "train_ldm"]
