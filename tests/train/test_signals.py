"""SIGTERM / SIGINT during training: a checkpoint at the current step, a clean return, and a
--resume that ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from ldmctl.config import DataConfig, ldm_preset, preset, with_updates
from ldmctl.diffusion.io import load_ldm
from ldmctl.train.ae import train_ae
from ldmctl.train.ldm import train_ldm
from ldmctl.train.loop import Callbacks


def _kill_at(step: int, sig: int) -> Callbacks:
    return Callbacks(on_step=lambda s, _logs: os.kill(os.getpid(), sig) if s == step else None)


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    cfg = preset("tiny")
    cfg = with_updates(
        cfg,
        data=DataConfig(source="builtin:synthetic", size=16),
        train=with_updates(cfg.train, max_steps=1),
        loss=with_updates(cfg.loss, perceptual="none"),
    )
    return train_ae(cfg, tmp_path_factory.mktemp("ae"))["checkpoint"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ldm_signal_saves_and_resume_is_bit_identical(ae_ckpt, tmp_path, sig):
    cfg = ldm_preset("tiny")
    cfg = with_updates(
        cfg,
        data=DataConfig(source="builtin:synthetic", size=16),
        train=with_updates(cfg.train, max_steps=8, save_every=100, sample_every=100),
    )
    full = train_ldm(cfg, ae_ckpt, tmp_path / "full")
    cut = train_ldm(cfg, ae_ckpt, tmp_path / "cut", callbacks=_kill_at(3, sig))
    assert cut["interrupted"] == signal.Signals(sig).name and cut["steps"] == 3
    assert (tmp_path / "cut" / "checkpoints" / "step_0000003.safetensors").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    done = train_ldm(cfg, None, tmp_path / "cut", resume=True)
    assert done["steps"] == 8 and done["interrupted"] is None
    a = load_ldm(tmp_path / "full" / "ldm.safetensors", weights="raw").unet.state_dict()
    b = load_ldm(tmp_path / "cut" / "ldm.safetensors", weights="raw").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["interrupted"] is None


def test_ae_sigterm_saves_a_checkpoint(tmp_path):
    cfg = preset("tiny")
    cfg = with_updates(
        cfg,
        data=DataConfig(source="builtin:synthetic", size=16),
        train=with_updates(cfg.train, max_steps=6, save_every=100, sample_every=100),
        loss=with_updates(cfg.loss, perceptual="none"),
    )
    out = train_ae(cfg, tmp_path / "ae", callbacks=_kill_at(2, signal.SIGTERM))
    assert out["interrupted"] == "SIGTERM" and out["steps"] == 2
    assert (tmp_path / "ae" / "checkpoints" / "step_0000002.safetensors").is_file()
