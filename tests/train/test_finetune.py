"""train-ldm --init: fine-tuning a trained model on new data; train_only / freeze_conditioners; --ae from an LDM."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import read_checkpoint, save_autoencoder
from ldmctl.config import PRESETS, ConditionerSpec, DataConfig, ldm_preset
from ldmctl.diffusion.io import load_ldm, split_tensors
from ldmctl.errors import ConfigError
from ldmctl.train.finetune import first_stage
from ldmctl.train.ldm import train_ldm
from ldmctl.train.loop import Callbacks


def tiny_cfg(**fields):
    cfg = ldm_preset("tiny")
    train = replace(cfg.train, sample_every=1000, save_every=1000, warmup_steps=0, lr=1e-3, max_steps=2)
    return replace(cfg, **{"data": DataConfig(source="builtin:synthetic", size=16), "train": train, **fields})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny text-conditional LDM (jointly trained bert encoder), trained 3 steps."""
    root = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    ae = build_autoencoder(PRESETS["tiny"].model).eval()
    ae.scale_factor.fill_(0.8)
    ae_path = save_autoencoder(ae, root / "ae.safetensors")
    spec = ConditionerSpec("text-crossattn", {"width": 16, "depth": 1, "heads": 2})
    cfg = tiny_cfg()
    cfg = replace(cfg, model=replace(cfg.model, conditioners=(spec,)), train=replace(cfg.train, max_steps=3))
    return train_ldm(cfg, ae_path, root / "run")["checkpoint"]


def _parts(path):
    return split_tensors(read_checkpoint(path).tensors, str(path))


def test_init_starts_from_the_checkpoint_and_trains_only_what_is_asked(base, tmp_path):
    cfg = tiny_cfg(init=str(base), train_only=("*attn2*",), freeze_conditioners=True)
    summary = train_ldm(cfg, None, tmp_path / "ft")
    before, after = _parts(base), _parts(summary["checkpoint"])
    changed = {k for k, v in after["unet"].items() if not torch.equal(v, before["ema"][k])}
    assert changed and all("attn2" in k for k in changed)
    assert before["ema_cond"]  # the base trained its text encoder: --init takes the EMA of both
    assert all(torch.equal(v, before["ema_cond"][k]) for k, v in after["cond"].items())
    assert all(torch.equal(v, before["ae"][k]) for k, v in after["ae"].items())
    model = load_ldm(summary["checkpoint"])
    assert model.config.conditioners == load_ldm(base).config.conditioners


def test_init_resume_is_bit_identical(base, tmp_path):
    class Crash(Exception):
        pass

    def crash(step, path):
        if step == 1:
            raise Crash

    cfg = tiny_cfg(init=str(base), train=replace(tiny_cfg().train, save_every=1))
    train_ldm(cfg, None, tmp_path / "full")
    with pytest.raises(Crash):
        train_ldm(cfg, None, tmp_path / "part", callbacks=Callbacks(on_save=crash))
    train_ldm(cfg, None, tmp_path / "part", resume=True)
    a, b = (read_checkpoint(p / "ldm.safetensors").tensors for p in (tmp_path / "full", tmp_path / "part"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_refuses_what_it_cannot_use(base, tmp_path):
    with pytest.raises(ConfigError, match="--ae and --init"):
        train_ldm(tiny_cfg(init=str(base)), base, tmp_path / "a")
    with pytest.raises(ConfigError, match="matches no UNet parameter"):
        train_ldm(tiny_cfg(init=str(base), train_only=("*nothing*",)), None, tmp_path / "b")
    odd = tiny_cfg(init=str(base))
    with pytest.raises(ConfigError, match="not a multiple"):
        train_ldm(replace(odd, data=replace(odd.data, size=18)), None, tmp_path / "c")


def test_cli_refuses_architecture_flags_with_init(base, tmp_path, capsys):
    from ldmctl.cli import main

    with pytest.raises(SystemExit):
        main(["train-ldm", "--init", str(base), "--cond", "class", "--out-dir", str(tmp_path / "x")])
    assert "--cond and --init" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_ae_may_be_an_ldm_checkpoint(base, tmp_path):
    ae = first_stage(base)
    assert torch.equal(ae.decoder.conv_out.weight, load_ldm(base).autoencoder.decoder.conv_out.weight)
    summary = train_ldm(tiny_cfg(), base, tmp_path / "new")
    assert load_ldm(summary["checkpoint"]).config.scale_factor == pytest.approx(0.8)


def test_init_takes_the_loss_settings_of_the_run_and_the_process_of_the_model(base, tmp_path):
    cfg = tiny_cfg(init=str(base))
    diffusion = replace(cfg.model.diffusion, timestep_bias_portion=0.5, min_snr_gamma=5.0, timesteps=10)
    cfg = replace(cfg, model=replace(cfg.model, diffusion=diffusion))
    model = load_ldm(train_ldm(cfg, None, tmp_path / "ft")["checkpoint"])
    d = model.config.diffusion
    assert (d.timestep_bias_portion, d.min_snr_gamma) == (0.5, 5.0)  # the loss: the run's own
    assert d.timesteps == load_ldm(base).config.diffusion.timesteps  # the process itself: the --init model's
    again = load_ldm(
        train_ldm(tiny_cfg(init=str(tmp_path / "ft" / "ldm.safetensors")), None, tmp_path / "ft2")["checkpoint"]
    )
    assert again.config.diffusion.min_snr_gamma == 0.0  # not inherited from the --init model: the run's default
