"""Fixtures of the LoRA tests: the tiny random Stable Diffusion pipeline of tests/convert (its builder
``tiny_pipeline`` is loaded from tests/convert/conftest.py by path: the test folders are not packages,
and a conftest below the root cannot declare ``pytest_plugins``) and its ldmctl conversion."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ldmctl.convert import convert


def _convert_conftest():
    path = Path(__file__).resolve().parents[1] / "convert" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_lora_tests_convert_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny_pipeline = _convert_conftest().tiny_pipeline


@pytest.fixture(scope="session")
def lora_sd_folder(tmp_path_factory) -> Path:
    """A saved tiny StableDiffusionPipeline (diffusers' own classes, random weights)."""
    folder = tmp_path_factory.mktemp("lora-sd") / "tiny-sd"
    tiny_pipeline(folder)
    return folder


@pytest.fixture(scope="session")
def lora_base(lora_sd_folder, tmp_path_factory) -> Path:
    """That pipeline converted to an ldmctl checkpoint: the base model of the adapters."""
    out = tmp_path_factory.mktemp("lora-base") / "sd.safetensors"
    convert(lora_sd_folder, out)
    return out
