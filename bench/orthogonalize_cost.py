"""What one Muon step's orthogonalisation costs on this CPU: exact polar factor vs Newton-Schulz.

    python bench/orthogonalize_cost.py [--config docs/recipes/ae-kl-f4-photos.toml] [--repeats 10]

Takes the matrices Muon updates in the recipe's autoencoder (``muon_eligible``; conv kernels
read as out x in*kh*kw), fills them with Gaussian "gradients", and times, per optimizer step,
(a) ``ldmctl.train.optim.orthogonalize`` (eigendecomposition of the smaller Gram matrix, one
batched call per shape, what train-ae runs) and (b) five quintic Newton-Schulz iterations per
matrix (the usual Muon approximation, written here only for the comparison). Also prints the
range of singular values each leaves (exact: all 1).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

from ldmctl.autoencoder import build_autoencoder
from ldmctl.config import load_file, merge, preset
from ldmctl.train.optim import muon_eligible, orthogonalize


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-2, -1)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        s = x @ x.transpose(-2, -1)
        x = a * x + (b * s + c * (s @ s)) @ x
    return x.transpose(-2, -1) if tall else x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="docs/recipes/ae-kl-f4-photos.toml")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    cfg = merge(preset("small"), load_file(args.config))
    ae = build_autoencoder(cfg.model)
    shapes: dict[tuple[int, int], int] = defaultdict(int)
    for name, p in ae.named_parameters():
        if muon_eligible(name, p):
            shapes[(p.shape[0], p[0].numel())] += 1
    g = torch.Generator().manual_seed(0)
    grads = {s: torch.randn(n, *s, generator=g) for s, n in shapes.items()}
    out = {"matrices": sum(shapes.values()), "threads": torch.get_num_threads()}
    for label, fn in (("exact", orthogonalize), ("newton_schulz_5", newton_schulz)):
        fn(grads[next(iter(grads))])  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            results = [fn(m) for m in grads.values()]
        out[f"{label}_ms_per_step"] = round(1000 * (time.perf_counter() - t0) / args.repeats, 1)
        sv = torch.cat([torch.linalg.svdvals(r).flatten() for r in results])
        out[f"{label}_singular_values"] = [round(sv.min().item(), 3), round(sv.max().item(), 3)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
