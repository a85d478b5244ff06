"""train-ldm on tiny configs: loss falls, resume is bit-identical, one file rebuilds the model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import read_checkpoint, save_autoencoder
from ldmctl.config import PRESETS, DataConfig, ldm_preset, merge
from ldmctl.diffusion.io import load_ldm
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.train.ldm import train_ldm
from ldmctl.train.loop import Callbacks


@pytest.fixture(scope="module")
def ae_path(tmp_path_factory):
    torch.manual_seed(0)
    ae = build_autoencoder(PRESETS["tiny"].model).eval()
    ae.scale_factor.fill_(0.8)
    return save_autoencoder(ae, tmp_path_factory.mktemp("ae") / "ae.safetensors")


def tiny_cfg(**train):
    cfg = ldm_preset("tiny")
    return replace(
        cfg,
        data=DataConfig(source="builtin:synthetic", size=16),
        train=replace(cfg.train, **{"sample_every": 1000, "save_every": 1000, **train}),
    )


def test_loss_falls_on_a_tiny_run(ae_path, tmp_path):
    cfg = tiny_cfg(max_steps=60, lr=2e-3, log_every=5, warmup_steps=0)
    train_ldm(cfg, ae_path, tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses


class Crash(Exception):
    pass


def _crash_at(step: int) -> Callbacks:
    def on_save(s: int, path: str) -> None:
        if s == step:
            raise Crash

    return Callbacks(on_save=on_save)


def test_resume_is_bit_identical(ae_path, tmp_path):
    """A run killed right after its step-3 checkpoint and resumed equals the uninterrupted run."""
    cfg = tiny_cfg(max_steps=6, save_every=3, lr=1e-3)
    train_ldm(cfg, ae_path, tmp_path / "full")
    with pytest.raises(Crash):
        train_ldm(cfg, ae_path, tmp_path / "part", callbacks=_crash_at(3))
    train_ldm(cfg, None, tmp_path / "part", resume=True)
    a = read_checkpoint(tmp_path / "full" / "ldm.safetensors").tensors
    b = read_checkpoint(tmp_path / "part" / "ldm.safetensors").tensors
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_rebuilds_model_with_ema_and_autoencoder(ae_path, tmp_path):
    cfg = tiny_cfg(max_steps=4)
    summary = train_ldm(cfg, ae_path, tmp_path / "run")
    ckpt = read_checkpoint(summary["checkpoint"], expect_kind="ldm")
    assert {k.split(".")[0] for k in ckpt.tensors} == {"unet", "ema", "ae"}
    assert ckpt.config["ldm"]["scale_factor"] == pytest.approx(0.8)
    assert ckpt.config["ldm"]["latent_size"] == 4 and ckpt.config["ldm"]["unet"]["in_channels"] == 4
    ema, raw = load_ldm(summary["checkpoint"]), load_ldm(summary["checkpoint"], weights="raw")
    assert not torch.equal(ema.unet.time_mlp[0].weight, raw.unet.time_mlp[0].weight)
    from ldmctl.samplers import ddim

    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    z1 = ema.sample_latents(ddim, 2, steps=3, generator=g1)
    z2 = ema.sample_latents(ddim, 2, steps=3, generator=g2)
    assert torch.equal(z1, z2) and z1.shape == (2, 4, 4, 4)
    assert ema.decode(z1).shape == (2, 3, 16, 16)


def test_wrong_kind_and_bad_sizes_are_clear_errors(ae_path, tmp_path):
    with pytest.raises(CheckpointError, match="autoencoder checkpoint"):
        load_ldm(ae_path)
    with pytest.raises(ConfigError, match="multiple"):
        train_ldm(merge(tiny_cfg(), {"data": {"size": 18}}), ae_path, tmp_path / "bad")
    with pytest.raises(ConfigError, match="latent side"):
        train_ldm(merge(tiny_cfg(), {"model": {"unet": {"channel_mult": [1, 2, 2, 2]}}}), ae_path, tmp_path / "bad2")
    with pytest.raises(ConfigError, match="needs --ae"):
        train_ldm(tiny_cfg(), None, tmp_path / "bad3")
    with pytest.raises(ConfigError, match="train-ae only"):
        train_ldm(merge(tiny_cfg(), {"train": {"optimizer": "muon"}}), ae_path, tmp_path / "bad4")
