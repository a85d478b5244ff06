"""Test-wide settings: offline, CPU, deterministic, small thread count."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator: tests never draw from global RNG state."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def isolated_torch_hub(tmp_path, monkeypatch):
    """Point the torch hub cache at an empty folder, so no real weights are ever found."""
    hub = tmp_path / "torch_home" / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    yield hub
