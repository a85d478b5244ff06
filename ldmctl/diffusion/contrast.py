"""Hard-negative caption contrast: a training loss that makes a text-conditional model read words
the denoising loss alone leaves unused (issue 23: the relation word of ``builtin:shapes``).

For every caption of a batch, a *negative* is made by exchanging the words of ``contrast.swaps``
("left:right" turns "a red circle to the left of a blue square" into "... to the right of ...").
The rows whose caption changed run a second time under the negative, with the same latent,
timestep and noise, in the same UNet batch. Beside the usual loss (true captions only) the step
pays::

    weight * mean over those rows of relu(margin - (err(negative) - err(caption)))

with ``err`` the model's own per-sample error (L2, or L1 with ``model.diffusion.loss = "l1"``)
without min-SNR or VLB weights, which would hide the high-noise steps where a layout is decided. The negative caption correctly
describes other training images (the mirrored layout), so a model can only lower this term by
telling the two captions apart from the image — by reading the word. Rows whose caption was
dropped for classifier-free guidance do not count: both copies share the row's dropout draw (one
draw per row for all conditioners, from the stream a step without contrast uses, so the denoising
term of a one-conditioner model is exactly that step's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from ldmctl.conditioning.base import Cond
from ldmctl.config import ContrastConfig
from ldmctl.errors import ConfigError


def swap_table(swaps: tuple[str, ...]) -> dict[str, str]:
    """``("left:right", ...)`` as a symmetric word map; a ConfigError for a malformed pair."""
    table: dict[str, str] = {}
    for pair in swaps:
        a, sep, b = pair.partition(":")
        if not sep or not a or not b or ":" in b:
            raise ConfigError(f"contrast.swaps entry {pair!r}: write a pair of words as 'word:other'")
        table[a], table[b] = b, a
    return table


def swap_words(text: str, table: Mapping[str, str]) -> str:
    """``text`` with every whole word found in ``table`` replaced by its partner (case kept as given)."""
    return re.sub(r"\w+", lambda m: table.get(m.group(0), m.group(0)), text)


def check_contrast(cfg: ContrastConfig, input_keys: set[str], grad_accum: int) -> None:
    """Refuse a contrast the run cannot apply (ConfigError)."""
    if cfg.weight <= 0:
        return
    swap_table(cfg.swaps)
    if not cfg.swaps:
        raise ConfigError('contrast.weight > 0 needs contrast.swaps, e.g. ["left:right", "above:below"]')
    if cfg.key not in input_keys:
        raise ConfigError(
            f"contrast.key {cfg.key!r} is not read by any conditioner of this model",
            hint=f"the conditioners read {sorted(input_keys)}",
        )
    if grad_accum != 1:
        raise ConfigError("contrast.weight > 0 works with train.grad_accum = 1 only")


def contrast_step(
    model: Any,
    batch: Mapping[str, Any],
    cfg: ContrastConfig,
    *,
    generator: torch.Generator | None,
    net: Callable[[Tensor, Tensor, Cond], Tensor] | None,
    shard: tuple[int, int],
    backward: Callable[[Tensor], None] | None,
    amp: Callable[[], AbstractContextManager],
    micro_batches: int = 1,
) -> tuple[Tensor, dict[str, float]]:
    """One training step's loss with the contrast for ``model`` (a LatentDiffusion; see the module
    docstring); calls ``backward`` once and returns the detached loss and its logs (``contrast``,
    ``gap``: the mean error difference over the counted rows)."""
    if backward is None or micro_batches != 1:
        raise ValueError("training_loss: contrast needs backward and micro_batches = 1")
    batch = model.derived_inputs(batch)
    captions, table = list(batch[cfg.key]), swap_table(cfg.swaps)
    negatives = [swap_words(c, table) for c in captions]
    rows = [i for i, (c, n) in enumerate(zip(captions, negatives, strict=True)) if c != n]
    b, idx = len(captions), torch.tensor(rows, dtype=torch.long)
    both = {k: _extend(v, idx) for k, v in batch.items()}
    both[cfg.key] = captions + [negatives[i] for i in rows]
    keep = _dropout_keep(model, b, generator, shard)
    keep_both = torch.cat([keep, keep[idx]])
    with amp():
        cond = model.cond(both, train_dropout=True, shard=shard, keep=keep_both) or Cond()
    z0 = model.to_target(batch["z0"], batch)
    t, noise = model.objective.draw(z0, generator, shard=shard)
    z_all, t_all, n_all = (torch.cat([x, x[idx.to(x.device)]]) for x in (z0, t, noise))
    obj, unet = model.objective, net if net is not None else model.unet
    with amp():
        out = unet(obj.schedule.q_sample(z_all, t_all, n_all), t_all, cond)
    err = obj.per_sample_error(out, z_all, n_all, t_all)
    loss, logs = obj.reduce(err[:b], t)
    gap = err[b:] - err[idx.to(err.device)]
    counted = keep[idx].to(err.device).float()
    n = counted.sum().clamp(min=1)
    contrast = (torch.relu(cfg.margin - gap) * counted).sum() / n
    total = loss + cfg.weight * contrast
    backward(total)
    logs |= {
        "loss": float(total.detach()),
        "contrast": float(contrast.detach()),
        "gap": float((gap.detach() * counted).sum() / n),
    }
    return total.detach(), logs


def _extend(value: Any, idx: Tensor) -> Any:
    """A batch entry with the rows ``idx`` appended (tensors and lists; anything else as it is)."""
    if isinstance(value, Tensor):
        return torch.cat([value, value[idx.to(value.device)]])
    if isinstance(value, list):
        return value + [value[i] for i in idx.tolist()]
    return value


def _dropout_keep(model: Any, b: int, generator: torch.Generator | None, shard: tuple[int, int]) -> Tensor:
    """The rows whose condition survives classifier-free-guidance dropout, one draw per row as the
    conditioners would make it (the largest dropout of the model's specs)."""
    p = max((s.dropout for s in model.conditioners.specs), default=0.0)
    rank, world = shard
    return (torch.rand(b * world, generator=generator) >= p)[rank::world]


__all__ = ["check_contrast", "contrast_step", "swap_table", "swap_words"]
