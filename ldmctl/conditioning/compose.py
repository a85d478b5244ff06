"""Turning a model's conditioner specs into live modules, UNet widths and a :class:`Cond` per batch.

Outputs of several conditioners of one kind are joined: concat maps and add vectors on the feature
axis, crossattn contexts and tokens on the sequence axis (their widths must then agree). In
training, each conditioner's output is replaced per sample by its null output with probability
``spec.dropout`` (classifier-free guidance training; the original LDM code lacks this).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn

from ldmctl.conditioning.base import Cond, Conditioner, CondOutput, LatentSpec
from ldmctl.conditioning.registry import get_conditioner
from ldmctl.config import ConditionerSpec, from_dict
from ldmctl.errors import ConfigError, PluginError

FIELD = {"concat": "concat", "add": "add", "crossattn": "context", "tokens": "tokens"}


def build_conditioner(spec: ConditionerSpec, latent: LatentSpec, *, package: str | None = None) -> Conditioner:
    """Instantiate a registered conditioner from its spec (options checked strictly)."""
    reg = get_conditioner(spec.name, needed_package=package)
    try:
        cfg = from_dict(reg.cls.Config, dict(spec.options))
    except ConfigError as err:
        raise ConfigError(
            f"conditioner {spec.name!r}: {err}", hint=f"its options: {[f.name for f in fields(reg.cls.Config)]}"
        ) from None
    try:
        return reg.cls(cfg, latent)
    except RuntimeError as err:  # a stored or given option asking for more memory than there is
        if "allocate" not in str(err):
            raise
        found = re.search(r"allocate (\d+) bytes", str(err))
        need = f"{int(found.group(1)) / 2**30:,.1f} GiB" if found else "more memory than this machine has"
        raise ConfigError(
            f"conditioner {spec.name!r}: its options {dict(spec.options)} ask for {need} of memory",
            hint="check its options (e.g. num_classes, dim)",
        ) from None


class ConditionerSet(nn.Module):
    """The conditioners of one model, in spec order."""

    def __init__(
        self, specs: tuple[ConditionerSpec, ...], latent: LatentSpec, packages: Mapping[str, str] | None = None
    ) -> None:
        super().__init__()
        self.specs = tuple(specs)
        self.items = nn.ModuleList(build_conditioner(s, latent, package=(packages or {}).get(s.name)) for s in specs)

    def __len__(self) -> int:
        return len(self.items)

    def unet_widths(self) -> dict[str, int]:
        """The UNetConfig fields these conditioners fix: concat_channels, add_dim, context_dim, token_dim."""
        widths = {"concat_channels": 0, "add_dim": 0, "context_dim": 0, "token_dim": 0}
        for c in self.items:
            if c.kind == "concat":
                widths["concat_channels"] += c.out_dim
            elif c.kind == "add":
                widths["add_dim"] += c.out_dim
            else:
                key = "context_dim" if c.kind == "crossattn" else "token_dim"
                if widths[key] and widths[key] != c.out_dim:
                    raise PluginError(
                        f"{c.kind} conditioners have different widths ({widths[key]} and {c.out_dim})",
                        hint="give them the same output width so their sequences can be joined",
                    )
                widths[key] = c.out_dim
        return widths

    def plugins(self) -> dict[str, dict[str, str]]:
        """Which package and version provides each conditioner (stored in checkpoints)."""
        from ldmctl.conditioning.registry import conditioners

        known = conditioners()
        return {s.name: {"package": known[s.name].package, "version": known[s.name].version} for s in self.specs}

    def forward(
        self,
        batch: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
        train_dropout: bool = False,
        shard: tuple[int, int] = (0, 1),
        keep: Tensor | None = None,
    ) -> Cond:
        """Encode a batch; with ``train_dropout`` apply each spec's per-sample null dropout (drawn
        for ``world`` times the batch, rows ``rank::world`` kept, with ``shard = (rank, world)``).
        ``keep`` (bool, one per row) replaces those draws: the rows to keep, for every spec with dropout."""
        outs: dict[str, list[CondOutput]] = {k: [] for k in FIELD}
        for spec, c in zip(self.specs, self.items, strict=True):
            out = c(batch)
            if train_dropout and spec.dropout > 0:
                null = c.null(out.value.shape[0], out.value.device)
                out = _drop(out, null, spec.dropout, generator, shard, keep=keep)
            outs[c.kind].append(out)
        return _join(outs)

    def null(self, batch_size: int, like: Cond | None = None, negative: Mapping[str, Any] | None = None) -> Cond:
        """The unconditional branch of guidance: every conditioner's null output (shapes follow
        ``like``), except those whose input key ``negative`` provides (e.g. a negative prompt, or an
        inpainting model's mask, which is an input rather than a condition to guide by)."""
        outs: dict[str, list[CondOutput]] = {k: [] for k in FIELD}
        for c in self.items:
            if negative is not None and c.input_key in negative:
                out = c(negative)
            elif c.kind == "concat" and like is not None and like.concat is not None:
                out = CondOutput(
                    torch.zeros((batch_size, c.out_dim, *like.concat.shape[-2:]), device=like.concat.device)
                )
            else:
                out = c.null(batch_size, c.device)
            outs[c.kind].append(out)
        return _join(outs)


def _drop(
    out: CondOutput,
    null: CondOutput,
    p: float,
    generator: torch.Generator | None,
    shard: tuple[int, int] = (0, 1),
    *,
    keep: Tensor | None = None,
) -> CondOutput:
    b, (rank, world) = out.value.shape[0], shard
    if keep is None:
        keep = (torch.rand(b * world, generator=generator) >= p)[rank::world]
    keep_v = keep.to(out.value.device).view(b, *([1] * (out.value.ndim - 1)))
    nv = null.value.to(out.value.dtype)
    if nv.shape != out.value.shape:
        if nv.ndim == 3:  # sequences of different length: pad the shorter with masked zeros
            return _drop_sequence(out, null, keep)
        nv = torch.zeros_like(out.value)
    mask = out.mask
    if mask is not None and null.mask is not None:
        mask = torch.where(keep.to(mask.device)[:, None], mask, null.mask.to(mask.device))
    return CondOutput(torch.where(keep_v, out.value, nv), mask)


def _drop_sequence(out: CondOutput, null: CondOutput, keep: Tensor) -> CondOutput:
    length = max(out.value.shape[1], null.value.shape[1])
    a, am = _pad(out, length)
    n, nm = _pad(null, length)
    k = keep.to(a.device)
    return CondOutput(torch.where(k[:, None, None], a, n.to(a.dtype)), torch.where(k[:, None], am, nm.to(am.device)))


def _pad(out: CondOutput, length: int) -> tuple[Tensor, Tensor]:
    v = out.value
    b, n, d = v.shape
    mask = out.mask if out.mask is not None else torch.ones(b, n, dtype=torch.bool, device=v.device)
    if n == length:
        return v, mask.bool()
    pad = length - n
    return (
        torch.cat([v, v.new_zeros(b, pad, d)], 1),
        torch.cat([mask.bool(), torch.zeros(b, pad, dtype=torch.bool, device=v.device)], 1),
    )


def _join(outs: dict[str, list[CondOutput]]) -> Cond:
    cond = Cond()
    for kind, items in outs.items():
        if not items:
            continue
        if kind in ("concat", "add"):
            setattr(cond, FIELD[kind], torch.cat([o.value for o in items], dim=1))
            continue
        value = torch.cat([o.value for o in items], dim=1)
        if any(o.mask is not None for o in items):
            mask = torch.cat(
                [
                    o.mask.bool()
                    if o.mask is not None
                    else torch.ones(o.value.shape[:2], dtype=torch.bool, device=o.value.device)
                    for o in items
                ],
                1,
            )
        else:
            mask = None
        setattr(cond, FIELD[kind], value)
        setattr(cond, FIELD[kind] + "_mask", mask)
    return cond


__all__ = ["ConditionerSet", "build_conditioner"]
