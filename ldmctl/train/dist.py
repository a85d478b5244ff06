"""Distributed data-parallel training with PyTorch's own engine, launched by ``torchrun``.

``torchrun --nproc-per-node N -m ldmctl train-ldm ...`` (or the ``ldmctl`` script) sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`setup` reads them and joins the process
group (NCCL on GPUs, gloo on CPU). Without them a run is one process and nothing here does
anything, so the single-process path is the same code.

The contract that makes N processes equal one process with the same global batch:

- ``train.batch_size`` is the **global** batch; each rank takes ``batch_size / world`` items,
  the rows ``rank, rank + world, ...`` of the global batch (what ``DistributedSampler`` gives);
- every rank draws the random numbers of the whole global batch (timesteps, noise, condition
  dropout) from the same seeded generator and keeps its own rows (:meth:`Dist.rows`), so
  item ``i`` sees the same noise whatever the number of processes;
- gradients are averaged across ranks (DDP for the UNet, an all-reduce for trainable
  conditioner parameters), which equals the gradient of the global-batch mean;
- only rank 0 writes checkpoints, logs and grids; every rank restores from the same checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from ldmctl.device import parse_device, resolve_device
from ldmctl.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return (self.rank, self.world)

    def rows(self, x: Tensor) -> Tensor:
        """This rank's rows of a tensor drawn for the global batch."""
        return x[self.rank :: self.world] if self.world > 1 else x

    def local_batch(self, batch_size: int, accum: int = 1) -> int:
        """Items per rank per step; the global batch must split evenly into ranks x micro-batches."""
        if batch_size % (self.world * accum):
            raise ConfigError(
                f"train.batch_size={batch_size} does not split into {self.world} processes x "
                f"{accum} accumulation micro-batches",
                hint="make the batch size a multiple of (processes x train.grad_accum)",
            )
        return batch_size // self.world

    def all_true(self, flag: bool) -> bool:
        """True only if ``flag`` holds on every rank (so all ranks take the same branch)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
        return bool(t.item() > 0)

    def any_true(self, flag: bool) -> bool:
        return not self.all_true(not flag)

    def average_grads(self, params: list[nn.Parameter]) -> None:
        """Average the gradients of ``params`` (those DDP does not handle) across ranks."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            tdist.all_reduce(p.grad, op=tdist.ReduceOp.SUM)
            p.grad /= self.world

    def mean(self, x: Tensor) -> Tensor:
        """The average of ``x`` over ranks (``x`` itself for one process)."""
        if self.world == 1:
            return x
        x = x.detach().clone()
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
        return x / self.world

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers of ``module`` to every rank."""
        if self.world == 1:
            return
        for t in [*module.parameters(), *module.buffers()]:
            tdist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel when there are several processes."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def no_sync(self, module: nn.Module) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` (skip the all-reduce of a micro-batch's backward), or nothing."""
        return module.no_sync() if hasattr(module, "no_sync") else contextlib.nullcontext()


def setup(device: str = "auto") -> Dist:
    """Join the process group that ``torchrun`` describes in the environment, if any, on
    ``device`` (:func:`ldmctl.device.resolve_device`: ``cuda`` and ``auto`` give each process
    the GPU of its ``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank=local_rank)
    if world > 1 and (dev.type == "mps" or (dev.type == "cuda" and parse_device(device)[1] is not None)):
        raise ConfigError(
            f"train.device = {device!r} under torchrun ({world} processes): each process needs its own device",
            hint="use --device cuda or auto (each process takes the GPU of its LOCAL_RANK), or cpu",
        )
    if world > 1 and not tdist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def teardown(d: Dist) -> None:
    if d.world > 1 and tdist.is_initialized():
        tdist.destroy_process_group()


__all__ = ["Dist", "setup", "teardown"]
