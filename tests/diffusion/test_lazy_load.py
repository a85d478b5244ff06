"""load_ldm builds the UNet and the autoencoder uninitialised and copies the file's tensors in one at
a time: the model it returns equals, bit for bit (values, dtypes, memory layout, buffers), the one
of the earlier path (every tensor read, modules randomly initialised, ``load_state_dict``)."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ldmctl.autoencoder import build_autoencoder
from ldmctl.checkpoint import LazyTensors, empty_module, load_state, read_checkpoint
from ldmctl.conditioning.compose import ConditionerSet
from ldmctl.config import ConditionerSpec, LDMConfig, UNetConfig, preset
from ldmctl.diffusion.io import load_ldm, save_ldm, split_tensors, stored_configs, write_ldm
from ldmctl.diffusion.ldm import LatentDiffusion, latent_spec
from ldmctl.errors import CheckpointError
from ldmctl.unet import UNet

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "pre-refactor"
UNET = UNetConfig(
    model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2, norm_groups=8
)


def old_load(path: Path, weights: str = "ema") -> LatentDiffusion:
    """The loading path before the lazy one (the oracle): read everything, build, load_state_dict."""
    ckpt = read_checkpoint(path, expect_kind="ldm")
    cfg, ae_cfg = stored_configs(ckpt)  # the configs as this version reads them; the loading is the oracle's
    ae = build_autoencoder(ae_cfg)
    parts = split_tensors(ckpt.tensors, str(path))
    load_state(ae, parts["ae"], "ae")
    unet = UNet(cfg.unet)
    load_state(unet, parts["ema" if weights == "ema" else "unet"], "unet")
    packages = {name: p.get("package", "") for name, p in ckpt.config.get("plugins", {}).items()}
    conds = ConditionerSet(cfg.conditioners, latent_spec(cfg, ae), packages)
    load_state(conds, parts["ema_cond" if weights == "ema" and parts["ema_cond"] else "cond"], "cond")
    return LatentDiffusion(cfg, ae, unet, conds).eval()


def assert_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Same parameters and buffers (non-persistent ones too): values, dtype and strides."""
    for kind in ("named_parameters", "named_buffers"):
        left, right = dict(getattr(a, kind)()), dict(getattr(b, kind)())
        assert left.keys() == right.keys(), kind
        for name, x in left.items():
            y = right[name]
            assert x.dtype == y.dtype and x.stride() == y.stride() and torch.equal(x, y), name
            assert x.requires_grad == y.requires_grad, name
    assert a.training == b.training


def tiny_model(kind: str = "kl") -> LatentDiffusion:
    torch.manual_seed(0)
    ae = build_autoencoder(dataclasses.replace(preset("tiny").model, kind=kind, n_embed=32))
    spec = ConditionerSpec("class", {"num_classes": 3, "dim": 8})
    cfg = LDMConfig(unet=dataclasses.replace(UNET, add_dim=8), latent_size=8, conditioners=(spec,))
    return LatentDiffusion(cfg, ae).eval()


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy whose weights differ (stands for the EMA weights)."""
    other, g = copy.deepcopy(module), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    return other


@pytest.fixture(scope="module", params=["kl", "vq"])
def training_ckpt(request, tmp_path_factory) -> Path:
    model = tiny_model(request.param)
    if request.param == "vq":
        model.autoencoder.quantize.usage_count.fill_(7)  # run-time statistics: never saved, zero on load
    path = tmp_path_factory.mktemp("lazy") / f"{request.param}.safetensors"
    save_ldm(model, _perturbed(model.unet, 1), path, extra={}, cond_ema=_perturbed(model.conditioners, 2))
    return path


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_a_training_checkpoint_loads_as_before(training_ckpt, weights):
    new, old = load_ldm(training_ckpt, weights=weights), old_load(training_ckpt, weights)
    assert_identical(new, old)
    z = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        cond = new.conditioners({"label": [0, 2]})
        assert torch.equal(new.unet(z, t, cond), old.unet(z, t, old.conditioners({"label": [0, 2]})))
        assert torch.equal(new.autoencoder.decode(z), old.autoencoder.decode(z))


@pytest.mark.parametrize("name", ["uncond", "class", "crossattn", "add", "tokens", "sr", "sr-residual"])
def test_the_old_fixture_checkpoints_load_as_before(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # the text fixtures name their vocab.txt by its path from the root
    assert_identical(load_ldm(FIX / f"{name}.safetensors"), old_load(FIX / f"{name}.safetensors"))


def test_an_exported_fp16_checkpoint_loads_as_before_and_has_no_raw_weights(tmp_path):
    model = tiny_model()
    parts = {
        "ema": model.unet.state_dict(),
        "ae": model.autoencoder.state_dict(),
        "cond": model.conditioners.state_dict(),
    }
    path = write_ldm(
        tmp_path / "e.safetensors",
        parts,
        config=model.config,
        autoencoder=model.autoencoder.config,
        conditioners=model.conditioners,
        extra={},
        dtype=torch.float16,
    )
    new = load_ldm(path)
    assert_identical(new, old_load(path))
    assert {p.dtype for p in new.parameters()} == {torch.float32}  # cast back on load
    with pytest.raises(CheckpointError, match="exported checkpoint: it holds the EMA weights only"):
        load_ldm(path, weights="raw")


def test_each_needed_tensor_is_read_once_and_no_copy_outlives_its_load(training_ckpt, monkeypatch):
    """Bounded memory, checked deterministically: every tensor load_ldm needs is read once; a view of
    the file mapping (a tensor stored in the model's dtype and layout) *is* the model's tensor
    afterwards (same memory, no copy); a tensor read into plain memory to be cast or laid out
    otherwise is gone before the next such read, so beside the model at most one lives; the raw UNet
    weights of a training checkpoint are not read at all when sampling with EMA."""
    reads: list[str] = []
    views: dict[str, int] = {}
    last: list[weakref.ref] = []
    mapped, copied = LazyTensors.__getitem__, LazyTensors.copy

    def view(self, key):
        tensor = mapped(self, key)
        reads.append(key)
        views[key] = tensor.data_ptr()
        return tensor

    def copy(self, key):
        assert not last or last[-1]() is None, f"{reads[-1]!r} still held when {key!r} is read"
        tensor = copied(self, key)
        reads.append(key)
        last.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(LazyTensors, "__getitem__", view)
    monkeypatch.setattr(LazyTensors, "copy", copy)
    model = load_ldm(training_ckpt)
    stored = read_checkpoint(training_ckpt).tensors
    assert len(reads) == len(set(reads)) and last and views  # both paths are exercised
    assert set(reads) == {k for k in stored if k.split(".")[0] in ("ema", "ae", "ema_cond")}
    own = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert set(views.values()) <= own


def _peak_extra_mb(path: Path, code: str) -> float:
    """VmHWM minus VmRSS before ``code`` runs, in a fresh process that has loaded a tiny model first
    (so the modules loading imports are not counted), in MiB."""
    script = f"""
import torch
from ldmctl.diffusion.io import load_ldm
load_ldm({str(FIX / "uncond.safetensors")!r})
def status(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":")) / 1024
before = status("VmRSS")
{code}
print(status("VmHWM") - before)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_peak_memory_of_a_load_is_about_the_model_not_twice(tmp_path, dtype):
    """Measured, in a fresh process: loading a 67 M-parameter model (256 MB in fp32) and running
    through every weight adds at most 1.4 x the model's fp32 size to the peak resident memory
    (measured 1.25 x), whether the file is stored in fp32 (views of the mapping) or fp16 (read and
    cast one at a time); the earlier path (every tensor read, then a randomly initialised model)
    needed 2.05 x (fp32) and 1.55 x (fp16)."""
    torch.manual_seed(0)
    unet = dataclasses.replace(UNET, model_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2)
    model = LatentDiffusion(LDMConfig(unet=unet, latent_size=8), build_autoencoder(preset("tiny").model)).eval()
    parts = {"ema": model.unet.state_dict(), "ae": model.autoencoder.state_dict(), "cond": {}}
    path = write_ldm(
        tmp_path / "m.safetensors",
        parts,
        config=model.config,
        autoencoder=model.autoencoder.config,
        conditioners=model.conditioners,
        extra={},
        dtype=dtype,
    )
    size_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    assert size_mb > 200
    code = f"m = load_ldm({str(path)!r}); s = sum(float(p.double().sum()) for p in m.parameters())"
    extra = _peak_extra_mb(path, code)
    assert extra < 1.4 * size_mb, (extra, size_mb)


def test_the_unet_and_autoencoder_are_never_randomly_initialised(training_ckpt, monkeypatch):
    """No reset_parameters (the random init of Linear, Conv, norms, Embedding) runs on real storage of a
    module that ends up in the UNet or the autoencoder; the conditioners are built normally."""
    on_real_storage: list[torch.nn.Module] = []
    classes = {torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding}
    for cls in classes:
        original = cls.reset_parameters

        def spy(self, _original=original):
            if getattr(self, "weight", None) is not None and not self.weight.is_meta:
                on_real_storage.append(self)
            return _original(self)

        monkeypatch.setattr(cls, "reset_parameters", spy)
    model = load_ldm(training_ckpt)
    inits = {id(m) for m in on_real_storage}
    assert not inits & {id(m) for m in [*model.unet.modules(), *model.autoencoder.modules()]}
    assert inits & {id(m) for m in model.conditioners.modules()}  # the spy does see real inits


def test_empty_module_zeroes_what_a_normal_build_zeroes():
    """empty_module zeroes non-persistent buffers: that is what a normal build of every model it is used
    for holds in them (a new non-persistent buffer with another start value would fail here)."""
    torch.manual_seed(0)
    builds = [lambda: UNet(UNET), lambda: build_autoencoder(preset("tiny").model)]
    builds.append(lambda: build_autoencoder(dataclasses.replace(preset("tiny").model, kind="vq", n_embed=32)))
    for build in builds:
        normal, empty = build(), empty_module(build)
        persistent = set(normal.state_dict())
        for (name, buf), (_, other) in zip(normal.named_buffers(), empty.named_buffers(), strict=True):
            if name not in persistent:
                assert not buf.any() and not other.any(), name
        for (_, p), (_, q) in zip(normal.named_parameters(), empty.named_parameters(), strict=True):
            assert (p.shape, p.stride(), p.dtype, p.requires_grad) == (q.shape, q.stride(), q.dtype, q.requires_grad)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(src))
    edit(tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: t.pop("ema.conv_in.weight"), r"ema UNet\).*missing 'conv_in.weight'"),
        (lambda t: t.update({"ae.extra": torch.zeros(1)}), r"autoencoder\).*unexpected 'extra'"),
        (lambda t: t.update({"ema.conv_in.bias": torch.zeros(3)}), r"'conv_in.bias' has shape \[3\] in the file"),
        (lambda t: t.update({"stray.x": torch.zeros(1)}), "unexpected tensor 'stray.x'"),
    ],
    ids=["missing", "unexpected", "shape", "unknown-group"],
)
def test_mismatched_weights_are_named(training_ckpt, tmp_path, edit, message):
    bad = _rewrite(training_ckpt, tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=message) as err:
        load_ldm(bad)
    assert "tampered" in (err.value.hint or "") or "do not match" not in str(err.value)


def test_a_truncated_file_is_not_readable(training_ckpt, tmp_path):
    bad = tmp_path / "cut.safetensors"
    raw = training_ckpt.read_bytes()
    bad.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_ldm(bad)


def test_bf16_stored_unet_weights_give_the_same_samples_as_autocast_alone(training_ckpt):
    """``sample --precision bf16`` on the CPU stores the UNet's linear and conv weights in bf16
    (half the memory, no per-call cast): autocast rounds fp32 weights to bf16 the same way at every
    call, so the UNet's output is bit-identical; norms stay float32."""
    from ldmctl.conditioning import Cond

    fp32 = load_ldm(training_ckpt)
    low = load_ldm(training_ckpt, unet_dtype=torch.bfloat16)
    dtypes = {n: p.dtype for n, p in low.unet.named_parameters()}
    assert dtypes["conv_in.weight"] == torch.bfloat16 and dtypes["norm_out.weight"] == torch.float32
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, fp32.unet.config.in_channels, 8, 8, generator=g), torch.tensor([10, 900])
    cond = Cond(add=torch.randn(2, 8, generator=g))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert torch.equal(fp32.unet(z, t, cond), low.unet(z, t, cond))
