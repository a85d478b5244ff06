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

import copy
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmctl.checkpoint import (
    load_autoencoder,
    load_state,
    load_train_state,
    read_checkpoint,
    save_checkpoint,
    save_train_state,
)
from ldmctl.conditioning.base import LatentSpec
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.config import ConditionerSpec, LDMConfig, LDMTrainingConfig, from_dict, to_dict
from ldmctl.data import open_dataset
from ldmctl.diffusion.ema import EMA
from ldmctl.diffusion.ldm import DERIVED_KEYS, LatentDiffusion
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.samplers.ddim import ddim
from ldmctl.train.loop import (
    Callbacks,
    NonFiniteGuard,
    autocast,
    StopSignals,
    Throughput,
    batch_stream,
    due,
    file_sha256,
    epoch_permutation,
    lr_at,
    prepare_run_dir,
    rng_state,
    set_lr,
    set_rng_state,
    write_log,
)
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


def with_task(cfg: LDMTrainingConfig) -> LDMTrainingConfig:
    """For ``task = superres``: record the scale in the model and make sure a conditioner reads
    the low-res image (a ``concat`` one, without condition dropout, is added when none does)."""
    if cfg.task != "superres":
        return cfg
    scale = cfg.superres.scale
    if scale < 1 or cfg.data.size % scale:
        raise ConfigError(f"data.size={cfg.data.size} is not a multiple of superres.scale={scale}")
    specs = cfg.model.conditioners
    if not any(s.name in ("concat", "concat-latent") for s in specs):
        specs = (ConditionerSpec("concat", {"channels": 3}, dropout=0.0), *specs)
    return replace(cfg, model=replace(cfg.model, conditioners=specs, sr_scale=scale))


def configure_spec(spec: ConditionerSpec, dataset: Any) -> ConditionerSpec:
    """Let a conditioner fill data-dependent options (e.g. the number of classes) into its spec."""
    from ldmctl.conditioning.compose import build_conditioner  # noqa: F401 - registry check first
    from ldmctl.conditioning.registry import get_conditioner

    cls = get_conditioner(spec.name).cls
    cfg = cls.configure(from_dict(cls.Config, dict(spec.options)), dataset)
    return replace(spec, options=to_dict(cfg))


@torch.no_grad()
def encode_dataset(model: LatentDiffusion, dataset: Any, *, batch_size: int = 64, keys: tuple[str, ...] = (),
                   callback: Any = None) -> dict[str, Any]:
    """Cache of epoch 0 (deterministic crops): ``z0`` scaled latents (N, C, h, w) float32, plus the
    conditioners' input ``keys`` of every item (tensors stacked, numbers as a tensor, text as a list)."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    latents, extras = [], {k: [] for k in keys}
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        latents.append(model.encode(torch.stack([it["image"] for it in items])))
        for k in keys:
            if k not in items[0]:
                raise ConfigError(f"a conditioner reads batch[{k!r}], which items of {getattr(dataset, 'name', 'this data set')} do not have")
            extras[k] += [it[k] for it in items]
        if callback:
            callback(min(start + batch_size, len(dataset)), len(dataset))
    cache: dict[str, Any] = {"z0": torch.cat(latents)}
    for k, values in extras.items():
        first = values[0]
        cache[k] = (torch.stack(values) if isinstance(first, Tensor) else
                    values if isinstance(first, str) else torch.as_tensor(values))
    return cache


def take(cache: dict[str, Any], idx: Tensor) -> dict[str, Any]:
    """Rows ``idx`` of every entry of a cache (lists indexed element-wise)."""
    return {k: (v[idx] if isinstance(v, Tensor) else [v[i] for i in idx.tolist()]) for k, v in cache.items()}


def latent_batches(cache: dict[str, Any], batch_size: int, *, seed: int, start_step: int):
    """Yield batches of a latent cache forever, order fixed by (seed, step) like batch_stream."""
    n = cache["z0"].shape[0]
    per_epoch = max(1, n // batch_size)
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        perm = epoch_permutation(n, seed, epoch)
        if n < batch_size:
            perm = perm.repeat(-(-batch_size // n))
        for b in range(offset, per_epoch):
            yield take(cache, perm[b * batch_size:(b + 1) * batch_size])
        epoch, offset = epoch + 1, 0


def build_run(cfg: LDMTrainingConfig, ae: nn.Module) -> LDMRun:
    torch.manual_seed(cfg.train.seed)
    model = LatentDiffusion(cfg.model, ae)
    ema = EMA(model.unet, cfg.ema.decay, warmup=cfg.ema.warmup)
    trainable = [p for p in model.conditioners.parameters() if p.requires_grad]
    cond_ema = EMA(model.conditioners, cfg.ema.decay, warmup=cfg.ema.warmup) if trainable else None
    opt = torch.optim.AdamW(list(model.unet.parameters()) + trainable, lr=cfg.train.lr, betas=cfg.train.adam_betas,
                            weight_decay=0.0)
    return LDMRun(cfg, model, ema, opt, torch.Generator().manual_seed(cfg.train.seed), cond_ema=cond_ema,
                  guard=NonFiniteGuard(cfg.train.max_nonfinite))


def train_step(run: LDMRun, batch: dict[str, Any]) -> dict[str, float]:
    t = run.cfg.train
    lr = lr_at(run.step, base=t.lr, warmup=t.warmup_steps, total=t.max_steps, schedule=t.lr_schedule,
               min_ratio=t.lr_min_ratio)
    set_lr(run.opt, lr)
    run.model.unet.train()
    run.model.conditioners.train()
    with autocast(t.precision):
        cond = run.model.cond(batch, generator=run.generator, train_dropout=True)
        loss, logs = run.model.loss(batch["z0"], cond, generator=run.generator)
    if not run.guard.ok(loss, run.step):
        return {**logs, "lr": lr, "skipped": 1.0}
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if t.grad_clip > 0:
        params = [p for g in run.opt.param_groups for p in g["params"]]
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
    run.opt.step()
    if (run.step + 1) % run.cfg.ema.every == 0:
        run.ema.update(run.model.unet)
        if run.cond_ema is not None:
            run.cond_ema.update(run.model.conditioners)
    logs["lr"] = lr
    return logs


def ldm_tensors(model: LatentDiffusion, ema: EMA, cond_ema: EMA | None = None) -> dict[str, Tensor]:
    """Everything one checkpoint file holds: ``unet.*``, ``ema.*``, ``ae.*`` and, for conditional
    models, ``cond.*`` / ``ema_cond.*`` (the conditioners' weights and their EMA)."""
    tensors = {f"unet.{k}": v for k, v in model.unet.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update({f"ae.{k}": v for k, v in model.autoencoder.state_dict().items()})
    tensors.update({f"cond.{k}": v for k, v in model.conditioners.state_dict().items()})
    if cond_ema is not None:
        tensors.update({f"ema_cond.{k}": v for k, v in cond_ema.state_dict().items()})
    return tensors


def save_ldm(model: LatentDiffusion, ema: EMA, path: str | Path, *, extra: dict[str, Any],
             cond_ema: EMA | None = None) -> Path:
    """Write a self-contained LDM checkpoint (the autoencoder included, so one file samples).

    The config records which plugin package (and version) provides each conditioner, so loading
    it where that package is missing names what to install.
    """
    config = {"ldm": to_dict(model.config), "autoencoder": to_dict(model.autoencoder.config),
              "plugins": model.conditioners.plugins()}
    return save_checkpoint(path, ldm_tensors(model, ema, cond_ema), kind="ldm", config=config, extra=extra)


def load_ldm(path: str | Path, *, weights: str = "ema") -> LatentDiffusion:
    """Rebuild a LatentDiffusion from one checkpoint; ``weights`` = ema (default) or raw UNet weights."""
    from ldmctl.autoencoder import build_autoencoder
    from ldmctl.config import AutoencoderConfig

    if weights not in ("ema", "raw"):
        raise ConfigError(f"--weights {weights!r}: choose ema or raw")
    ckpt = read_checkpoint(path, expect_kind="ldm")
    try:
        cfg = from_dict(LDMConfig, ckpt.config["ldm"])
        ae_cfg = from_dict(AutoencoderConfig, ckpt.config["autoencoder"])
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{str(ckpt.path)!r}: stored config is invalid: {err}") from None
    parts: dict[str, dict[str, Tensor]] = {"unet": {}, "ema": {}, "ae": {}, "cond": {}, "ema_cond": {}}
    for key, value in ckpt.tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise CheckpointError(f"{str(ckpt.path)!r}: unexpected tensor {key!r}", hint="the file may have been tampered with")
        parts[prefix][rest] = value
    if weights == "raw" and not parts["unet"] and parts["ema"]:
        raise CheckpointError(f"{str(ckpt.path)!r} is an exported checkpoint: it holds the EMA weights only",
                              hint="use --weights ema, or the training checkpoint for the raw weights")
    ae = build_autoencoder(ae_cfg)
    load_state(ae, parts["ae"], f"{ckpt.path} (autoencoder)")
    unet = UNet(cfg.unet)
    load_state(unet, parts["ema" if weights == "ema" else "unet"], f"{ckpt.path} ({weights} UNet)")
    packages = {name: p.get("package", "") for name, p in ckpt.config.get("plugins", {}).items()}
    conds = ConditionerSet(cfg.conditioners, LatentSpec(cfg.unet.in_channels, cfg.latent_size,
                                                        ae_cfg.downsample_factor), packages)
    use_ema = weights == "ema" and parts["ema_cond"]
    load_state(conds, parts["ema_cond" if use_ema else "cond"], f"{ckpt.path} (conditioners)")
    return LatentDiffusion(cfg, ae, unet, conds).eval()


def save_run(run: LDMRun, out: Path, extra: dict[str, Any]) -> Path:
    ckpt_dir = out / "checkpoints"
    ckpt = ckpt_dir / f"step_{run.step:07d}.safetensors"
    meta = {"step": run.step, "train_config": to_dict(run.cfg), **extra}
    save_ldm(run.model, run.ema, ckpt, extra=meta, cond_ema=run.cond_ema)
    state = {"step": run.step, "opt": run.opt.state_dict(), "ema_updates": run.ema.updates,
             "rng": rng_state(run.generator)}
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
    tensors = read_checkpoint(ckpts[-1], expect_kind="ldm").tensors
    load_state(run.model.unet, {k[5:]: v for k, v in tensors.items() if k.startswith("unet.")}, str(ckpts[-1]))
    state = load_train_state(ckpts[-1].with_suffix(".state.pt"))
    run.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, state["ema_updates"])
    load_state(run.model.conditioners, {k[5:]: v for k, v in tensors.items() if k.startswith("cond.")}, str(ckpts[-1]))
    if run.cond_ema is not None:
        run.cond_ema.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("ema_cond.")},
                                     state["ema_updates"])
    run.opt.load_state_dict(state["opt"])
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
    cond = ema_conds.eval()(run.model.derived_inputs(take(batch, torch.arange(n)))) if len(ema_conds) else None
    g = torch.Generator().manual_seed(run.cfg.train.seed + 1)
    z = run.model.sample_latents(ddim, n, steps=run.cfg.sample_steps, generator=g,
                                 model_fn=run.model.model_fn(cond, unet=ema_unet.eval()))
    return run.model.decode(z)


def train_ldm(cfg: LDMTrainingConfig, ae_path: str | Path | None, out_dir: str | Path, *, resume: bool = False,
              callbacks: Callbacks | None = None) -> dict[str, Any]:
    """Train an unconditional LDM on the latents of autoencoder ``ae_path``; return the run summary.

    On ``resume`` the autoencoder defaults to the one the run started with, and must be unchanged
    (same SHA-256), since the cached latents and the UNet depend on it.
    """
    cb = callbacks or Callbacks()
    out = Path(out_dir)
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
        from ldmctl.data.degrade import SuperresDataset

        dataset = SuperresDataset(dataset, cfg.superres, seed=cfg.train.seed)
    cfg = resolve_ldm(cfg, ae, dataset)
    if not resume:
        cfg = prepare_run_dir(cfg, out, resume=False)
        (out / "ae_source.json").write_text(json.dumps({"path": str(ae_path), "sha256": file_sha256(ae_path)}))
    run = build_run(cfg, ae)
    if resume:
        restore_run(run, out)
        cb.message(f"resumed at step {run.step}")
    t = cfg.train
    keys = tuple(dict.fromkeys(DERIVED_KEYS.get(c.input_key, c.input_key) for c in run.model.conditioners.items))
    if cfg.cache_latents:
        started = time.time()
        cache = encode_dataset(run.model, dataset, keys=keys)
        cb.message(f"cached {cache['z0'].shape[0]} latents of shape {tuple(cache['z0'].shape[1:])} "
                   f"in {time.time() - started:.1f} s")
        batches = latent_batches(cache, t.batch_size, seed=t.seed, start_step=run.step)
        preview_batch = take(cache, torch.arange(min(cfg.sample_count, cache["z0"].shape[0])))
    else:
        images = batch_stream(dataset, t.batch_size, seed=t.seed, start_step=run.step, num_workers=t.num_workers)
        batches = ({"z0": run.model.encode(b["image"]), **{k: b[k] for k in keys}} for b in images)
        preview_batch = None
    return _loop(run, batches, out, dataset, cb, ae_path, preview_batch)


def _loop(run: LDMRun, batches: Any, out: Path, dataset: Any, cb: Callbacks, ae_path: str | Path,
          preview_batch: dict[str, Any] | None) -> dict[str, Any]:
    t = run.cfg.train
    ema_unet = copy.deepcopy(run.model.unet).requires_grad_(False)
    ema_conds = copy.deepcopy(run.model.conditioners).requires_grad_(False)
    speed, started, logs = Throughput(), time.time(), {}
    extra = {"autoencoder": str(ae_path), "skipped_files": len(dataset.skipped)}
    with StopSignals() as stop, (out / "log.jsonl").open("a") as logfile:
        while run.step < t.max_steps:
            logs = train_step(run, next(batches))
            run.step += 1
            logs["steps_per_s"] = speed.tick()
            cb.step(run.step, logs)
            if due(run.step, t.log_every, t.max_steps):
                write_log(logfile, run.step, logs)
            if due(run.step, t.sample_every, t.max_steps):
                batch = preview_batch if preview_batch is not None else next(batches)
                cb.images(run.step, f"samples_{run.step:07d}", {"samples": preview(run, ema_unet, ema_conds, batch)})
            if due(run.step, t.save_every, t.max_steps):
                cb.saved(run.step, str(save_run(run, out, extra)))
            elif stop.requested:
                cb.saved(run.step, str(save_run(run, out, extra)))
            if stop.requested:
                cb.message(f"{stop.requested}: stopped at step {run.step} with a checkpoint; continue with --resume")
                break
    summary = {
        "interrupted": stop.requested,
        "steps": run.step, "seconds": round(time.time() - started, 2),
        "steps_per_s": round(logs.get("steps_per_s", 0.0), 3),
        "final": {k: round(v, 6) for k, v in logs.items() if isinstance(v, float)},
        "skipped_files": [{"path": p, "reason": r} for p, r in dataset.skipped],
        "checkpoint": str(out / "ldm.safetensors"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = ["encode_dataset", "load_ldm", "resolve_ldm", "save_ldm", "train_ldm"]
