"""Adding, scaling, merging and removing named adapters on a model; their tensors in the file layout.

Several adapters may sit on a model at once under different names (``sample --lora A --lora B:0.5``):
their deltas add. A name is a module key, so it may not contain ``.``; file stems are made safe by
:func:`adapter_name`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.lora.config import LoRAConfig, check_lora_config
from ldmctl.lora.layer import LoRALinear
from ldmctl.lora.sites import Site, all_sites


def adapter_name(text: str) -> str:
    """A usable adapter name from ``text`` (a file stem): characters other than letters, digits,
    ``-`` and ``_`` become ``_``."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", text) or "adapter"
    return name if not name[0].isdigit() else f"_{name}"


def wrappers(model: nn.Module) -> dict[str, LoRALinear]:
    """Path -> every LoRA layer of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_names(model: nn.Module) -> list[str]:
    """The names of the adapters on ``model``, in the order they were added."""
    return list(dict.fromkeys(a for w in wrappers(model).values() for a in w.lora))


def _check_new_name(model: nn.Module, name: str) -> None:
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise ConfigError(f"adapter name {name!r}: use letters, digits, '-' and '_' (no dots)")
    if name in lora_names(model):
        raise ConfigError(f"an adapter named {name!r} is already on this model", hint="give it another name")


def _check_known(model: nn.Module, name: str) -> None:
    names = lora_names(model)
    if name not in names:
        raise ConfigError(f"no adapter named {name!r} on this model (adapters: {names or 'none'})")


def wrap(model: nn.Module, site: Site) -> LoRALinear:
    """The LoRA layer at ``site.module``, replacing the plain ``nn.Linear`` there on first use."""
    module = model.get_submodule(site.module)
    if isinstance(module, LoRALinear):
        return module
    parent, _, leaf = site.module.rpartition(".")
    layer = LoRALinear(module, site.parts)  # type: ignore[arg-type]
    setattr(model.get_submodule(parent), leaf, layer)
    return layer


def add_lora(model: nn.Module, cfg: LoRAConfig, *, name: str = "default", seed: int = 0) -> list[nn.Parameter]:
    """Put a fresh trainable adapter ``name`` on the attention projections ``cfg`` chooses and return
    its parameters; every other parameter of ``model`` is frozen (requires_grad False), untouched.

    ``down`` is drawn uniform in +-1/sqrt(in) (the default ``kaiming_uniform_(a=sqrt(5))`` of a linear
    layer, as peft does) from a generator seeded by ``seed``, in site order; ``up`` is zero, so the
    model's output is unchanged bit for bit until training moves ``up``."""
    check_lora_config(cfg)
    _check_new_name(model, name)
    chosen = [s for s in all_sites(model) if s.chosen_by(cfg)]
    if not chosen:
        where = "UNet" + (" or text encoder" if cfg.text else "")
        raise ConfigError(f"this model's {where} has no attention projection {list(cfg.targets)} in {list(cfg.layers)}")
    if cfg.text and not any(s.key.startswith("text_encoder.") for s in chosen):
        raise ConfigError("lora text = true needs a clip-text conditioner; this model has none")
    g = torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    for site in chosen:
        layer = wrap(model, site)
        w = layer.weight
        bound = 1 / math.sqrt(layer.in_features)
        down = torch.empty(cfg.rank, layer.in_features).uniform_(-bound, bound, generator=g)
        up = torch.zeros(layer.chunk, cfg.rank)
        adapter = layer.adapter(name, cfg.dropout)
        adapter.set_part(site.part, down.to(w.device, w.dtype), up.to(w.device, w.dtype), cfg.scale, True)
    return lora_parameters(model, name)


def inject(model: nn.Module, name: str, pairs: Mapping[Site, tuple[Tensor, Tensor, float]], multiplier: float) -> None:
    """Put adapter ``name`` on ``model`` from (down, up, scale) per site (checked by the caller); frozen."""
    _check_new_name(model, name)
    for site, (down, up, scale) in pairs.items():
        layer = wrap(model, site)
        w = layer.weight
        d, u = down.to(w.device, w.dtype), up.to(w.device, w.dtype)
        layer.adapter(name, multiplier=multiplier).set_part(site.part, d, u, scale, False)


def lora_parameters(model: nn.Module, name: str = "default") -> list[nn.Parameter]:
    """The (down, up) parameters of adapter ``name``, in a fixed order (layer path, part)."""
    _check_known(model, name)
    params = []
    for layer in wrappers(model).values():
        if name in layer.lora:
            adapter = layer.lora[name]
            for part in layer.parts:
                if part in adapter.down:
                    params += [adapter.down[part], adapter.up[part]]
    return params


def set_lora_scale(model: nn.Module, name: str, scale: float) -> None:
    """Set the multiplier of adapter ``name`` (0 switches it off exactly)."""
    _check_known(model, name)
    if not math.isfinite(scale):
        raise ConfigError(f"LoRA scale {scale!r} must be a finite number")
    for layer in wrappers(model).values():
        if name in layer.lora:
            layer.lora[name].multiplier = float(scale)


def remove_lora(model: nn.Module, names: Iterable[str] | None = None) -> None:
    """Take adapters off (all when ``names`` is None); a layer left without any is a plain nn.Linear again."""
    drop = lora_names(model) if names is None else list(names)
    for n in drop:
        _check_known(model, n)
    for path, layer in wrappers(model).items():
        for n in drop:
            if n in layer.lora:
                del layer.lora[n]
        if not len(layer.lora):
            _replace(model, path, layer.plain())


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into the base weights (W += scale * multiplier * up @ down, in float32) and
    remove the LoRA layers: the model is a plain one again, ready to be saved as a checkpoint."""
    for path, layer in wrappers(model).items():
        delta = layer.delta_weight()
        layer.weight.copy_((layer.weight.float() + delta).to(layer.weight.dtype))
        _replace(model, path, layer.plain())


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


def lora_state_dict(model: nn.Module, name: str = "default") -> dict[str, Tensor]:
    """Adapter ``name`` in the file layout: ``<site key>.lora_A.weight`` (down, (r, in)) and
    ``.lora_B.weight`` (up, (out, r)), the diffusers/peft names (detached, on the CPU)."""
    _check_known(model, name)
    out: dict[str, Tensor] = {}
    for site in all_sites(model):
        layer = model.get_submodule(site.module)
        if isinstance(layer, LoRALinear) and name in layer.lora and site.part in layer.lora[name].down:
            adapter = layer.lora[name]
            out[f"{site.key}.lora_A.weight"] = adapter.down[site.part].detach().cpu().contiguous()
            out[f"{site.key}.lora_B.weight"] = adapter.up[site.part].detach().cpu().contiguous()
    return out


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: Mapping[str, Tensor], name: str = "default") -> None:
    """Copy tensors of :func:`lora_state_dict`'s layout into the existing adapter ``name`` (same
    parameters, so an optimizer keeps them: resuming training); every key must match, strictly."""
    own = lora_state_dict(model, name)
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong = [k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"adapter {name!r} does not match the given tensors: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, mis-shaped {wrong[:3]}"
        )
    for site in all_sites(model):
        layer = model.get_submodule(site.module)
        if isinstance(layer, LoRALinear) and name in layer.lora and site.part in layer.lora[name].down:
            layer.lora[name].down[site.part].copy_(state[f"{site.key}.lora_A.weight"])
            layer.lora[name].up[site.part].copy_(state[f"{site.key}.lora_B.weight"])


def adapter_scales(model: nn.Module, name: str) -> dict[str, float]:
    """Site key -> the scale (alpha / rank) of adapter ``name`` there."""
    out = {}
    for site in all_sites(model):
        layer = model.get_submodule(site.module)
        if isinstance(layer, LoRALinear) and name in layer.lora and site.part in layer.lora[name].scales:
            out[site.key] = layer.lora[name].scales[site.part]
    return out


def describe(model: Any) -> dict[str, Any]:
    """Per adapter: its multiplier and the number of parameters (for logs and reports)."""
    out: dict[str, Any] = {}
    for name in lora_names(model):
        params = lora_parameters(model, name)
        mult = next(w.lora[name].multiplier for w in wrappers(model).values() if name in w.lora)
        out[name] = {"multiplier": mult, "parameters": sum(p.numel() for p in params)}
    return out


__all__ = [
    "add_lora",
    "adapter_name",
    "adapter_scales",
    "describe",
    "inject",
    "load_lora_state_dict",
    "lora_names",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "remove_lora",
    "set_lora_scale",
    "wrap",
]
