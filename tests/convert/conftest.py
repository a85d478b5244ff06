"""A tiny random-weight Stable Diffusion pipeline built with diffusers' and transformers' own classes
and saved with ``save_pretrained``: the oracle of the conversion tests (no weights can be downloaded).
The builder and its small CLIP tokenizer live in bench/random_sd.py (the README's walk-through uses
the same script)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "random_sd", Path(__file__).resolve().parents[2] / "bench" / "random_sd.py"
)
random_sd = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(random_sd)
WORDS, write_clip_tokenizer = random_sd.WORDS, random_sd.write_clip_tokenizer


def tiny_pipeline(folder: Path, prediction: str = "epsilon", linear_projection: bool = False):
    """Build, save and return a tiny StableDiffusionPipeline (UNet f=2 latent 8x8 -> 16x16 images)."""
    return random_sd.build_pipeline(folder, "tiny", prediction, linear_projection)


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory) -> Path:
    """A saved tiny StableDiffusionPipeline folder (eps prediction, 1x1-conv transformer projections)."""
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    tiny_pipeline(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd_v_folder(tmp_path_factory) -> Path:
    """The same with v prediction and linear projections (the SD 2.x choices)."""
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd-v"
    tiny_pipeline(folder, prediction="v_prediction", linear_projection=True)
    return folder
