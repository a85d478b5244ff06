"""Models that ship inside the package (fp16 safetensors written by ``ldmctl export``).

Each has a name, the file, what it does and the documented command that trained it, so
``ldmctl sample --prompt ...`` and ``ldmctl superres photo.png`` work right after install.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ldmctl.errors import CheckpointError

MODELS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ShippedModel:
    name: str
    file: str
    about: str
    recipe: str  # the document that gives the command that trained it

    @property
    def path(self) -> Path:
        return MODELS_DIR / self.file


SHIPPED: dict[str, ShippedModel] = {
    "shapes": ShippedModel(
        "shapes",
        "shapes-t2i.safetensors",
        "text-to-image on builtin:shapes, 32 x 32 px (cross-attention, jointly trained text encoder, v-prediction)",
        "docs/conditioning-comparison.md",
    ),
    "shapes-layout": ShippedModel(
        "shapes-layout",
        "shapes-t2i-layout.safetensors",
        "high-noise expert of the shapes model: places the named objects by the relation word "
        "(trained with the hard-negative caption contrast; ldmctl sample --expert)",
        "docs/conditioning-comparison.md",
    ),
    "superres": ShippedModel(
        "superres", "superres-x4.safetensors", "x4 super-resolution of photos", "docs/superres.md"
    ),
    "photo-f4": ShippedModel(
        "photo-f4",
        "photo-f4.safetensors",
        "KL autoencoder for photos, f = 4, 4 latent channels (a first stage for train-ldm --ae builtin:photo-f4)",
        "docs/autoencoder.md",
    ),
}


def shipped_model(name: str) -> Path:
    """Path of the shipped model ``name``; a CheckpointError if this install lacks it."""
    model = SHIPPED[name]
    if not model.path.is_file():
        raise CheckpointError(
            f"the built-in {name} model ({model.file}) is missing from this install",
            hint=f"reinstall ldmctl, or train one as {model.recipe} shows and pass its checkpoint",
        )
    return model.path


def resolve_builtin(value):
    """``builtin:NAME`` (a checkpoint given on the command line) -> the shipped model's file; any
    other value unchanged. A CheckpointError names the built-in models for an unknown NAME."""
    if value is None or not str(value).startswith("builtin:"):
        return value
    name = str(value).removeprefix("builtin:")
    if name not in SHIPPED:
        raise CheckpointError(
            f"there is no built-in model {name!r}",
            hint=f"built-in models: {', '.join('builtin:' + n for n in SHIPPED)}",
        )
    return shipped_model(name)


__all__ = ["MODELS_DIR", "SHIPPED", "ShippedModel", "resolve_builtin", "shipped_model"]
