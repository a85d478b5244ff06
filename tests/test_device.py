"""Device and precision resolution (ldmctl/device.py) and the inference pipelines on a device.

These tests run on the CPU. The choices of ``auto`` between CUDA, MPS and the CPU are checked by
pretending accelerators are present (monkeypatching the availability checks only there); on a
machine that has one, the tests that need none are skipped. ``bench/gpu_check.sh`` runs the same
pipelines on a real GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldmctl import device as dev
from ldmctl.errors import ConfigError

FIX = Path(__file__).resolve().parent / "fixtures" / "pre-refactor"
ACCELERATOR = torch.cuda.is_available() or dev.mps_available()
no_accelerator = pytest.mark.skipif(ACCELERATOR, reason="this machine has a GPU: auto picks it")

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per operation). Through a tiny UNet, a
# few sampler steps and the decoder, images in [-1, 1] move by at most ~0.06 and ~0.003-0.007 on
# average (measured on these fixtures); a broken autocast moves them by order 1.
BF16_MAX, BF16_MEAN = 0.1, 0.01


@pytest.mark.parametrize(
    "name,parsed",
    [("auto", ("auto", None)), ("cpu", ("cpu", None)), ("cuda", ("cuda", None)), ("cuda:3", ("cuda", 3))]
    + [("mps", ("mps", None)), (" CUDA:0 ", ("cuda", 0))],
)
def test_device_spellings(name, parsed):
    assert dev.parse_device(name) == parsed


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:", "cuda:-1", "mps:1", "cpu:0", "cuda:a", ""])
def test_unknown_device_spellings_are_refused_with_the_choices(name):
    with pytest.raises(ConfigError, match=r"unknown device .*auto, cpu, cuda, cuda:N, mps"):
        dev.parse_device(name)


@no_accelerator
def test_auto_is_the_cpu_here_and_accelerators_are_clear_errors():
    assert dev.resolve_device("auto") == torch.device("cpu") == dev.resolve_device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA GPU is visible") as err:
            dev.resolve_device(name)
        assert "--device auto" in err.value.hint and "cpu" in err.value.hint
    with pytest.raises(ConfigError, match="MPS backend is not available"):
        dev.resolve_device("mps")


def _pretend(monkeypatch, *, cuda: int = 0, mps: bool = False) -> None:
    """Pretend this machine has ``cuda`` CUDA GPUs and (or not) Apple's MPS."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(dev, "mps_available", lambda: mps)


def test_auto_takes_cuda_first_then_mps_then_the_cpu(monkeypatch):
    _pretend(monkeypatch, cuda=2, mps=True)
    assert dev.resolve_device("auto") == torch.device("cuda", 0)
    _pretend(monkeypatch, cuda=0, mps=True)
    assert dev.resolve_device("auto") == torch.device("mps") == dev.resolve_device("mps")
    _pretend(monkeypatch, cuda=0, mps=False)
    assert dev.resolve_device("auto") == torch.device("cpu")


def test_cuda_index_and_torchrun_ranks(monkeypatch):
    _pretend(monkeypatch, cuda=2)
    assert dev.resolve_device("cuda") == torch.device("cuda", 0)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert dev.resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)  # rank 3 of 2 GPUs
    assert dev.resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert dev.resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # an index is an index
    with pytest.raises(ConfigError, match=r"2 CUDA GPU\(s\), numbered 0 to 1"):
        dev.resolve_device("cuda:2")


def test_training_under_torchrun_refuses_one_named_gpu_for_every_process(monkeypatch):
    from ldmctl.train.dist import setup

    _pretend(monkeypatch, cuda=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match="each process needs its own device"):
        setup("cuda:1")


def test_precision_per_device():
    cpu = torch.device("cpu")
    assert dev.resolve_precision("fp32", cpu) is None
    assert dev.resolve_precision("bf16", cpu) is torch.bfloat16
    assert dev.resolve_precision("fp16", "cuda:0") is torch.float16
    assert dev.resolve_precision("fp16", "mps") is torch.float16
    with pytest.raises(ConfigError, match="fp16 needs a GPU") as err:
        dev.resolve_precision("fp16", cpu)
    assert "bf16" in err.value.hint
    with pytest.raises(ConfigError, match="unknown precision 'fp64'"):
        dev.resolve_precision("fp64", cpu)


def test_autocast_lowers_matrix_products_only_when_asked():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with dev.autocast("bf16", "cpu"):
        assert (a @ b).dtype is torch.bfloat16
    with dev.autocast("fp32", "cpu"):
        assert (a @ b).dtype is torch.float32


def test_fp32_inference_on_cuda_is_full_fp32_and_training_keeps_the_tf32_defaults():
    from ldmctl.train.loop import autocast

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with dev.autocast("fp32", "cuda:0"):  # only flags: nothing runs on a GPU here
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    with autocast("fp32", "cuda:0"):
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_training_fp16_needs_cuda_not_just_a_gpu():
    from ldmctl.train.loop import autocast

    for where in ("cpu", "mps"):
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            autocast("fp16", where)
    with autocast("bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16


def _samples(name: str, precision: str, **options) -> torch.Tensor:
    from ldmctl.diffusion.io import load_ldm
    from ldmctl.samplers import get_sampler
    from ldmctl.sampling import generate, sampling_conditions

    model = load_ldm(FIX / f"{name}.safetensors", device="cpu")
    conditions = sampling_conditions(model, 4, options)
    chunks = generate(
        model, get_sampler("ddim"), 4, steps=5, seed=1, conditions=conditions, guidance=2.0, precision=precision
    )
    return torch.cat([x for x, _ in chunks])


@pytest.mark.parametrize("name,inputs", [("uncond", {}), ("crossattn", {"caption": ["a red circle"]})])
def test_bf16_samples_are_close_to_fp32_and_come_back_as_cpu_float32(name, inputs):
    full, half = _samples(name, "fp32", **inputs), _samples(name, "bf16", **inputs)
    assert half.dtype is torch.float32 and half.device.type == "cpu" and half.shape == full.shape
    diff = (full - half).abs()
    assert not torch.equal(full, half)  # autocast did run in bf16
    assert diff.max() <= BF16_MAX and diff.mean() <= BF16_MEAN, (diff.max(), diff.mean())


def test_fp16_sampling_on_the_cpu_is_refused_before_any_step():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        _samples("uncond", "fp16")


def test_superres_and_reconstruction_in_bf16_are_close_to_fp32():
    from ldmctl.autoencoder.apply import reconstruct
    from ldmctl.checkpoint import load_autoencoder
    from ldmctl.data import load_image, pil_to_tensor
    from ldmctl.diffusion.io import load_ldm
    from ldmctl.superres.upscale import upscale

    model, lr = load_ldm(FIX / "sr.safetensors"), pil_to_tensor(load_image(FIX / "lr.png"))
    full, half = upscale(model, lr, steps=3, precision="fp32"), upscale(model, lr, steps=3, precision="bf16")
    assert half.dtype is torch.float32 and not torch.equal(full, half)
    assert (full - half).abs().max() <= BF16_MAX and (full - half).abs().mean() <= BF16_MEAN
    ae = load_autoencoder(FIX / "ae.safetensors")
    x = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    full, half = reconstruct(ae, x), reconstruct(ae, x, precision="bf16")
    assert half.dtype is torch.float32 and (full - half).abs().max() <= BF16_MAX


def test_load_ldm_puts_the_model_on_the_device():
    from ldmctl.diffusion.io import load_ldm

    model = load_ldm(FIX / "uncond.safetensors", device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with pytest.raises(ConfigError, match="unknown device"):
        load_ldm(FIX / "uncond.safetensors", device="gpu")
