"""A NaN/inf loss skips its step with a warning; too many in a row stop the run with a clear error."""

from __future__ import annotations

import logging

import pytest
import torch

from ldmctl.config import DataConfig, LDMTrainingConfig, ldm_preset, preset, with_updates
from ldmctl.diffusion.objective import Objective
from ldmctl.errors import TrainingError
from ldmctl.train.ae import train_ae
from ldmctl.train.ldm import train_ldm
from ldmctl.train.loop import NonFiniteGuard


def test_guard_counts_only_consecutive_failures():
    g = NonFiniteGuard(2)
    assert g.ok(torch.tensor(1.0), 0)
    assert not g.ok(torch.tensor(float("nan")), 1)
    assert g.ok(torch.tensor(0.5), 2)  # resets the run of failures
    assert not g.ok(torch.tensor(float("inf")), 3)
    with pytest.raises(TrainingError, match="2 steps in a row"):
        g.ok(torch.tensor(float("nan")), 4)


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    cfg = preset("tiny")
    cfg = with_updates(
        cfg,
        data=DataConfig(source="builtin:synthetic", size=16),
        train=with_updates(cfg.train, max_steps=1),
        loss=with_updates(cfg.loss, perceptual="none"),
    )
    return train_ae(cfg, out)["checkpoint"]


def _ldm_cfg(steps: int) -> LDMTrainingConfig:
    cfg = ldm_preset("tiny")
    return with_updates(
        cfg,
        data=DataConfig(source="builtin:synthetic", size=16),
        train=with_updates(cfg.train, max_steps=steps, save_every=2, sample_every=100, max_nonfinite=3),
    )


def _poison(monkeypatch, bad_calls: set[int]):
    real, calls = Objective.__call__, [0]

    def call(self, *args, **kwargs):
        loss, logs = real(self, *args, **kwargs)
        calls[0] += 1
        return (loss * float("nan") if calls[0] in bad_calls else loss), logs

    monkeypatch.setattr(Objective, "__call__", call)


def test_isolated_nan_steps_are_skipped(ae_ckpt, tmp_path, monkeypatch, caplog):
    _poison(monkeypatch, {2, 3})
    with caplog.at_level(logging.WARNING):
        summary = train_ldm(_ldm_cfg(5), ae_ckpt, tmp_path / "ldm")
    assert summary["steps"] == 5 and "step skipped" in caplog.text


def test_a_run_of_nans_stops_and_keeps_the_last_checkpoint(ae_ckpt, tmp_path, monkeypatch):
    _poison(monkeypatch, set(range(3, 100)))
    with pytest.raises(TrainingError, match="3 steps in a row"):
        train_ldm(_ldm_cfg(10), ae_ckpt, tmp_path / "ldm")
    ckpts = sorted((tmp_path / "ldm" / "checkpoints").glob("step_*.safetensors"))
    assert [c.name for c in ckpts] == ["step_0000002.safetensors", "step_0000004.safetensors"]
    from ldmctl.diffusion.io import load_ldm

    before, after = (load_ldm(c, weights="raw").unet.state_dict() for c in ckpts)
    for k, v in after.items():  # the skipped steps 3 and 4 left the weights as they were
        assert torch.isfinite(v).all() and torch.equal(v, before[k])
