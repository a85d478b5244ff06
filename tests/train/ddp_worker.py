"""Helper of test_ddp.py, run as a script alone or under ``torchrun``: trains a tiny class-conditional
LDM (condition dropout on, so the trainable conditioner and the sharded random draws are exercised)
and has rank 0 save the gradients each optimizer step applied.

    python ddp_worker.py AE OUT BATCH ACCUM
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ldmctl.config import ConditionerSpec, DataConfig, ldm_preset
from ldmctl.train.ldm import train_ldm

GRADS: list[list[torch.Tensor]] = []


def _record(optimizer, _args, _kwargs) -> None:
    GRADS.append(
        [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for g in optimizer.param_groups
            for p in g["params"]
        ]
    )


def main(ae: str, out: str, batch: int, accum: int) -> None:
    cfg = ldm_preset("tiny")
    cfg = replace(
        cfg,
        data=DataConfig(source="builtin:synthetic", size=16),
        model=replace(cfg.model, conditioners=(ConditionerSpec("class", {}, dropout=0.5),)),
        train=replace(
            cfg.train, batch_size=batch, grad_accum=accum, max_steps=3, lr=1e-3, sample_every=1000, save_every=1000
        ),
    )
    register_optimizer_step_pre_hook(_record)
    train_ldm(cfg, ae, out)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(GRADS, os.path.join(out, "grads.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
