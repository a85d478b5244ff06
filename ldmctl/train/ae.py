"""Train a first-stage autoencoder: L1 + LPIPS + KL/VQ, then a PatchGAN from ``disc_start``.

Generator and discriminator are optimised in alternation (Esser et al. 2021; LDM §3.1). The run
(folder, resume, signals, logs, checkpoints) is :mod:`ldmctl.train.engine`'s; a run folder holds::

    config.json                  the full AETrainingConfig (what --resume reads)
    ae.safetensors               the latest autoencoder: weights, scale factor, config
    checkpoints/step_XXXXXXX.safetensors + .state.pt   the last K checkpoints (K = keep_last)
    samples/recon_XXXXXXX.png    reconstruction grids (written by the CLI from Callbacks.images)
    log.jsonl, tensorboard/      one JSON line (and TensorBoard scalars) per log step
    summary.json                 written at the end of the run
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ldmctl.autoencoder import AELoss, build_autoencoder, build_perceptual
from ldmctl.checkpoint import load_autoencoder, load_state, read_checkpoint, save_autoencoder
from ldmctl.config import AETrainingConfig, to_dict
from ldmctl.data import open_dataset
from ldmctl.errors import ConfigError
from ldmctl.train import engine
from ldmctl.train.configure import resolve_ae
from ldmctl.train.dist import Dist, setup, teardown
from ldmctl.train.loop import Callbacks, NonFiniteGuard, autocast, batch_stream, lr_at, set_lr
from ldmctl.train.optim import build_optimizer
from ldmctl.train.runfolder import run_folder

log = logging.getLogger(__name__)


@dataclass
class AERun:
    """The live objects of one autoencoder training run: the engine's :class:`~ldmctl.train.engine.Trainer`."""

    latest: ClassVar[str] = "ae.safetensors"
    preview_name: ClassVar[str] = "recon"

    cfg: AETrainingConfig
    ae: nn.Module
    loss: AELoss
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    guard: NonFiniteGuard = field(default_factory=lambda: NonFiniteGuard(5))
    dist: Dist = field(default_factory=Dist)
    scale_images: Tensor | None = None  # the fixed images of the scale factor (re-estimated at each save)
    grid_images: Tensor | None = None  # the fixed images of the reconstruction grids
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unusable files

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        return train_step(self, batch["image"])

    def save(self, ckpt: Path) -> dict[str, Any]:
        """Re-estimate the scale factor, write the autoencoder; return the losses' and optimizers' state."""
        self.ae.scale_factor.fill_(estimate_scale_factor(self.ae, self.scale_images, seed=self.cfg.train.seed))
        meta = {"step": self.step, "train_config": to_dict(self.cfg), "skipped_files": len(self.skipped)}
        save_autoencoder(self.ae, ckpt, extra=meta)
        return {"loss": self.loss.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def restore(self, ckpt: Path, state: dict[str, Any]) -> None:
        load_state(self.ae, read_checkpoint(ckpt, expect_kind="autoencoder").tensors, str(ckpt))
        self.loss.load_state_dict(state["loss"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    def preview(self) -> dict[str, Tensor]:
        return reconstruct_grid(self.ae, self.grid_images)

    def summary_extra(self) -> dict[str, Any]:
        return {
            "scale_factor": float(self.ae.scale_factor),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def build_run(cfg: AETrainingConfig, perceptual: nn.Module | None, dist: Dist | None = None) -> AERun:
    """Build model, loss and optimizers from the config, seeded by ``cfg.train.seed``."""
    d = dist or Dist()
    d.local_batch(cfg.train.batch_size)
    torch.manual_seed(cfg.train.seed)
    ae = build_autoencoder(cfg.model).to(d.device)
    loss = AELoss(cfg.loss, kind=cfg.model.kind, perceptual=perceptual).to(d.device)
    loss.grad_reduce = d.mean if d.world > 1 else None
    t = cfg.train
    g_named = list(ae.named_parameters()) + [("logvar", loss.logvar)]
    opt_g = build_optimizer(t.optimizer, g_named, lr=t.lr, betas=t.adam_betas)
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=t.lr, betas=t.adam_betas)
    gen = torch.Generator().manual_seed(t.seed)
    return AERun(cfg, ae, loss, opt_g, opt_d, gen, guard=NonFiniteGuard(cfg.train.max_nonfinite), dist=d)


def _finite(d: Dist, loss: Tensor) -> Tensor:
    """``loss``, or NaN on every rank when it is not finite on any (so all ranks skip together)."""
    return loss if d.all_true(bool(torch.isfinite(loss.detach()).all())) else loss.detach() * float("nan")


def train_step(run: AERun, x: Tensor) -> dict[str, float]:
    """One generator step, then (once the GAN is on) one discriminator step.

    Data-parallel (:mod:`ldmctl.train.dist`): ``x`` is this rank's share of the global batch;
    gradients are averaged across ranks with an all-reduce (the adaptive weight's last-layer
    gradients too), so the update is the global batch's. The discriminator's BatchNorm uses
    each rank's own batch statistics.
    """
    cfg, step, t, d = run.cfg, run.step, run.cfg.train, run.dist
    lr = lr_at(
        step, base=t.lr, warmup=t.warmup_steps, total=t.max_steps, schedule=t.lr_schedule, min_ratio=t.lr_min_ratio
    )
    set_lr(run.opt_g, lr)
    set_lr(run.opt_d, lr)
    run.ae.train()
    x = x.to(d.device)
    with autocast(cfg.train.precision, d.device):
        out = run.ae(x, generator=run.generator, shard=d.shard)
    out.recon = out.recon.float()
    loss_g, logs = run.loss.generator_loss(x, out, step=step, last_layer=run.ae.last_layer)
    if not run.guard.ok(_finite(d, loss_g), step):
        return {**logs, **out.stats, "lr": lr, "skipped": 1.0}
    run.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    d.average_grads([p for g in run.opt_g.param_groups for p in g["params"]])
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.ae.parameters(), cfg.train.grad_clip)
    run.opt_g.step()
    if run.loss.gan_active(step):
        loss_d, d_logs = run.loss.discriminator_loss(x, out.recon.detach(), step=step)
        if run.guard.ok(_finite(d, loss_d), step, "discriminator loss"):
            run.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            d.average_grads(list(run.loss.discriminator.parameters()))
            run.opt_d.step()
        logs.update(d_logs)
    if cfg.model.kind == "vq" and cfg.model.vq_restart_dead and (step + 1) % cfg.model.vq_restart_every == 0:
        with torch.no_grad():
            run.ae.restart_dead_codes(run.ae.encode(x))
        d.broadcast_module(run.ae)  # rank 0's restarted codebook everywhere
    logs.update(out.stats)
    logs["lr"] = lr
    return logs


@torch.no_grad()
def estimate_scale_factor(ae: nn.Module, images: Tensor, *, seed: int) -> float:
    """Return 1 / std of posterior-sampled latents of ``images`` (LDM's ``scale_by_std``)."""
    was_training = ae.training
    ae.eval()
    g = torch.Generator().manual_seed(seed)
    z = torch.cat([ae.encode(chunk, sample=True, generator=g) for chunk in images.split(16)])
    ae.train(was_training)
    std = z.float().flatten().std().item()
    return 1.0 / max(std, 1e-8)


def fixed_images(dataset: Any, n: int) -> Tensor:
    """The first ``n`` items of epoch 0 (deterministic): used for grids and the scale factor."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    n = min(n, len(dataset))
    return torch.stack([dataset[i]["image"] for i in range(n)])


def init_weights(ae: nn.Module, path: str | Path) -> None:
    """Load the weights of autoencoder checkpoint ``path``; its architecture must match."""
    ckpt = read_checkpoint(path, expect_kind="autoencoder")
    ours = to_dict(ae.config)
    diff = sorted(k for k in ours if k not in _TRAINING_ONLY and ckpt.config.get(k) != ours[k])
    if diff:
        raise ConfigError(
            f"--init {str(path)!r}: its architecture differs from this run's in {diff}",
            hint="use the same --preset/--config model settings as the run that made it",
        )
    load_state(ae, ckpt.tensors, str(path))


# model fields that only affect training, so --init may change them
_TRAINING_ONLY = {"vq_restart_dead", "vq_restart_every", "dropout", "posterior_logvar_init"}


def train_ae(
    cfg: AETrainingConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    perceptual: nn.Module | None = None,
    lpips_weights: str | Path | None = None,
    init_from: str | Path | None = None,
    callbacks: Callbacks | None = None,
) -> dict[str, Any]:
    """Train an autoencoder into ``out_dir`` and return the run summary.

    ``perceptual`` injects the LPIPS network (tests pass a random-backbone one); when it is
    None and the config asks for LPIPS, it is loaded from ``lpips_weights`` or the torch cache
    before anything else happens, so missing weights fail at once. ``init_from`` starts a new
    run (fresh optimizers, step 0) from the weights of an existing autoencoder checkpoint,
    e.g. to fine-tune at a larger crop size or on your own photos.
    """
    out = Path(out_dir)
    if resume:  # the run's stored config (data source, perceptual loss included) wins over the flags
        cfg = engine.prepare_run_dir(cfg, out, resume=True)
    cfg = resolve_ae(cfg)
    if perceptual is None and cfg.loss.perceptual == "lpips":
        perceptual = build_perceptual(cfg.loss.perceptual_net, weights=lpips_weights)
    d = setup(cfg.train.device)
    cb = callbacks or Callbacks()
    try:
        with run_folder(out, resume=resume, main=d.main, say=cb.message):
            return _train(cfg, out, resume, perceptual, init_from, cb, d)
    finally:
        teardown(d)


def _train(
    cfg: AETrainingConfig,
    out: Path,
    resume: bool,
    perceptual: nn.Module | None,
    init_from: str | Path | None,
    cb: Callbacks,
    d: Dist,
) -> dict[str, Any]:
    cb = cb if d.main else Callbacks()
    dataset = open_dataset(cfg.data, seed=cfg.train.seed)
    if not resume:
        cfg = engine.create_run(cfg, out, d)
    run = build_run(cfg, perceptual, d)
    if resume:
        engine.resume(run, out, say=cb.message)
        cb.message(f"resumed at step {run.step}")
    elif init_from is not None:
        init_weights(run.ae, init_from)
        cb.message(f"initialised the autoencoder from {init_from}")
    run.scale_images = fixed_images(dataset, cfg.train.scale_samples).to(d.device)
    run.grid_images = run.scale_images[:8]  # the first items of epoch 0, like scale_images
    run.skipped = dataset.skipped
    if not resume and init_from is None and getattr(run.ae, "shortcut_in", None) is not None:
        # every rank computes the same PCA from the same first items, so no broadcast is needed
        run.ae.init_linear_shortcut(run.scale_images)
        cb.message(f"linear shortcut initialised by a PCA of {len(run.scale_images)} training images")
    t = cfg.train
    batches = batch_stream(
        dataset, t.batch_size, seed=t.seed, start_step=run.step, num_workers=t.num_workers, rank=d.rank, world=d.world
    )
    return engine.run(run, batches, engine.Plan.of(t), out=out, dist=d, callbacks=cb)


@torch.no_grad()
def reconstruct_grid(ae: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Originals and their deterministic reconstructions, for a grid."""
    was_training = ae.training
    ae.eval()
    recon = ae.decode(ae.encode(x))
    ae.train(was_training)
    return {"input": x, "reconstruction": recon.clamp(-1, 1)}


__all__ = ["train_ae", "estimate_scale_factor", "load_autoencoder"]
