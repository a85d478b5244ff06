"""The generic pieces of every training run: deterministic batches, callbacks, RNG state.

Batch order depends only on ``(seed, step)``: epoch ``e`` uses the permutation drawn from
``seed`` and ``e``, and a run resumed at step ``s`` starts from the same position without
replaying the data. Model code never imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from ldmctl.device import autocast as device_autocast
from ldmctl.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

StepLogs = dict[str, float]


@dataclass
class Callbacks:
    """Hooks a caller (the CLI, a notebook) uses to watch a run. Every field is optional.

    ``on_step(step, logs)`` after each optimisation step (step counts from 1);
    ``on_images(step, name, tensors)`` with named image tensors in [-1, 1] to show;
    ``on_save(step, path)`` after a checkpoint is written;
    ``on_message(text)`` for a one-line notice (skipped files, resume point).
    """

    on_step: Callable[[int, StepLogs], None] | None = None
    on_images: Callable[[int, str, dict[str, Tensor]], None] | None = None
    on_save: Callable[[int, str], None] | None = None
    on_message: Callable[[str], None] | None = None

    def step(self, step: int, logs: StepLogs) -> None:
        if self.on_step:
            self.on_step(step, logs)

    def images(self, step: int, name: str, tensors: dict[str, Tensor]) -> None:
        if self.on_images:
            self.on_images(step, name, tensors)

    def saved(self, step: int, path: str) -> None:
        if self.on_save:
            self.on_save(step, path)

    def message(self, text: str) -> None:
        log.info(text)
        if self.on_message:
            self.on_message(text)


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """Return the data order of ``epoch``: a permutation of range(n) fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=g)


def index_batches(
    n: int, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0, world: int = 1
) -> Iterator[list[int]]:
    """Yield this rank's item indices of each global batch of ``batch_size``, forever.

    The order of an epoch is ``DistributedSampler``'s (shuffled by ``seed`` and the epoch, the
    incomplete tail dropped); rank ``r`` of ``world`` takes every ``world``-th item of it, so the
    ranks' batches together are exactly the one-process batch. A data set smaller than one
    batch is repeated within the batch. Resuming at ``start_step`` replays nothing.
    """
    from torch.utils.data import DistributedSampler

    local = batch_size // world
    per_epoch = max(1, n // batch_size)
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        if n >= batch_size:
            sampler = DistributedSampler(
                range(n), num_replicas=world, rank=rank, shuffle=True, seed=(seed * 1_000_003) % (2**63), drop_last=True
            )
            sampler.set_epoch(epoch)
            order = list(sampler)
        else:
            order = (
                epoch_permutation(n, seed, epoch).repeat(math.ceil(batch_size / n))[:batch_size][rank::world].tolist()
            )
        for b in range(offset, per_epoch):
            yield order[b * local : (b + 1) * local]
        epoch, offset = epoch + 1, 0


class _EpochKeyed(Dataset):
    """Items by ``(index, epoch)`` key: the epoch travels with every index, so DataLoader workers
    created once for the whole run (their decoded-image caches with them) follow it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        if epoch != self.epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.epoch = epoch
        return self.dataset[index]


def batch_stream(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[dict[str, Any]]:
    """Yield collated batches forever, in an order fixed by ``seed``, starting at ``start_step``.

    ``batch_size`` is the global batch; each of ``world`` ranks gets ``batch_size / world``
    items of it (:func:`index_batches`). Every batch is full: the incomplete tail of an epoch is
    dropped, and a data set smaller than one batch is repeated within the batch. With
    ``num_workers > 0`` one DataLoader serves the whole run (its workers, and what they cache,
    live as long as the stream); the batches are the same as without workers.
    """
    n = len(dataset)  # type: ignore[arg-type]
    per_epoch = max(1, n // batch_size)
    indices = index_batches(n, batch_size, seed=seed, start_step=start_step, rank=rank, world=world)
    keyed = _EpochKeyed(dataset)

    def keys() -> Iterator[list[tuple[int, int]]]:
        step = start_step
        while True:
            yield [(i, step // per_epoch) for i in next(indices)]
            step += 1

    if num_workers > 0:
        yield from DataLoader(
            keyed,
            batch_sampler=keys(),
            num_workers=num_workers,  # type: ignore[arg-type]
            collate_fn=default_collate,
        )
    else:
        for key in keys():
            yield default_collate([keyed[k] for k in key])


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Capture every RNG a run touches (torch CPU and CUDA, NumPy, Python, the run's own generator),
    as tensors and plain values that ``torch.load(weights_only=True)`` reads back."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` captured (states written before NumPy was saved still load)."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_at(step: int, *, base: float, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then constant or cosine decay.

    A pure function of the step, so a resumed run follows the same schedule with no state.
    """
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class Throughput:
    """Steps per second over the run so far, excluding the first (warm-up) step."""

    start: float = field(default_factory=time.perf_counter)
    steps: int = 0

    def tick(self) -> float:
        self.steps += 1
        if self.steps == 1:
            self.start = time.perf_counter()
            return 0.0
        return (self.steps - 1) / max(time.perf_counter() - self.start, 1e-9)


class NonFiniteGuard:
    """Skip optimisation steps whose loss is NaN or inf; stop the run after ``limit`` in a row.

    ``ok(loss, step)`` returns False (and logs a warning) for a non-finite loss, so the caller
    skips backward and the optimizer step; the model, optimizer and EMA stay as they were.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.in_a_row, self.skipped = max(1, int(limit)), 0, 0

    def ok(self, loss: Tensor, step: int, what: str = "loss") -> bool:
        if bool(torch.isfinite(loss.detach()).all()):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        log.warning(
            "step %d: %s is %s; step skipped (%d in a row)", step + 1, what, float(loss.detach().float()), self.in_a_row
        )
        if self.in_a_row >= self.limit:
            raise TrainingError(
                f"the {what} was not finite for {self.in_a_row} steps in a row (last at step "
                f"{step + 1}); stopped, the last checkpoint written is kept",
                hint="lower train.lr, set train.grad_clip, or train with --precision fp32",
            )
        return False


class StopSignals:
    """``with StopSignals() as stop:`` turns SIGINT and SIGTERM into ``stop.requested`` (the
    signal's name), so a training loop can save a checkpoint and return at the end of the step;
    a second SIGINT stops at once. Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning(
            "%s: saving a checkpoint at the end of this step, then stopping (SIGINT again: stop now)", self.requested
        )

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """Autocast of a training forward pass (:func:`ldmctl.device.autocast`): bf16 on the CPU or a
    GPU; fp16 on CUDA only, because it needs the gradient scaler that train-ldm runs there."""
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ConfigError(
            "training in precision fp16 needs a CUDA GPU (autocast + gradient scaler)",
            hint="use --precision bf16 on this device",
        )
    return device_autocast(precision, device, exact=False)  # fp32: PyTorch's TF32 defaults, as always
