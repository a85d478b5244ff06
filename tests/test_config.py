from __future__ import annotations

import json

import pytest

from ldmctl.config import (
    LDM_PRESETS,
    PRESETS,
    AETrainConfig,
    AETrainingConfig,
    AutoencoderConfig,
    LDMTrainConfig,
    LDMTrainingConfig,
    channel_mult_for_f,
    from_dict,
    ldm_preset,
    load_file,
    merge,
    parse_set,
    preset,
    to_dict,
)
from ldmctl.errors import ConfigError
from ldmctl.train.configure import resolve_ae


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = PRESETS[name]
    again = from_dict(AETrainingConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    resolve_ae(cfg)


def test_from_dict_is_strict():
    with pytest.raises(ConfigError, match=r"unknown keys \['head'\]"):
        from_dict(AutoencoderConfig, {"head": 4})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(AutoencoderConfig, {"kind": "gan"})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(AutoencoderConfig, {"z_channels": "four"})


def test_set_overrides_nested_values():
    cfg = merge(
        preset("tiny"),
        parse_set(["model.z_channels=8", "loss.perceptual=none", "model.channel_mult=[1,2,2,4]", "train.lr=0.5"]),
    )
    assert cfg.model.z_channels == 8 and cfg.loss.perceptual == "none"
    assert cfg.model.channel_mult == (1, 2, 2, 4) and cfg.model.downsample_factor == 8
    assert cfg.train.lr == 0.5
    with pytest.raises(ConfigError, match="unknown key"):
        merge(cfg, parse_set(["model.heads=2"]))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["model.z_channels"])


def test_config_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[model]\nz_channels = 3\n[train]\nbatch_size = 2\n")
    cfg = merge(preset("tiny"), load_file(p))
    assert cfg.model.z_channels == 3 and cfg.train.batch_size == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid"):
        load_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_file(tmp_path / "missing.json")


@pytest.mark.parametrize("f,levels", [(4, 3), (8, 4), (16, 5)])
def test_channel_mult_for_f(f, levels):
    mult = channel_mult_for_f(f, "small")
    assert len(mult) == levels
    assert AutoencoderConfig(channel_mult=mult).downsample_factor == f
    with pytest.raises(ConfigError, match="choose one of"):
        channel_mult_for_f(2)


def test_validation_names_the_field():
    with pytest.raises(ConfigError, match="norm_groups"):
        resolve_ae(merge(preset("tiny"), {"model": {"norm_groups": 3}}))
    with pytest.raises(ConfigError, match="multiple of f"):
        resolve_ae(merge(preset("tiny"), {"data": {"size": 18}}))
    with pytest.raises(ConfigError, match="max_steps"):
        resolve_ae(merge(preset("tiny"), {"train": {"max_steps": 0}}))
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")


@pytest.mark.parametrize("name", sorted(LDM_PRESETS))
def test_ldm_presets_round_trip_through_json(name):
    cfg = LDM_PRESETS[name]
    assert from_dict(LDMTrainingConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_each_trainer_has_its_own_train_section():
    """train-ae carries no train-ldm option and the other way round: nothing is refused at run time."""
    ae, ldm = {f for f in to_dict(AETrainConfig())}, {f for f in to_dict(LDMTrainConfig())}
    assert {"optimizer", "scale_samples"} <= ae - ldm
    assert {"grad_accum", "compile"} <= ldm - ae
    assert {"batch_size", "lr", "precision", "seed", "device"} <= ae & ldm
    assert isinstance(preset("tiny").train, AETrainConfig) and isinstance(ldm_preset("tiny").train, LDMTrainConfig)
    with pytest.raises(ConfigError, match="not one of"):  # fp16 (a gradient scaler) is train-ldm's
        merge(preset("tiny"), {"train": {"precision": "fp16"}})
    assert merge(ldm_preset("tiny"), {"train": {"precision": "fp16"}}).train.precision == "fp16"
    with pytest.raises(ConfigError, match="unknown key"):
        merge(ldm_preset("tiny"), {"train": {"optimiser": "adam"}})


def test_old_shared_train_sections_still_load():
    """config.json and checkpoints' train_config written with the one shared TrainConfig: the other
    trainer's keys at the values this trainer ran with are dropped, anything else is refused."""
    shared = {"grad_accum": 1, "compile": False, "optimizer": "adam", "scale_samples": 64, "precision": "fp32"}
    ae = from_dict(AETrainingConfig, {"train": {**shared, "optimizer": "muon"}})
    assert ae.train.optimizer == "muon" and ae.train.scale_samples == 64
    ldm = from_dict(LDMTrainingConfig, {"train": {**shared, "grad_accum": 2, "scale_samples": 8}})
    assert ldm.train.grad_accum == 2 and not hasattr(ldm.train, "scale_samples")
    with pytest.raises(ConfigError, match="train-ldm option"):
        from_dict(AETrainingConfig, {"train": {**shared, "grad_accum": 2}})
    with pytest.raises(ConfigError, match="train-ldm option"):
        merge(preset("tiny"), parse_set(["train.compile=true"]))
    with pytest.raises(ConfigError, match="train-ae only"):
        merge(ldm_preset("tiny"), {"train": {"optimizer": "muon"}})
    assert merge(preset("tiny"), {"train": {"grad_accum": 1}}) == preset("tiny")


@pytest.mark.parametrize("name", ["ae", "uncond", "class", "crossattn", "sr", "sr-residual"])
def test_train_config_of_pre_split_checkpoints_loads(name):
    """The train_config that checkpoints written before the split carry (the same JSON as their run's
    config.json, which --resume reads) still builds the trainer's config."""
    from pathlib import Path

    from ldmctl.checkpoint import read_checkpoint

    path = Path(__file__).parent / "fixtures" / "pre-refactor" / f"{name}.safetensors"
    stored = read_checkpoint(path).extra["train_config"]
    assert {"grad_accum", "optimizer"} <= set(stored["train"])  # written with the one shared section
    cfg = from_dict(AETrainingConfig if name == "ae" else LDMTrainingConfig, stored)
    assert cfg.train.max_steps == stored["train"]["max_steps"] and cfg.data.size == stored["data"]["size"]
    assert to_dict(cfg)["train"].keys() < stored["train"].keys()
