"""Distributed data-parallel training with torchrun: 2 CPU processes on gloo equal 1 process.

The worker (ddp_worker.py) saves the gradients of each of 3 optimizer steps. Two processes with
half the global batch each, and one process accumulating 2 micro-batches, must apply the same
gradients as one process with the whole batch, up to float rounding: max |difference| <= 1e-5 x
the largest gradient entry (measured: about 3e-7 x); the same for the autoencoder with its GAN
off (the discriminator's BatchNorm sees per-rank batches, so with the GAN on it is close, not
equal). The CLI test checks that rank 0 alone writes,
and that a torchrun run stopped and resumed equals the uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ldmctl.checkpoint import read_checkpoint

WORKER = str(Path(__file__).with_name("ddp_worker.py"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], timeout: int = 180) -> None:
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def ae(tmp_path_factory):
    from ldmctl.autoencoder import build_autoencoder
    from ldmctl.checkpoint import save_autoencoder
    from ldmctl.config import PRESETS

    torch.manual_seed(0)
    model = build_autoencoder(PRESETS["tiny"].model).eval()
    model.scale_factor.fill_(0.8)
    return str(save_autoencoder(model, tmp_path_factory.mktemp("ae") / "ae.safetensors"))


def _grads(out: Path) -> list[list[torch.Tensor]]:
    return torch.load(out / "grads.pt", weights_only=True)


def _assert_same_grads(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> None:
    assert len(a) == len(b) == 3
    for step_a, step_b in zip(a, b, strict=True):
        scale = max(float(g.abs().max()) for g in step_a)
        diff = max(float((x - y).abs().max()) for x, y in zip(step_a, step_b, strict=True))
        assert scale > 0 and diff <= 1e-5 * scale, (diff, scale)


def test_two_processes_and_accumulation_equal_one_process(ae, tmp_path):
    _run([sys.executable, WORKER, ae, str(tmp_path / "one"), "8", "1"])
    _run([sys.executable, WORKER, ae, str(tmp_path / "accum"), "8", "2"])
    _run([*TORCHRUN, WORKER, ae, str(tmp_path / "two"), "8", "1"])
    one = _grads(tmp_path / "one")
    _assert_same_grads(one, _grads(tmp_path / "accum"))
    _assert_same_grads(one, _grads(tmp_path / "two"))
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3


def test_autoencoder_two_processes_equal_one_process(tmp_path):
    worker = str(Path(__file__).with_name("ddp_worker_ae.py"))
    _run([sys.executable, worker, str(tmp_path / "one"), "8"])
    _run([*TORCHRUN, worker, str(tmp_path / "two"), "8"])
    _assert_same_grads(_grads(tmp_path / "one"), _grads(tmp_path / "two"))
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2


def test_torchrun_cli_writes_once_and_resumes_identically(ae, tmp_path):
    base = [
        *TORCHRUN,
        "-m",
        "ldmctl",
        "train-ldm",
        "--preset",
        "tiny",
        "--ae",
        ae,
        "--data",
        "builtin:synthetic",
        "--cond",
        "class",
        "--batch-size",
        "4",
        "--sample-every",
        "100",
        "--save-every",
        "2",
        "--set",
        "train.lr_schedule=constant",
        "--set",
        "train.warmup_steps=0",
    ]  # lr independent of --max-steps
    _run([*base, "--max-steps", "4", "--out", str(tmp_path / "full")])
    _run([*base, "--max-steps", "2", "--out", str(tmp_path / "part")])
    _run([*base, "--max-steps", "4", "--out", str(tmp_path / "part"), "--resume"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert steps == [4]  # one writer: no line from rank 1
    a = read_checkpoint(tmp_path / "full" / "ldm.safetensors").tensors
    b = read_checkpoint(tmp_path / "part" / "ldm.safetensors").tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
