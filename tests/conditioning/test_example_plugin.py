"""The example third-party plugin: installed as a real distribution, discovered, contract-checked, trained."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "ldmctl-cond-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-install the plugin into a temporary target folder and put it on sys.path (no network)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(PLUGIN),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    from ldmctl.conditioning import registry

    registry.plugin_manager.cache_clear()
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("ldmctl_cond_example")]:
        del sys.modules[name]
    registry.plugin_manager.cache_clear()


def test_installed_plugin_is_discovered_with_its_package(installed):
    from ldmctl.conditioning.registry import conditioners

    found = conditioners()
    for name in ("colour", "brightness"):
        assert found[name].package == "ldmctl-cond-example" and found[name].version == "0.2.0"
    assert found["brightness"].cls.input_key == "brightness"  # a key no built-in reads


def test_example_plugin_passes_the_contract_kit(installed):
    from ldmctl_cond_example import ColourWords

    from ldmctl.testing import check_conditioner

    captions = ["a red circle", "a blue square above a green triangle", "a yellow square"]
    check_conditioner(
        ColourWords,
        ColourWords.Config(dim=8),
        lambda b, seed: {"caption": [captions[(i + seed) % 3] for i in range(b)]},
        inputs=captions,
    )


def test_example_brightness_passes_the_sample_time_contract(installed):
    from ldmctl_cond_example import Brightness

    from ldmctl.errors import InputError
    from ldmctl.testing import check_conditioner

    c = check_conditioner(
        Brightness,
        Brightness.Config(dim=8),
        lambda b, seed: {"brightness": (torch.arange(b) + seed) / (b + 1)},
        inputs=["0.1", "0.9", "0.5"],
        bad_input="2",
    )
    assert c.default_inputs(3) == [0.0, 0.5, 1.0]
    assert torch.equal(c.collate_inputs([c.parse_input("0.25"), c.parse_input("1")]), torch.tensor([0.25, 1.0]))
    with pytest.raises(InputError, match="not a number"):
        c.parse_input("bright")


def test_train_a_tiny_model_with_the_plugin(installed, tmp_path):
    from ldmctl.autoencoder import build_autoencoder
    from ldmctl.checkpoint import read_checkpoint, save_autoencoder
    from ldmctl.config import PRESETS, ConditionerSpec, DataConfig, ldm_preset
    from ldmctl.diffusion.io import load_ldm
    from ldmctl.train.ldm import train_ldm

    torch.manual_seed(0)
    ae = save_autoencoder(build_autoencoder(PRESETS["tiny"].model), tmp_path / "ae.safetensors")
    cfg = ldm_preset("tiny")
    cfg = replace(
        cfg,
        data=DataConfig(source="builtin:shapes", size=16),
        model=replace(cfg.model, conditioners=(ConditionerSpec("colour", {"dim": 8}),)),
        train=replace(cfg.train, max_steps=3, sample_every=3, save_every=3),
    )
    summary = train_ldm(cfg, ae, tmp_path / "run")
    meta = read_checkpoint(summary["checkpoint"]).config
    assert meta["plugins"]["colour"] == {"package": "ldmctl-cond-example", "version": "0.2.0"}
    assert meta["ldm"]["unet"]["add_dim"] == 8
    model = load_ldm(summary["checkpoint"])
    assert model.cond({"caption": ["a red circle"]}).add.shape == (1, 8)
