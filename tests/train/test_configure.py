"""The one configuration pass: preset -> file -> flags -> --set -> resolve, conditioners built once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import read_checkpoint, save_autoencoder
from ldmctl.conditioning.registry import get_conditioner
from ldmctl.config import PRESETS, ConditionerSpec, DataConfig, ldm_preset
from ldmctl.data import open_dataset
from ldmctl.errors import ConfigError
from ldmctl.train.configure import ae_config, ldm_config, resolve_ae, resolve_ldm
from ldmctl.train.ldm import train_ldm

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"


@pytest.fixture(scope="module")
def ae(tmp_path_factory):
    torch.manual_seed(0)
    model = build_autoencoder(PRESETS["tiny"].model).eval()
    model.scale_factor.fill_(0.8)
    path = save_autoencoder(model, tmp_path_factory.mktemp("ae") / "ae.safetensors")
    return model, path


def _class_cfg(**train):
    cfg = ldm_preset("tiny")
    return replace(
        cfg,
        data=DataConfig(source="builtin:synthetic", size=16),
        model=replace(cfg.model, conditioners=(ConditionerSpec("class", {}),)),
        train=replace(cfg.train, **{"sample_every": 1000, "save_every": 1000, **train}),
    )


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nlr = 0.5\nbatch_size = 3\nseed = 7\n")
    cfg = ldm_config("tiny", f, {"train": {"batch_size": 2, "max_steps": None}}, ["train.seed=9"])
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.seed) == (0.5, 2, 9)
    assert cfg.train.max_steps == ldm_preset("tiny").train.max_steps  # a flag left out changes nothing
    assert ae_config("tiny", None, {"model": {"kind": "vq"}}, []).model.kind == "vq"


def test_text_encoder_flag_reaches_every_text_conditioner():
    cfg = ldm_config(
        "tiny",
        None,
        {"model": {"conditioners": [{"name": "text-crossattn"}, {"name": "class"}]}},
        [],
        text_encoder="bert",
    )
    assert cfg.model.conditioners[0].options == {"encoder": "bert"} and cfg.model.conditioners[1].options == {}
    with pytest.raises(ConfigError, match="needs a text conditioner"):
        ldm_config("tiny", None, {}, [], text_encoder="bert")


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_documented_recipes_go_through_the_pass(recipe):
    """`ldmctl train-ae --config docs/recipes/ae-*.toml` (and train-ldm's) still parse and validate."""
    if recipe.name.startswith("ae-"):
        cfg = resolve_ae(ae_config("small", recipe, {}, []))
        assert cfg.data.size % cfg.model.downsample_factor == 0
    else:
        cfg = ldm_config("small", recipe, {}, [])
        for spec in cfg.model.conditioners:
            get_conditioner(spec.name)  # every conditioner named is registered


def test_resolve_derives_widths_and_returns_the_conditioners(ae):
    model, _ = ae
    cfg = _class_cfg()
    dataset = open_dataset(cfg.data, seed=0)
    resolved, conds = resolve_ldm(cfg, model, dataset)
    u = resolved.model.unet
    assert (u.in_channels, resolved.model.latent_size, resolved.model.scale_factor) == (4, 4, pytest.approx(0.8))
    assert {k: getattr(u, k) for k in conds.unet_widths()} == conds.unet_widths() and u.add_dim > 0
    assert resolved.model.conditioners[0].options["num_classes"] == len(dataset.class_names)
    assert conds.specs == resolved.model.conditioners
    again, conds2 = resolve_ldm(cfg, model, dataset)  # seeded by train.seed: every rank builds the same
    assert again == resolved
    for a, b in zip(conds.state_dict().values(), conds2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_conditioners_are_built_once_per_run(ae, tmp_path, monkeypatch):
    """One train-ldm run constructs each conditioner exactly once: the trainer's model uses the set
    that resolve_ldm built to derive the UNet widths."""
    cls = get_conditioner("class").cls
    built: list[object] = []
    original = cls.__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", counting_init)
    summary = train_ldm(_class_cfg(max_steps=2), ae[1], tmp_path / "run")
    assert len(built) == 1
    assert any(k.startswith("cond.") for k in read_checkpoint(summary["checkpoint"]).tensors)


def test_trainer_options_are_checked_before_anything_is_built(ae, tmp_path):
    with pytest.raises(ConfigError, match="train.max_steps must be positive"):
        resolve_ldm(_class_cfg(max_steps=0), ae[0], None)
    with pytest.raises(ConfigError, match="train.lr must be a positive number"):
        resolve_ae(replace(PRESETS["tiny"], train=replace(PRESETS["tiny"].train, lr=float("nan"))))
