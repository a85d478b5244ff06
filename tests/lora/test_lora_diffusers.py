"""LoRA interop with diffusers/peft on the tiny random Stable Diffusion pipeline (fp32, CPU).

* an ldmctl adapter (alpha != rank, text encoder too) loaded by ``StableDiffusionPipeline.load_lora_weights``
  gives the image ldmctl samples with it: 4 DDIM steps, guidance 7.5, within TOL on [0, 1] images;
* a peft adapter made on diffusers' UNet (``add_adapter``, saved by ``save_lora_weights``) loads in ldmctl
  and gives diffusers' image within TOL; without alpha metadata both take alpha = rank;
* the same adapter in kohya's layout (``lora_unet_*.lora_down/lora_up/alpha``) and in the layout of
  diffusers < 0.21 (``processor.to_q_lora.down``) loads to the same model exactly (torch.equal); diffusers
  reads the kohya file to the same image.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ldmctl.diffusion.io import load_ldm
from ldmctl.lora import LoRAConfig, add_lora, load_lora, lora_parameters, save_lora, set_lora_scale
from ldmctl.samplers import get_sampler
from ldmctl.sampling import generate

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
TOL = 1e-4  # max abs difference of [0, 1] images, fp32, CPU (float rounding only: ~1e-6)
PROMPT, SEED, STEPS = "a red circle on a blue square", 4, 4
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def _pipe(folder):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def theirs(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED)
    return pipe(PROMPT, generator=g, num_inference_steps=STEPS, guidance_scale=7.5, output_type="pt").images


def ours(model) -> torch.Tensor:
    runs = generate(
        model, get_sampler("ddim"), 1, steps=STEPS, seed=SEED, conditions={"caption": [PROMPT]}, guidance=7.5
    )
    return (torch.cat([x for x, _ in runs]) / 2 + 0.5).clamp(0, 1)


def unet_out(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cond = model.cond({"caption": [PROMPT]})
        return model.unet(torch.randn(1, 4, 8, 8, generator=g), torch.tensor([300]), cond)


def _randomise(params, seed: int, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("stabilised", [False, True])
def test_ldmctl_adapter_in_diffusers(lora_sd_folder, lora_base, tmp_path, stabilised):
    cfg = LoRAConfig(rank=4, alpha=8.0, rank_stabilised=stabilised, text=True)
    model = load_ldm(lora_base)
    plain = ours(model)
    add_lora(model, cfg)
    _randomise(lora_parameters(model)[1::2], seed=1)  # every up
    path = save_lora(tmp_path / "ours.safetensors", model, cfg, base=lora_base)
    mine = ours(model)
    pipe = _pipe(lora_sd_folder)
    pipe.load_lora_weights(str(path))
    assert any("lora_A" in n for n, _ in pipe.text_encoder.named_parameters())  # the text adapters arrived too
    image = theirs(pipe)
    assert (mine - image).abs().max() < TOL
    assert (mine - plain).abs().max() > 100 * TOL  # the adapter changed the image
    set_lora_scale(model, "default", 0.5)  # half the scale: the alpha read by diffusers is not ignored
    assert (ours(model) - image).abs().max() > 10 * TOL


@pytest.fixture(scope="module")
def peft_adapter(lora_sd_folder, tmp_path_factory):
    """A random peft LoRA (r 4, alpha 8) on diffusers' UNet attention, saved with and without the
    LoRA metadata; and diffusers' image with it."""
    pipe = _pipe(lora_sd_folder)
    pipe.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=8, target_modules=ATTENTION))
    _randomise([p for n, p in pipe.unet.named_parameters() if "lora_B" in n], seed=2)
    layers = peft.get_peft_model_state_dict(pipe.unet)
    folder = tmp_path_factory.mktemp("peft")
    meta = pipe.unet.peft_config["default"].to_dict()
    cls = diffusers.StableDiffusionPipeline
    cls.save_lora_weights(folder / "meta", unet_lora_layers=layers, unet_lora_adapter_metadata=meta)
    cls.save_lora_weights(folder / "bare", unet_lora_layers=layers)
    name = "pytorch_lora_weights.safetensors"
    return {"image": theirs(pipe), "meta": folder / "meta" / name, "bare": folder / "bare" / name}


def test_diffusers_adapter_in_ldmctl(peft_adapter, lora_base):
    model = load_ldm(lora_base)
    assert load_lora(model, peft_adapter["meta"]) == "pytorch_lora_weights"
    assert (ours(model) - peft_adapter["image"]).abs().max() < TOL


def test_diffusers_adapter_without_alpha_takes_alpha_rank(peft_adapter, lora_sd_folder, lora_base):
    pipe = _pipe(lora_sd_folder)
    pipe.load_lora_weights(str(peft_adapter["bare"]))
    model = load_ldm(lora_base)
    load_lora(model, peft_adapter["bare"])
    assert (ours(model) - theirs(pipe)).abs().max() < TOL
    other = load_ldm(lora_base)
    load_lora(other, peft_adapter["meta"], scale=0.5)  # alpha / r = 2, times 0.5: the same scale, 1
    assert torch.equal(unet_out(model), unet_out(other))


def _renamed(path, rename) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    out = {}
    for key, value in tensors.items():
        out.update(rename(key, value))
    return out


def test_kohya_layout_loads_and_equals(peft_adapter, lora_sd_folder, lora_base, tmp_path):
    def kohya(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
        module, _, leaf = key.removeprefix("unet.").rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        out = {f"{name}.lora_{'down' if leaf == 'A.weight' else 'up'}.weight": value}
        return out | {f"{name}.alpha": torch.tensor(8.0)}

    path = tmp_path / "kohya.safetensors"
    save_file(_renamed(peft_adapter["meta"], kohya), str(path))
    a, b = load_ldm(lora_base), load_ldm(lora_base)
    load_lora(a, path)
    load_lora(b, peft_adapter["meta"])
    assert torch.equal(unet_out(a), unet_out(b))
    pipe = _pipe(lora_sd_folder)  # and diffusers' own kohya reader agrees on the names
    pipe.load_lora_weights(str(path))
    assert (ours(a) - theirs(pipe)).abs().max() < TOL


def test_old_diffusers_layout_loads_and_equals(peft_adapter, lora_base, tmp_path):
    def old(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
        module, _, leaf = key.rpartition(".lora_")
        attn, _, proj = module.removesuffix(".0").rpartition(".")
        return {f"{attn}.processor.{proj}_lora.{'down' if leaf == 'A.weight' else 'up'}.weight": value}

    path = tmp_path / "old.safetensors"
    save_file(_renamed(peft_adapter["bare"], old), str(path))
    with safe_open(str(path), framework="pt") as fh:
        assert any(".processor.to_out_lora.up." in k for k in fh.keys())
    a, b = load_ldm(lora_base), load_ldm(lora_base)
    load_lora(a, path)
    load_lora(b, peft_adapter["bare"])
    assert torch.equal(unet_out(a), unet_out(b))


def test_file_metadata_tells_diffusers_alpha(lora_base, tmp_path):
    cfg = LoRAConfig(rank=4, alpha=2.0)
    model = load_ldm(lora_base)
    add_lora(model, cfg)
    path = save_lora(tmp_path / "x.safetensors", model, cfg, base=None)
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 2.0 and meta["unet.use_rslora"] is False
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in meta["unet.target_modules"]
    assert not any(k.startswith("text_encoder.") for k in meta)
