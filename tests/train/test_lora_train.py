"""train-lora, sample --lora and lora merge on a tiny text-to-image model (the LoRA library: tests/lora/)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ldmctl.config import DataConfig
from ldmctl.files import file_sha256
from ldmctl.lora import LoRAConfig, read_lora_file
from ldmctl.train.loop import Callbacks
from ldmctl.train.lora import LoRATrainingConfig, train_lora


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_ae, tiny_ldm):
    root = tmp_path_factory.mktemp("lora-base")
    # trained a few steps without warm-up: a UNet fresh from init has zero output layers, which would pass
    # no gradient to any adapter
    return tiny_ldm(root, tiny_ae(root), "--cond", "crossattn", *NO_WARMUP, data="builtin:shapes", steps=3)


NO_WARMUP = ("--set", "train.warmup_steps=0")


def lora_cfg(base, **train):
    cfg = LoRATrainingConfig(base=str(base), lora=LoRAConfig(rank=2, alpha=2), data=DataConfig(source="builtin:shapes"))
    fields = {"max_steps": 4, "batch_size": 2, "sample_every": 1000, "save_every": 1000, "warmup_steps": 0, "lr": 1e-2}
    return replace(cfg, train=replace(cfg.train, **{**fields, **train}), sample_count=2, sample_steps=2)


def test_train_lora_writes_a_small_adapter_and_leaves_the_base_alone(base, tmp_path):
    before = file_sha256(base)
    summary = train_lora(lora_cfg(base, sample_every=2), tmp_path / "run")
    assert file_sha256(base) == before
    tensors, meta = read_lora_file(summary["checkpoint"])
    assert meta["ldmctl.kind"] == "lora" and before in meta["ldmctl.base"]
    assert summary["adapter_parameters"] == sum(t.numel() for t in tensors.values()) > 0
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)  # the adapters trained
    assert (tmp_path / "run" / "summary.json").is_file()


def test_train_lora_resume_is_bit_identical(base, tmp_path):
    class Crash(Exception):
        pass

    def crash(step, path):
        if step == 2:
            raise Crash

    cfg = lora_cfg(base, save_every=2)
    train_lora(cfg, tmp_path / "full")
    with pytest.raises(Crash):
        train_lora(cfg, tmp_path / "part", callbacks=Callbacks(on_save=crash))
    train_lora(cfg, tmp_path / "part", resume=True)
    a, _ = read_lora_file(tmp_path / "full" / "lora.safetensors")
    b, _ = read_lora_file(tmp_path / "part" / "lora.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _sample(run_cli, ckpt, out, *extra):
    args = (
        "sample",
        ckpt,
        "--prompt",
        "a red circle",
        "--n",
        2,
        "--steps",
        3,
        "--seed",
        1,
        "-o",
        out.with_suffix(".png"),
    )
    run_cli(*args, "--save-tensor", out, *extra)
    return torch.load(out)


def test_sample_lora_scale_and_merge(base, tmp_path, run_cli):
    adapter = train_lora(lora_cfg(base), tmp_path / "run")["checkpoint"]
    plain = _sample(run_cli, base, tmp_path / "plain.pt")
    assert torch.equal(_sample(run_cli, base, tmp_path / "zero.pt", "--lora", f"{adapter}:0"), plain)
    adapted = _sample(run_cli, base, tmp_path / "one.pt", "--lora", str(adapter))
    assert not torch.equal(adapted, plain)
    merged = tmp_path / "merged.safetensors"
    run_cli("lora", "merge", base, adapter, merged)
    assert (_sample(run_cli, merged, tmp_path / "merged.pt") - adapted).abs().max() < 1e-4


def test_adapter_for_another_base_is_refused(base, tmp_path, tiny_ae, tiny_ldm, capsys):
    from ldmctl.cli import main

    adapter = train_lora(lora_cfg(base, max_steps=1), tmp_path / "run")["checkpoint"]
    other = tiny_ldm(tmp_path, tiny_ae(tmp_path), "--cond", "crossattn", "--seed", 7, *NO_WARMUP, data="builtin:shapes")
    with pytest.raises(SystemExit):
        main(["sample", str(other), "--prompt", "x", "--lora", str(adapter), "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert "another base" in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_train_lora_refuses_a_run_folder_another_live_process_writes(base, tmp_path):
    """One writer per run folder, as train-ldm and train-ae: a lock held by a live process refuses."""
    import subprocess
    import sys

    from ldmctl.errors import LdmctlError

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".lock").write_text(f"{sleeper.pid}\n")
        with pytest.raises(LdmctlError, match="in use"):
            train_lora(lora_cfg(base, max_steps=1), tmp_path / "run")
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]
    finally:
        sleeper.kill()
        sleeper.wait()
