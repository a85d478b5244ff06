"""LoRA on an ldmctl model (the tiny converted Stable Diffusion): exactness of fresh and switched-off
adapters, merging, the file round trip, several adapters at once.

Tolerances: merged vs unmerged UNet output within MERGE_RTOL of the output's largest magnitude (fp32,
CPU; the two differ by float rounding only: W x + s·up(down x) against (W + s·up·down) x). Everything
else is exact (torch.equal)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from ldmctl.diffusion.io import load_ldm
from ldmctl.errors import CheckpointError, ConfigError
from ldmctl.lora import (
    LoRAConfig,
    LoRALinear,
    add_lora,
    load_lora,
    load_lora_state_dict,
    lora_names,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    remove_lora,
    save_lora,
    set_lora_scale,
)
from ldmctl.samplers import get_sampler
from ldmctl.sampling import generate

MERGE_RTOL = 1e-5
PROMPTS = ["a red circle", "a photo of a cat"]


def unet_out(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        cond = model.cond({"caption": PROMPTS})
        return model.unet(z, torch.tensor([10, 700]), cond)


def images(model, seed: int = 1) -> torch.Tensor:
    runs = generate(
        model, get_sampler("ddim"), 1, steps=4, seed=seed, conditions={"caption": PROMPTS[:1]}, guidance=7.5
    )
    return torch.cat([x for x, _ in runs])


def randomise(model, name: str = "default", std: float = 0.05, seed: int = 3) -> None:
    """Give adapter ``name`` a trained-looking, non-zero ``up`` (every second parameter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for up in lora_parameters(model, name)[1::2]:
            up.copy_(torch.randn(up.shape, generator=g) * std)


def test_fresh_adapter_and_scale_zero_are_bit_identical(lora_base):
    model = load_ldm(lora_base)
    out0, img0 = unet_out(model), images(model)
    params = add_lora(model, LoRAConfig(rank=4, alpha=8.0, text=True))
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora." not in n)
    assert torch.equal(unet_out(model), out0)  # up = 0: exact zeros are added
    assert torch.equal(images(model), img0)
    randomise(model)
    set_lora_scale(model, "default", 0.0)
    assert torch.equal(unet_out(model), out0)  # a multiplier of 0 skips the adapter
    assert torch.equal(images(model), img0)
    set_lora_scale(model, "default", 1.0)
    assert (unet_out(model) - out0).abs().max() > 1e-3
    assert (images(model) - img0).abs().max() > 1e-3


def test_adapters_sit_where_the_config_says(lora_base):
    model = load_ldm(lora_base)
    add_lora(model, LoRAConfig(rank=2, targets=("to_k", "to_v"), layers=("attn2",)))
    keys = list(lora_state_dict(model))
    assert keys and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in keys)
    assert not any(k.startswith("text_encoder.") for k in keys)
    fused = model.unet.down[0][1].blocks[0].attn2.to_kv
    assert isinstance(fused, LoRALinear) and set(fused.lora["default"].down) == {"to_k", "to_v"}
    assert isinstance(model.unet.down[0][1].blocks[0].attn1.to_qkv, torch.nn.Linear)
    assert not isinstance(model.unet.down[0][1].blocks[0].attn1.to_qkv, LoRALinear)
    # the default: q, k, v, out of both attention layers of every transformer block, r (in + out) each:
    # three 32-wide blocks (down 0, up 1 x 2) and the 64-wide middle one, context 32, r = 4
    model = load_ldm(lora_base)
    n = sum(p.numel() for p in add_lora(model, LoRAConfig(rank=4)))

    def block(c: int) -> int:
        return 4 * (4 * 2 * c) + 4 * (2 * c + 2 * (32 + c) + 2 * c)  # attn1 + attn2

    assert n == 3 * block(32) + block(64) == 9984
    down = lora_state_dict(model)["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_A.weight"]
    assert down.shape == (4, 32)


def test_merge_equals_unmerged(lora_base):
    model = load_ldm(lora_base)
    keys = set(model.state_dict())
    add_lora(model, LoRAConfig(rank=4, alpha=4.0, text=True))
    randomise(model)
    set_lora_scale(model, "default", 0.7)
    out, img = unet_out(model), images(model)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == keys  # a plain model again, savable as a checkpoint
    assert (unet_out(model) - out).abs().max() <= MERGE_RTOL * out.abs().max()
    assert (images(model) - img).abs().max() < 1e-4


def test_save_load_round_trip_is_exact(lora_base, tmp_path):
    cfg = LoRAConfig(rank=4, alpha=6.0, rank_stabilised=True, text=True)
    model = load_ldm(lora_base)
    add_lora(model, cfg, name="style", seed=5)
    randomise(model, "style")
    path = save_lora(tmp_path / "style.safetensors", model, cfg, name="style", base=lora_base, extra={"steps": 3})
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["ldmctl.kind"] == "lora" and json.loads(meta["ldmctl.config"])["alpha"] == 6.0
    assert json.loads(meta["ldmctl.base"])["name"] == lora_base.name
    assert json.loads(meta["lora_adapter_metadata"])["unet.use_rslora"] is True
    other = load_ldm(lora_base)
    assert load_lora(other, path, base=lora_base) == "style"
    saved, loaded = lora_state_dict(model, "style"), lora_state_dict(other, "style")
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert torch.equal(unet_out(other), unet_out(model))
    assert not any(p.requires_grad for p in lora_parameters(other, "style"))  # loaded for inference


def test_two_adapters_add(lora_base, tmp_path):
    files = []
    for i, cfg in enumerate([LoRAConfig(rank=4), LoRAConfig(rank=2, alpha=4.0, targets=("to_q", "to_out"))]):
        model = load_ldm(lora_base)
        add_lora(model, cfg, seed=i)
        randomise(model, seed=10 + i)
        files.append(save_lora(tmp_path / f"a{i}.safetensors", model, cfg, base=None))
    model = load_ldm(lora_base)
    base_out = unet_out(model)
    assert load_lora(model, files[0]) == "a0"
    assert load_lora(model, files[1], scale=0.5) == "a1"
    assert lora_names(model) == ["a0", "a1"]
    both = unet_out(model)
    set_lora_scale(model, "a1", 0.0)
    only_a = unet_out(model)
    assert (both - only_a).abs().max() > 1e-4 and (only_a - base_out).abs().max() > 1e-4
    set_lora_scale(model, "a1", 0.5)
    merge_lora(model)  # W + a0 + 0.5 a1
    assert (unet_out(model) - both).abs().max() <= MERGE_RTOL * both.abs().max()
    model = load_ldm(lora_base)
    load_lora(model, files[0])
    load_lora(model, files[1], scale=0.5)
    remove_lora(model)
    assert torch.equal(unet_out(model), base_out)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_resume_copies_adapter_tensors_exactly(lora_base):
    cfg = LoRAConfig(rank=4)
    a, b = load_ldm(lora_base), load_ldm(lora_base)
    add_lora(a, cfg, seed=1)
    randomise(a)
    params = add_lora(b, cfg, seed=2)
    load_lora_state_dict(b, lora_state_dict(a))
    assert lora_parameters(b) == params  # the same Parameter objects: an optimizer keeps them
    assert torch.equal(unet_out(a), unet_out(b))
    with pytest.raises(CheckpointError, match="does not match"):
        load_lora_state_dict(b, {"unet.nowhere.lora_A.weight": torch.zeros(4, 32)})


def test_seeded_init_and_gradients(lora_base):
    a, b = load_ldm(lora_base), load_ldm(lora_base)
    pa, pb = add_lora(a, LoRAConfig(rank=4), seed=7), add_lora(b, LoRAConfig(rank=4), seed=7)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))
    assert all(not torch.any(up) for up in pa[1::2])  # up starts at zero
    assert all(d.abs().max() <= 1 / d.shape[1] ** 0.5 for d in pa[0::2])
    with torch.no_grad():
        cond = a.cond({"caption": PROMPTS})
    out = a.unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), cond)
    out.square().mean().backward()
    assert all(up.grad is not None and up.grad.abs().sum() > 0 for up in pa[1::2])
    assert all(p.grad is None for n, p in a.named_parameters() if ".lora." not in n)


def test_bf16_autocast_computes_the_delta_in_bf16(lora_base):
    model = load_ldm(lora_base)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = unet_out(model)
    add_lora(model, LoRAConfig(rank=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(unet_out(model), before)
        layer = model.unet.mid[1].blocks[0].attn1.to_qkv
        y = layer(torch.randn(1, 5, layer.in_features))
    assert y.dtype == torch.bfloat16


def test_config_and_name_errors(lora_base, tmp_path):
    model = load_ldm(lora_base)
    for bad in (LoRAConfig(rank=0), LoRAConfig(alpha=-1.0), LoRAConfig(targets=("to_x",)), LoRAConfig(layers=())):
        with pytest.raises(ConfigError):
            add_lora(model, bad)
    add_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="already on this model"):
        add_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="no adapter named 'other'"):
        set_lora_scale(model, "other", 1.0)
    with pytest.raises(ConfigError, match="has rank"):
        save_lora(tmp_path / "x.safetensors", model, LoRAConfig(rank=4), base=None)
    path = save_lora(tmp_path / "my.style v2.safetensors", model, LoRAConfig(rank=2), base=None)
    assert load_lora(load_ldm(lora_base), path) == "my_style_v2"
