"""Library-level tests of the autoencoder trainer: determinism, resume, data order, scale."""

from __future__ import annotations

import json
import os

import torch

from ldmctl.checkpoint import load_autoencoder
from ldmctl.config import merge, preset
from ldmctl.train.ae import estimate_scale_factor, train_ae
from ldmctl.train.loop import batch_stream, epoch_permutation


def _cfg(steps: int, kind: str = "kl"):
    return merge(
        preset("tiny"),
        {
            "model": {"kind": kind},
            "loss": {"perceptual": "none"},
            "data": {"source": "builtin:synthetic"},
            "train": {"max_steps": steps, "save_every": 2},
        },
    )


def _weights(path):
    return load_autoencoder(path).state_dict()


def test_same_seed_same_weights_and_resume_is_exact(tmp_path):
    train_ae(_cfg(4), tmp_path / "a")
    train_ae(_cfg(4), tmp_path / "b")
    train_ae(_cfg(2), tmp_path / "c")
    train_ae(_cfg(4), tmp_path / "c", resume=True)
    a, b, c = (_weights(tmp_path / n / "ae.safetensors") for n in "abc")
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(a[key], c[key]), key


def test_vq_run_reports_codebook_stats(tmp_path):
    summary = train_ae(_cfg(3, kind="vq"), tmp_path / "vq")
    assert "perplexity" in summary["final"] and 0 < summary["final"]["usage"] <= 1
    line = json.loads((tmp_path / "vq" / "log.jsonl").read_text().splitlines()[-1])
    assert "vq" in line


def test_batch_stream_resumes_mid_epoch():
    data = [{"image": torch.tensor([float(i)])} for i in range(10)]
    full = batch_stream(data, 3, seed=1)
    first = [next(full)["image"].flatten().tolist() for _ in range(5)]
    resumed = batch_stream(data, 3, seed=1, start_step=2)
    assert [next(resumed)["image"].flatten().tolist() for _ in range(3)] == first[2:]
    assert sorted(epoch_permutation(10, 1, 0).tolist()) == list(range(10))
    assert not torch.equal(epoch_permutation(10, 1, 0), epoch_permutation(10, 1, 1))


class _EpochItems(torch.utils.data.Dataset):
    """Items that depend on the epoch and name the process that made them."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.tensor([float(100 * self.epoch + i)]), "pid": os.getpid()}


def test_batch_stream_workers_live_for_the_run_and_follow_the_epoch():
    plain = batch_stream(_EpochItems(7), 3, seed=2, start_step=1)
    with_workers = batch_stream(_EpochItems(7), 3, seed=2, start_step=1, num_workers=2)
    a = [next(plain) for _ in range(9)]  # 2 batches per epoch: five epochs
    b = [next(with_workers) for _ in range(9)]
    assert [x["image"].flatten().tolist() for x in a] == [x["image"].flatten().tolist() for x in b]
    assert {int(v) // 100 for x in a for v in x["image"].flatten()} == {0, 1, 2, 3, 4}
    pids = {int(p) for x in b for p in x["pid"]}
    assert len(pids) == 2 and os.getpid() not in pids  # the same two workers in every epoch
    with_workers.close()


def test_scale_factor_is_inverse_std():
    class Fixed(torch.nn.Module):
        def encode(self, x, *, sample=False, generator=None):
            return x * 4.0

    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    scale = estimate_scale_factor(Fixed(), x, seed=0)
    assert abs(scale - 1 / (4 * x.std().item())) < 1e-6


def test_lr_schedule_warmup_and_cosine():
    from ldmctl.train.loop import lr_at

    kw = dict(base=1.0, warmup=10, total=110, min_ratio=0.1)
    assert lr_at(0, schedule="cosine", **kw) == 0.1
    assert lr_at(9, schedule="cosine", **kw) == 1.0
    assert lr_at(10, schedule="cosine", **kw) == 1.0
    assert abs(lr_at(60, schedule="cosine", **kw) - 0.55) < 1e-9
    assert abs(lr_at(110, schedule="cosine", **kw) - 0.1) < 1e-9
    assert lr_at(80, schedule="constant", **kw) == 1.0


def test_init_from_checkpoint_starts_a_new_run_from_its_weights(tmp_path):
    import pytest

    from ldmctl.errors import ConfigError

    train_ae(_cfg(2), tmp_path / "a")
    start = _weights(tmp_path / "a" / "ae.safetensors")
    fine = merge(_cfg(2), {"data": {"size": 32}, "train": {"lr": 1e-9, "seed": 5}})
    summary = train_ae(fine, tmp_path / "b", init_from=tmp_path / "a" / "ae.safetensors")
    assert summary["steps"] == 2
    after = _weights(tmp_path / "b" / "ae.safetensors")
    fresh = train_ae(merge(fine, {"train": {"seed": 6}}), tmp_path / "d")
    assert fresh["steps"] == 2 and not torch.allclose(
        start["decoder.conv_out.weight"], _weights(tmp_path / "d" / "ae.safetensors")["decoder.conv_out.weight"]
    )
    for key, value in start.items():
        if key != "scale_factor":  # re-estimated on the new run's data
            assert torch.allclose(value, after[key], atol=1e-6), key  # lr ~0: the loaded weights
    other = merge(_cfg(2), {"model": {"z_channels": 3}})
    with pytest.raises(ConfigError, match="z_channels"):
        train_ae(other, tmp_path / "c", init_from=tmp_path / "a" / "ae.safetensors")


def test_linear_shortcut_run_starts_from_pca_and_resumes_exactly(tmp_path):
    cfg = merge(_cfg(2), {"model": {"linear_shortcut": True, "posterior_logvar_init": -6.0}, "train": {"lr": 1e-9}})
    train_ae(cfg, tmp_path / "a")
    ae = load_autoencoder(tmp_path / "a" / "ae.safetensors")
    assert ae.config.linear_shortcut and ae.shortcut_in is not None
    # lr ~0: still the PCA start, i.e. the deep path's output layer is (almost) zero
    assert ae.decoder.conv_out.weight.abs().max() < 1e-6
    assert ae.shortcut_out.weight.abs().max() > 1e-3
    full = merge(cfg, {"train": {"max_steps": 4, "lr": 1e-3}})
    train_ae(full, tmp_path / "b")
    train_ae(merge(full, {"train": {"max_steps": 2}}), tmp_path / "c")
    train_ae(full, tmp_path / "c", resume=True)
    b, c = _weights(tmp_path / "b" / "ae.safetensors"), _weights(tmp_path / "c" / "ae.safetensors")
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_muon_run_resumes_exactly(tmp_path):
    cfg = merge(_cfg(4), {"train": {"optimizer": "muon"}})
    train_ae(cfg, tmp_path / "a")
    train_ae(merge(cfg, {"train": {"max_steps": 2}}), tmp_path / "b")
    train_ae(cfg, tmp_path / "b", resume=True)
    a, b = _weights(tmp_path / "a" / "ae.safetensors"), _weights(tmp_path / "b" / "ae.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    train_ae(_cfg(4), tmp_path / "adam")
    adam = _weights(tmp_path / "adam" / "ae.safetensors")
    assert any(not torch.equal(a[k], adam[k]) for k in a)
