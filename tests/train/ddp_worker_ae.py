"""Helper of test_ddp.py, run alone or under ``torchrun``: trains a tiny KL autoencoder for 3 steps
(GAN off: its BatchNorm uses per-rank statistics) and has rank 0 save the gradients of each step.

    python ddp_worker_ae.py OUT BATCH
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ldmctl.config import PRESETS, DataConfig
from ldmctl.train.ae import train_ae

GRADS: list[list[torch.Tensor]] = []


def _record(optimizer, _args, _kwargs) -> None:
    GRADS.append(
        [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for g in optimizer.param_groups
            for p in g["params"]
        ]
    )


def main(out: str, batch: int) -> None:
    cfg = PRESETS["tiny"]
    cfg = replace(
        cfg,
        data=DataConfig(source="builtin:synthetic", size=16),
        loss=replace(cfg.loss, perceptual="none", disc_start=1000),
        train=replace(cfg.train, batch_size=batch, max_steps=3, sample_every=1000, save_every=1000),
    )
    register_optimizer_step_pre_hook(_record)
    train_ae(cfg, out)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(GRADS, os.path.join(out, "grads.pt"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
