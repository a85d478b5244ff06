"""Optimizers for the training loops: Adam, or Muon for weight matrices with Adam for the rest.

Muon (Jordan et al. 2024) keeps a momentum of each weight matrix's gradient and steps along its
nearest semi-orthogonal matrix (its polar factor; Muon approximates it with Newton-Schulz
iterations, here it is computed exactly, see :func:`orthogonalize`): every singular
direction of the update moves at the same rate, so rarely-excited directions are not starved
the way they are under a per-element step size. A convolution kernel (out, in, kh, kw) is
treated as the matrix (out, in*kh*kw). The update is scaled by ``0.2 * sqrt(max(rows, cols))``,
which gives it the root-mean-square of a typical Adam step, so one learning rate (and one
schedule, :func:`ldmctl.train.loop.set_lr`) serves both kinds of parameter.

``torch.optim.Muon`` takes only 2-D parameters and no others, so one optimizer here holds both
groups: one ``state_dict`` for ``--resume``, one ``set_lr``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn


def orthogonalize(g: Tensor, rel_floor: float = 1e-3) -> Tensor:
    """``U V^T`` for each ``g = U S V^T`` in a batch ``(n, rows, cols)``, through the Gram matrix.

    Exact (an eigendecomposition of the smaller Gram matrix) and, on a CPU, about half the time
    of five Newton-Schulz iterations (``bench/orthogonalize_cost.py``). Singular values below
    ``rel_floor`` times the largest are scaled up to at most 1, not to exactly 1, so noise
    directions are not amplified without bound.
    """
    x = g.float()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-2, -1)
    e, v = torch.linalg.eigh(x @ x.transpose(-2, -1))
    e = e.clamp_min((e[..., -1:] * rel_floor**2).clamp_min(1e-30))
    o = (v * e.rsqrt().unsqueeze(-2)) @ v.transpose(-2, -1) @ x
    return o.transpose(-2, -1) if tall else o


def muon_eligible(name: str, p: Tensor, min_side: int = 16) -> bool:
    """Weight matrices and conv kernels whose both matrix sides are at least ``min_side``.

    Embedding tables (a VQ codebook) are rows of independent vectors, not a linear map: Adam.
    """
    if p.ndim < 2 or not name.endswith("weight") or "embedding" in name or "codebook" in name:
        return False
    rows, cols = p.shape[0], p[0].numel()
    return min(rows, cols) >= min_side


class MuonWithAdam(torch.optim.Optimizer):
    """Muon for the groups marked ``muon=True``, Adam (``betas``, ``eps``) for the others."""

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.99),
        momentum: float = 0.95,
        eps: float = 1e-8,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, momentum=momentum, eps=eps, muon=False)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer.step
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                self._muon(params, group)
            else:
                for p in params:
                    self._adam(p, group)
        return loss

    def _muon(self, params: list[Tensor], group: dict) -> None:
        """Nesterov momentum, then one batched orthogonalisation per matrix shape."""
        mu = group["momentum"]
        by_shape: dict[tuple[int, int], list[tuple[Tensor, Tensor]]] = {}
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum"] = torch.zeros_like(p)
            buf = state["momentum"].mul_(mu).add_(p.grad)
            g = p.grad.add(buf, alpha=mu).reshape(p.shape[0], -1)
            by_shape.setdefault(tuple(g.shape), []).append((p, g))
        for (rows, cols), items in by_shape.items():
            step = -group["lr"] * 0.2 * math.sqrt(max(rows, cols))
            ortho = orthogonalize(torch.stack([g for _, g in items]))
            for (p, _), o in zip(items, ortho, strict=True):
                p.add_(o.view_as(p).to(p.dtype), alpha=step)

    def _adam(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        b1, b2 = group["betas"]
        state["step"] += 1
        t = state["step"]
        state["exp_avg"].lerp_(p.grad, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - b1**t))


def build_optimizer(
    kind: str, named: Iterable[tuple[str, nn.Parameter]], *, lr: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    """``adam``: Adam over all parameters; ``muon``: :class:`MuonWithAdam`."""
    named = list(named)
    if kind == "adam":
        return torch.optim.Adam([p for _, p in named], lr=lr, betas=betas)
    if kind != "muon":
        raise ValueError(f"unknown optimizer {kind!r}")
    mat = [p for n, p in named if muon_eligible(n, p)]
    rest = [p for n, p in named if not muon_eligible(n, p)]
    groups = [g for g in (dict(params=mat, muon=True), dict(params=rest, muon=False)) if g["params"]]
    return MuonWithAdam(groups, lr=lr, betas=betas)
