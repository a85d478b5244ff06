"""``ldmctl lora merge``: a plain LDM checkpoint with adapters folded into its weights, and the
``FILE[:SCALE]`` spelling of an adapter on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldmctl.diffusion.io import load_ldm, write_ldm
from ldmctl.errors import ConfigError
from ldmctl.files import file_sha256
from ldmctl.lora.adapters import merge_lora
from ldmctl.lora.io import load_lora


def parse_lora(text: str) -> tuple[Path, float]:
    """``"style.safetensors:0.7"`` -> (path, 0.7); without ``:SCALE`` the scale is 1."""
    path, sep, scale = text.rpartition(":")
    if sep and path:
        try:
            return Path(path), float(scale)
        except ValueError:
            pass  # a ':' inside the path itself
    return Path(text), 1.0


def apply_loras(model: Any, specs: list[str], base: str | Path) -> list[str]:
    """Load every ``FILE[:SCALE]`` adapter onto ``model`` (checked against ``base``); their names."""
    names = []
    for spec in specs:
        path, scale = parse_lora(spec)
        names.append(load_lora(model, path, scale=scale, base=base))
    return names


def merge_checkpoint(ckpt: str | Path, specs: list[str], out: str | Path) -> dict[str, Any]:
    """Write ``ckpt`` with the adapters of ``specs`` merged in (W += scale x up @ down) to ``out``."""
    if not specs:
        raise ConfigError("lora merge needs at least one LORA[:SCALE]")
    model = load_ldm(ckpt, weights="ema")
    names = apply_loras(model, specs, ckpt)
    merge_lora(model)
    extra = {"merged_from": {"base": Path(ckpt).name, "sha256": file_sha256(ckpt), "loras": list(specs)}, "step": 0}
    parts = {
        "ema": model.unet.state_dict(),
        "ae": model.autoencoder.state_dict(),
        "cond": model.conditioners.state_dict(),
    }
    write_ldm(
        out,
        parts,
        config=model.config,
        autoencoder=model.autoencoder.config,
        conditioners=model.conditioners,
        extra=extra,
    )
    return {"adapters": names}


__all__ = ["apply_loras", "merge_checkpoint", "parse_lora"]
