"""The one training engine of ``train-ae``, ``train-ldm`` and ``train-classifier``.

A trainer keeps only what is its own (model, loss, optimizer, one step) in a small object, a
:class:`Trainer`; :func:`run` drives its steps and does everything around them, the same way
for every trainer. A run folder holds::

    config.json                      the full training config (:func:`prepare_run_dir`; --resume reads it)
    <trainer.latest>                 the latest model (ae.safetensors, ldm.safetensors): a copy of the newest checkpoint
    checkpoints/step_XXXXXXX.safetensors + .state.pt   the last ``keep_last`` checkpoints
    log.jsonl                        one JSON line per log step
    tensorboard/                     the same scalars as TensorBoard events (only with ``tensorboard`` installed)
    summary.json                     written at the end of the run

- **resume**: :func:`resume` loads the newest *complete* checkpoint (weights and ``.state.pt``):
  the trainer's own state, then the RNG streams and the step, so a resumed run continues
  bit-identically (batch order is a pure function of ``(seed, step)``, see :mod:`ldmctl.train.loop`).
- **signals**: SIGINT / SIGTERM save a checkpoint at the end of the step, then stop (:class:`StopSignals`).
- **previews**: ``trainer.preview()`` every ``sample_every`` steps goes to ``Callbacks.images``.
- **DDP** (:mod:`ldmctl.train.dist`): every rank steps; rank 0 alone writes files and calls back, and
  all ranks meet at a barrier after each checkpoint, so none reads a half-written run.

A run without a folder (``out=None``, e.g. the feature classifier, whose command writes one file at
the end) only steps and calls back: no signals handling, files or checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, Self

import torch
from torch import Tensor

from ldmctl.checkpoint import load_train_state, save_train_state
from ldmctl.errors import CheckpointError, ConfigError, TrainingError
from ldmctl.files import atomic_write, looks_like_checkpoint
from ldmctl.train.dist import Dist
from ldmctl.train.loop import Callbacks, StepLogs, StopSignals, Throughput, rng_state, set_rng_state

log = logging.getLogger(__name__)


class Stepper(Protocol):
    """What :func:`run` needs of any trainer: a step counter it advances, and the step itself."""

    step: int  # optimisation steps done; the engine adds 1 after each train_step

    def train_step(self, batch: Any) -> StepLogs:
        """One optimisation step on this rank's share of a global batch; returns the logs."""

    def preview(self) -> dict[str, Tensor] | None:
        """Named images in [-1, 1] to show every ``sample_every`` steps (None: none)."""

    def summary_extra(self) -> dict[str, Any]:
        """Trainer-specific entries of the run summary (e.g. the scale factor, skipped files)."""


class Trainer(Stepper, Protocol):
    """A trainer that writes a run folder: it saves and restores its own state."""

    generator: torch.Generator  # the run's seeded stream; saved and restored with the global RNGs
    latest: str  # file name of the latest model in the run folder, e.g. "ldm.safetensors"
    preview_name: str  # previews are named f"{preview_name}_{step:07d}"

    def save(self, ckpt: Path) -> dict[str, Any]:
        """Write the weights to ``ckpt``; return the rest of the training state (optimizer, EMA
        counters), tensors and plain values only."""

    def restore(self, ckpt: Path, state: Mapping[str, Any]) -> None:
        """Load the weights of ``ckpt`` and the state :meth:`save` returned (the engine restores
        the step and the RNGs)."""


@dataclass(frozen=True)
class Plan:
    """When the engine stops, logs, previews and saves. ``*_every <= 0``: only at the last step."""

    max_steps: int
    log_every: int = 0
    sample_every: int = 0
    save_every: int = 0
    keep_last: int = 1

    @classmethod
    def of(cls, train: Any) -> Plan:
        """The plan of a training config section (``cfg.train``)."""
        return cls(train.max_steps, train.log_every, train.sample_every, train.save_every, train.keep_last)


def due(step: int, every: int, total: int) -> bool:
    """True when a periodic action (log, grid, checkpoint) is due at ``step``: every N steps and at the end."""
    return (every > 0 and step % every == 0) or step == total


def prepare_run_dir(cfg: Any, out: Path, *, resume: bool) -> Any:
    """Create a run folder holding ``config.json``, or on --resume read the stored config back.

    ``cfg`` is a training config dataclass with a ``train.max_steps`` field; on resume only
    ``max_steps`` may change (a warning says when other options were given and ignored).
    """
    from ldmctl.config import from_dict, to_dict

    stored = out / "config.json"
    if resume:
        if not stored.is_file():
            raise CheckpointError(
                f"--resume: {str(out)!r} holds no run (no config.json)", hint="drop --resume to start a new run"
            )
        old = from_dict(type(cfg), json.loads(stored.read_text()))
        merged = replace(old, train=replace(old.train, max_steps=cfg.train.max_steps))
        if _without_steps(cfg) != _without_steps(merged):
            log.warning("--resume: using the run's stored config; other options were ignored")
        return merged
    if stored.exists():
        raise ConfigError(
            f"{str(out)!r} already holds a run", hint="pass --resume to continue it, or choose another --out-dir"
        )
    foreign = sorted(p.name for p in out.glob("*") if p.is_file() and looks_like_checkpoint(p)) if out.is_dir() else []
    if foreign:  # a run writes its latest model here: it must not replace a checkpoint it did not make
        raise ConfigError(
            f"{str(out)!r} holds checkpoint files that are not part of a run: {', '.join(foreign[:3])}",
            hint="choose another --out-dir (a new or empty folder)",
        )
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output folder {str(out)!r}: {err.strerror}") from None
    atomic_write(stored, lambda tmp: tmp.write_text(json.dumps(to_dict(cfg), indent=2)))
    return cfg


def _without_steps(cfg: Any) -> Any:
    return replace(cfg, train=replace(cfg.train, max_steps=0))


def create_run(cfg: Any, out: Path, dist: Dist, files: Mapping[str, Any] | None = None) -> Any:
    """Start a new run folder: rank 0 writes ``config.json`` and each of ``files`` (name -> JSON
    data); every rank waits for it. Returns ``cfg``."""
    if dist.main:
        cfg = prepare_run_dir(cfg, out, resume=False)
        for name, data in (files or {}).items():
            atomic_write(out / name, lambda tmp, data=data: tmp.write_text(json.dumps(data)))
    dist.barrier()
    return cfg


def complete_checkpoints(out: Path) -> list[Path]:
    """The run's step checkpoints that have their training state, oldest first."""
    ckpts = sorted((out / "checkpoints").glob("step_*.safetensors"))
    return [c for c in ckpts if c.with_suffix(".state.pt").is_file()]


def resume(trainer: Trainer, out: Path, *, say: Callable[[str], None] | None = None) -> None:
    """Load the newest intact checkpoint of ``out``: the trainer's state, the RNGs and the step. A
    damaged newer one (truncated, emptied) is passed over, and ``say`` is told which and why."""
    ckpts = complete_checkpoints(out)
    if not ckpts:
        raise CheckpointError(
            f"--resume: {str(out)!r} has no complete checkpoint yet",
            hint="drop --resume and start again, or use a new --out-dir",
        )
    problems = []
    for ckpt in reversed(ckpts):
        try:
            state = load_train_state(ckpt.with_suffix(".state.pt"))
            trainer.restore(ckpt, state)
        except CheckpointError as err:
            problems.append(f"{ckpt.name}: {err}")
            continue
        if problems:
            note = f"--resume: passed over damaged checkpoint(s) ({'; '.join(problems)}); resuming from {ckpt.name}"
            log.warning("%s", note)
            if say is not None:
                say(note)
        set_rng_state(state["rng"], trainer.generator)
        trainer.step = int(state["step"])
        return
    raise CheckpointError(
        f"--resume: {str(out)!r} has no intact checkpoint ({problems[0]})",
        hint="drop --resume and start again, or use a new --out-dir",
    )


def write_checkpoint(trainer: Trainer, out: Path, keep_last: int) -> Path:
    """Write ``checkpoints/step_XXXXXXX.safetensors`` and its ``.state.pt``, refresh the latest
    model file, and delete all but the last ``keep_last`` checkpoints."""
    ckpt_dir = out / "checkpoints"
    ckpt = ckpt_dir / f"step_{trainer.step:07d}.safetensors"
    state = trainer.save(ckpt)
    check_finite_file(ckpt, trainer.step)
    save_train_state(
        ckpt.with_suffix(".state.pt"), {"step": trainer.step, **state, "rng": rng_state(trainer.generator)}
    )
    atomic_write(out / trainer.latest, lambda tmp: shutil.copyfile(ckpt, tmp))
    for old in sorted(ckpt_dir.glob("step_*.safetensors"))[:-keep_last]:
        old.unlink(missing_ok=True)
        old.with_suffix(".state.pt").unlink(missing_ok=True)
    return ckpt


def check_finite_file(ckpt: Path, step: int) -> None:
    """TrainingError (and the file removed) when the weights just written hold a NaN or inf: a run
    never leaves a broken model as its newest checkpoint. Read back one tensor at a time."""
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt", device="cpu") as fh:
        bad = next((k for k in fh.keys() if not _finite(fh.get_tensor(k))), None)
    if bad is not None:
        ckpt.unlink(missing_ok=True)
        raise TrainingError(
            f"the weights were not finite at step {step} ({bad!r}); stopped, that model is not saved and "
            "the last checkpoint written is kept",
            hint="lower train.lr, set train.grad_clip, or train with --precision fp32",
        )


def _finite(t: Tensor) -> bool:
    return not t.is_floating_point() or bool(torch.isfinite(t).all())


def tensorboard_writer(folder: Path) -> Any | None:
    """A TensorBoard ``SummaryWriter`` into ``folder``, or None when ``tensorboard`` is not installed
    (``pip install 'ldmctl[tensorboard]'``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))


class RunLog:
    """``with RunLog(out) as logs: logs.write(step, {...})``: a line of ``out/log.jsonl`` and the
    same numbers as TensorBoard scalars in ``out/tensorboard/``. ``out=None`` writes nothing."""

    def __init__(self, out: Path | None) -> None:
        self.out, self.file, self.board = out, None, None

    def __enter__(self) -> Self:
        if self.out is not None:
            self.file = (self.out / "log.jsonl").open("a")
            self.board = tensorboard_writer(self.out / "tensorboard")
        return self

    def write(self, step: int, logs: StepLogs) -> None:
        if self.file is not None:
            try:
                self.file.write(json.dumps({"step": step, **logs}) + "\n")
                self.file.flush()
            except OSError as err:  # a full disk: a clear error, the checkpoints already written stay
                raise CheckpointError(f"cannot write {str(self.file.name)!r}: {err.strerror or err}") from None
        if self.board is not None:
            for name, value in logs.items():
                if isinstance(value, (int, float)):
                    self.board.add_scalar(name, float(value), step)

    def __exit__(self, *exc: object) -> None:
        if self.board is not None:
            self.board.close()
        if self.file is not None:
            self.file.close()


def run(
    trainer: Stepper,
    batches: Iterator[Any],
    plan: Plan,
    *,
    out: Path | None,
    dist: Dist | None = None,
    callbacks: Callbacks | None = None,
) -> dict[str, Any]:
    """Step ``trainer`` from its current step to ``plan.max_steps`` on ``batches`` and return the
    run summary (also written to ``out/summary.json``). With a run folder ``out`` the trainer must
    be a :class:`Trainer`: it is checkpointed every ``save_every`` steps, at the end, and when a
    SIGINT/SIGTERM asks to stop."""
    d = dist or Dist()
    cb = callbacks if callbacks is not None and d.main else Callbacks()
    speed, started, logs = Throughput(), time.time(), {}
    signals = StopSignals() if out is not None else contextlib.nullcontext(StopSignals())
    with signals as stop, RunLog(out if d.main else None) as runlog:
        while trainer.step < plan.max_steps:
            logs = trainer.train_step(next(batches))
            trainer.step += 1
            logs["steps_per_s"] = speed.tick()
            if _after_step(trainer, logs, plan, out, d, cb, runlog, stop):
                break
    summary = {
        "interrupted": stop.requested or (trainer.step < plan.max_steps and "stopped") or None,
        "steps": trainer.step,
        "seconds": round(time.time() - started, 2),
        "steps_per_s": round(logs.get("steps_per_s", 0.0), 3),
        "final": {k: round(v, 6) for k, v in logs.items() if isinstance(v, float)},
        **trainer.summary_extra(),
        "checkpoint": str(out / trainer.latest) if out is not None else None,  # type: ignore[attr-defined]
        "processes": d.world,
    }
    if d.main and out is not None:
        atomic_write(out / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary


def _after_step(
    trainer: Any,
    logs: StepLogs,
    plan: Plan,
    out: Path | None,
    d: Dist,
    cb: Callbacks,
    runlog: RunLog,
    stop: StopSignals,
) -> bool:
    """Call back, log, preview and checkpoint after a step; True when the run must stop now."""
    step = trainer.step
    cb.step(step, logs)
    if d.main and due(step, plan.log_every, plan.max_steps):
        runlog.write(step, logs)
    if d.main and due(step, plan.sample_every, plan.max_steps):
        images = trainer.preview()
        if images is not None:
            cb.images(step, f"{trainer.preview_name}_{step:07d}", images)
    if step == plan.max_steps and logs.get("skipped"):
        raise TrainingError(
            f"the loss was not finite at the last step ({step}); stopped, that model is not saved and the "
            "last checkpoint written is kept",
            hint="lower train.lr, set train.grad_clip, or train with --precision fp32",
        )
    stopping = d.any_true(stop.requested is not None)
    if out is not None and (due(step, plan.save_every, plan.max_steps) or stopping):
        if d.main:
            cb.saved(step, str(write_checkpoint(trainer, out, plan.keep_last)))
        d.barrier()
    if stopping:
        cb.message(f"{stop.requested or 'SIGTERM'}: stopped at step {step} with a checkpoint; continue with --resume")
    return stopping


__all__ = [
    "Plan",
    "RunLog",
    "Stepper",
    "Trainer",
    "complete_checkpoints",
    "create_run",
    "due",
    "prepare_run_dir",
    "resume",
    "run",
    "tensorboard_writer",
    "write_checkpoint",
]
