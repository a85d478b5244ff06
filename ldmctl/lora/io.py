"""The adapter file: ``lora.safetensors`` in the diffusers/peft key layout, with two sets of metadata.

Tensors: ``unet.<diffusers module>.lora_A.weight`` (down, (r, in)) and ``.lora_B.weight`` (up, (out, r)),
``text_encoder.text_model.encoder.layers.N.self_attn.q_proj.lora_A.weight`` for text adapters.

Metadata (all strings, as safetensors requires):

- ``ldmctl.kind`` = ``lora``, ``ldmctl.schema``, ``ldmctl.version``, ``ldmctl.lora_format`` (this layout's
  version), ``ldmctl.config`` (JSON of the :class:`~ldmctl.lora.config.LoRAConfig`: rank, alpha, targets,
  layers, ...), ``ldmctl.base`` (JSON ``{"name", "sha256"}`` of the base checkpoint), ``ldmctl.extra``;
- ``lora_adapter_metadata``: the peft ``LoraConfig`` fields diffusers reads per component (``unet.r``,
  ``unet.lora_alpha``, ``unet.use_rslora``, ``unet.target_modules``, the same with ``text_encoder.``),
  so that ``StableDiffusionPipeline.load_lora_weights(file)`` applies alpha / r exactly as ldmctl does
  (without it diffusers takes alpha = r). ``format`` = ``pt``, as diffusers writes it.

The weights are stored unscaled (``lora_B`` as trained); the scale comes from the metadata, once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ldmctl import __version__
from ldmctl.checkpoint import SCHEMA
from ldmctl.config import from_dict, to_dict
from ldmctl.convert.common import PICKLE_SUFFIXES, read_weights
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.files import atomic_write, file_sha256
from ldmctl.lora.adapters import adapter_name, adapter_scales, inject, lora_names, lora_state_dict
from ldmctl.lora.config import LoRAConfig, check_lora_config, lora_scale
from ldmctl.lora.formats import Entry, listing, parse, peft_alphas
from ldmctl.lora.sites import Site, all_sites

LORA_FORMAT = "1"
_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, so several adapters hash once


def base_hash(path: str | Path) -> str:
    """SHA-256 of a base checkpoint (remembered while the file is unchanged)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"base checkpoint {str(p)!r} does not exist")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(p)
    return _HASHES[key]


def _peft_metadata(state: Mapping[str, Tensor], cfg: LoRAConfig) -> dict[str, Any]:
    """The LoraConfig fields diffusers reads, per component (``unet.r``, ``text_encoder.lora_alpha``, ...)."""
    out: dict[str, Any] = {}
    for root in ("unet", "text_encoder"):
        down = [k for k in state if k.startswith(f"{root}.") and k.endswith(".lora_A.weight")]
        # text: "encoder.layers.N...", which peft matches with and without CLIP's text_model level (transformers 5)
        modules = sorted(
            k.removeprefix(f"{root}.").removeprefix("text_model.").removesuffix(".lora_A.weight") for k in down
        )
        if modules:
            fields = {"r": cfg.rank, "lora_alpha": cfg.alpha, "use_rslora": cfg.rank_stabilised}
            fields |= {"lora_dropout": cfg.dropout, "target_modules": modules, "init_lora_weights": True}
            out |= {f"{root}.{k}": v for k, v in fields.items()}
    return out


def _check_saved_scales(model: nn.Module, cfg: LoRAConfig, name: str) -> None:
    scales = adapter_scales(model, name)
    wrong = sorted(k for k, s in scales.items() if abs(s - cfg.scale) > 1e-12 * max(1.0, abs(cfg.scale)))
    if wrong:
        raise ConfigError(f"adapter {name!r} was not made with this config's alpha / rank (e.g. at {wrong[0]})")


def save_lora(
    path: str | Path,
    model: nn.Module,
    cfg: LoRAConfig,
    *,
    name: str = "default",
    base: str | Path | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write adapter ``name`` of ``model`` to ``path`` atomically; ``base``: the checkpoint it adapts
    (its file name and SHA-256 go in the metadata, so another base is refused when loading)."""
    check_lora_config(cfg)
    state = lora_state_dict(model, name)
    ranks = {int(v.shape[0]) for k, v in state.items() if k.endswith(".lora_A.weight")}
    if ranks != {cfg.rank}:
        raise ConfigError(f"adapter {name!r} has rank {sorted(ranks)}, its config says {cfg.rank}")
    _check_saved_scales(model, cfg, name)
    meta = {
        "format": "pt",
        "ldmctl.kind": "lora",
        "ldmctl.schema": SCHEMA,
        "ldmctl.version": __version__,
        "ldmctl.lora_format": LORA_FORMAT,
        "ldmctl.config": json.dumps(to_dict(cfg), sort_keys=True),
        "ldmctl.extra": json.dumps(extra or {}, sort_keys=True),
        "lora_adapter_metadata": json.dumps(_peft_metadata(state, cfg), sort_keys=True),
    }
    if base is not None:
        meta["ldmctl.base"] = json.dumps({"name": Path(base).name, "sha256": base_hash(base)})
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def read_lora_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every tensor and the metadata of an adapter file (.safetensors, or a plain-tensor pickle)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"LoRA file {str(p)!r} does not exist")
    if p.suffix in PICKLE_SUFFIXES:
        return dict(read_weights(p)), {}
    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{str(p)!r} is not a readable LoRA .safetensors file ({err})",
            hint="the file may be truncated or corrupt; write or download it again",
        ) from None


def lora_info(meta: Mapping[str, str], where: str) -> tuple[LoRAConfig | None, dict[str, Any]]:
    """(LoRAConfig, base {"name", "sha256"}) from an ldmctl adapter's metadata; (None, {}) for others."""
    kind = meta.get("ldmctl.kind")
    if kind is None:
        return None, {}
    if kind != "lora":
        raise CheckpointError(f"{where} is an ldmctl {kind} checkpoint, not a LoRA adapter")
    if meta.get("ldmctl.lora_format") != LORA_FORMAT:
        raise CheckpointError(
            f"{where} has LoRA format {meta.get('ldmctl.lora_format')!r}; this ldmctl reads {LORA_FORMAT!r}",
            hint="upgrade ldmctl",
        )
    try:
        cfg = from_dict(LoRAConfig, json.loads(meta.get("ldmctl.config", "{}")))
        base = json.loads(meta.get("ldmctl.base", "{}"))
    except (json.JSONDecodeError, ConfigError) as err:
        raise CheckpointError(f"{where} has corrupt LoRA metadata: {err}") from None
    return cfg, base if isinstance(base, dict) else {}


def check_base(info: Mapping[str, Any], base: str | Path | None, where: str) -> None:
    """CheckpointError when the adapter names a base checkpoint and ``base`` is another file."""
    want = info.get("sha256")
    if not want or base is None:
        return
    have = base_hash(base)
    if have != want:
        raise CheckpointError(
            f"{where} was trained for another base model: {info.get('name', '?')} (sha256 {want[:12]}...), "
            f"not {Path(base).name} (sha256 {have[:12]}...)",
            hint="load it with the checkpoint it was trained on",
        )


def _match(layout: str, entries: Mapping[str, Entry], sites: list[Site], where: str) -> dict[str, tuple[Site, Entry]]:
    """File module name -> (site, entry); CheckpointError naming unknown and mis-shaped modules."""
    index = {(s.kohya if layout == "kohya" else s.key): s for s in sites}
    unknown = sorted(n for n in entries if n not in index)
    if unknown:
        raise CheckpointError(
            f"{where}: {len(unknown)} adapted layers are no linear layer of this model: {listing(unknown)}",
            hint="the adapter was made for another architecture (e.g. SDXL, or a model with other block sizes)",
        )
    return {n: (index[n], e) for n, e in entries.items()}


def _shaped(model: nn.Module, matched: Mapping[str, tuple[Site, Entry]], where: str) -> dict[Site, tuple]:
    """Site -> (down (r, in), up (out_part, r)), reshaping 1x1 convolutions; refuses shapes that do not fit."""
    out, wrong = {}, []
    for name, (site, e) in matched.items():
        lin = model.get_submodule(site.module)
        want_in, want_out = lin.in_features, lin.out_features // len(site.parts)
        down, up = e.down, e.up
        assert down is not None and up is not None
        if down.ndim == 4 and down.shape[2:] == (1, 1) and up.ndim == 4 and up.shape[2:] == (1, 1):
            down, up = down.flatten(1), up.flatten(1)  # a 1x1 convolution is this linear map
        r = down.shape[0]
        if tuple(down.shape) != (r, want_in) or tuple(up.shape) != (want_out, r):
            shapes = f"down {tuple(e.down.shape)}, up {tuple(e.up.shape)}"
            wrong.append(f"{name}: {shapes} (this model: ({r}, {want_in}) and ({want_out}, {r}))")
        out[site] = (down, up)
    if wrong:
        raise CheckpointError(
            f"{where}: adapter shapes do not fit this model: {listing(wrong, 3)}",
            hint="the adapter was made for another base architecture",
        )
    return out


def _scales(
    layout: str, cfg: LoRAConfig | None, entries: Mapping[str, Entry], meta: Mapping[str, str], where: str
) -> dict[str, float]:
    """File module name -> the scale alpha / r of its adapter."""
    if cfg is not None:
        return {n: lora_scale(cfg.alpha, e.rank, cfg.rank_stabilised) for n, e in entries.items()}
    if layout == "kohya":
        return {n: (e.alpha if e.alpha is not None else e.rank) / e.rank for n, e in entries.items()}
    alphas = peft_alphas(meta, entries, where)
    return {n: lora_scale(alphas[n][0], e.rank, alphas[n][1]) for n, e in entries.items()}


def load_lora(
    model: nn.Module, path: str | Path, *, scale: float = 1.0, name: str | None = None, base: str | Path | None = None
) -> str:
    """Put the adapter of ``path`` on ``model`` as ``name`` (default: the file stem) with multiplier
    ``scale`` and return its name; it adds to any adapters already there.

    Reads ldmctl, diffusers/peft (current and pre-0.21) and kohya files (:mod:`ldmctl.lora.formats`).
    When the file names its base checkpoint's hash and ``base`` is given, another base is refused;
    every file's shapes are checked against the model."""
    where = repr(str(path))
    if not math.isfinite(scale):
        raise ConfigError(f"LoRA scale {scale!r} for {where} must be a finite number")
    name = adapter_name(Path(path).stem) if name is None else name
    if name in lora_names(model):
        raise ConfigError(f"an adapter named {name!r} is already on this model", hint="give it another name")
    tensors, meta = read_lora_file(path)
    cfg, base_info = lora_info(meta, where)
    check_base(base_info, base, where)
    layout, entries = parse(tensors, where)
    matched = _match(layout, entries, all_sites(model), where)
    shaped = _shaped(model, matched, where)
    scales = _scales(layout, cfg, entries, meta, where)
    pairs = {site: (*shaped[site], scales[n]) for n, (site, _) in matched.items()}
    inject(model, name, pairs, scale)
    return name


__all__ = ["LORA_FORMAT", "base_hash", "check_base", "load_lora", "lora_info", "read_lora_file", "save_lora"]
