from __future__ import annotations

import json

import pytest

from ldmctl.config import (PRESETS, AETrainingConfig, AutoencoderConfig, channel_mult_for_f,
                           from_dict, load_file, merge, parse_set, preset, to_dict, validate_ae)
from ldmctl.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = PRESETS[name]
    again = from_dict(AETrainingConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    validate_ae(cfg)


def test_from_dict_is_strict():
    with pytest.raises(ConfigError, match=r"unknown keys \['head'\]"):
        from_dict(AutoencoderConfig, {"head": 4})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(AutoencoderConfig, {"kind": "gan"})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(AutoencoderConfig, {"z_channels": "four"})


def test_set_overrides_nested_values():
    cfg = merge(preset("tiny"), parse_set(["model.z_channels=8", "loss.perceptual=none",
                                           "model.channel_mult=[1,2,2,4]", "train.lr=0.5"]))
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
        validate_ae(merge(preset("tiny"), {"model": {"norm_groups": 3}}))
    with pytest.raises(ConfigError, match="multiple of f"):
        validate_ae(merge(preset("tiny"), {"data": {"size": 18}}))
    with pytest.raises(ConfigError, match="max_steps"):
        validate_ae(merge(preset("tiny"), {"train": {"max_steps": 0}}))
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
