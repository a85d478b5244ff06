"""Adapter files ldmctl must refuse with a clear CheckpointError: another base checkpoint, a corrupt or
truncated file, a file that is no LoRA, and adapters made for another architecture."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from ldmctl.diffusion.io import load_ldm
from ldmctl.errors import CheckpointError
from ldmctl.lora import LoRAConfig, add_lora, load_lora, lora_names, lora_state_dict, save_lora

KEY = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def adapter(lora_base, tmp_path_factory):
    cfg = LoRAConfig(rank=4)
    model = load_ldm(lora_base)
    add_lora(model, cfg)
    return save_lora(tmp_path_factory.mktemp("lora") / "a.safetensors", model, cfg, base=lora_base)


def test_wrong_base_is_refused(adapter, lora_base, tmp_path):
    other = tmp_path / "other.safetensors"
    shutil.copy(lora_base, other)
    with open(other, "r+b") as fh:  # same architecture, other weights: one byte of a tensor differs
        fh.seek(-3, 2)
        last = fh.read(1)
        fh.seek(-3, 2)
        fh.write(bytes([last[0] ^ 1]))
    model = load_ldm(lora_base)
    with pytest.raises(CheckpointError, match="trained for another base model: sd.safetensors") as err:
        load_lora(model, adapter, base=other)
    assert "other.safetensors" in str(err.value)
    assert lora_names(model) == []  # nothing was put on the model
    assert load_lora(model, adapter, base=lora_base) == "a"  # its own base is fine
    assert load_lora(model, adapter, name="again") == "again"  # no base given: only the shapes are checked


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_is_refused(adapter, lora_base, tmp_path, damage):
    data = adapter.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x13\x00" * 500, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="not a readable LoRA .safetensors file"):
        load_lora(load_ldm(lora_base), broken)


def test_files_that_are_no_lora_are_refused(lora_base, tmp_path):
    with pytest.raises(CheckpointError, match="ldm checkpoint, not a LoRA adapter"):
        load_lora(load_ldm(lora_base), lora_base)
    plain = tmp_path / "weights.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(CheckpointError, match="is not a LoRA adapter file"):
        load_lora(load_ldm(lora_base), plain)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lora(load_ldm(lora_base), tmp_path / "missing.safetensors")


def test_adapter_for_another_architecture_is_refused(lora_base, tmp_path):
    down, up = torch.zeros(4, 32), torch.zeros(32, 4)
    sdxl = tmp_path / "sdxl.safetensors"  # layers this UNet does not have
    save_file(
        {
            f"unet.down_blocks.2.attentions.1.transformer_blocks.{i}.attn1.to_k.lora_{ab}.weight": t.clone()
            for i in range(5)
            for ab, t in (("A", down), ("B", up))
        },
        str(sdxl),
    )
    with pytest.raises(CheckpointError, match="5 adapted layers are no linear layer of this model") as err:
        load_lora(load_ldm(lora_base), sdxl)
    assert "down_blocks.2.attentions.1.transformer_blocks.0.attn1.to_k" in str(err.value)
    wide = tmp_path / "wide.safetensors"  # the right names, the widths of another model
    save_file({f"{KEY}.lora_A.weight": torch.zeros(4, 48), f"{KEY}.lora_B.weight": torch.zeros(48, 4)}, str(wide))
    with pytest.raises(CheckpointError, match=r"shapes do not fit this model: .*to_q: down \(4, 48\)"):
        load_lora(load_ldm(lora_base), wide)
    kohya = tmp_path / "locon.safetensors"  # a 3x3 convolution adapter (LoCon) on a ResNet block
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    save_file(
        {f"{name}.lora_down.weight": torch.zeros(4, 32, 3, 3), f"{name}.lora_up.weight": torch.zeros(32, 4, 1, 1)},
        str(kohya),
    )
    with pytest.raises(CheckpointError, match=name):
        load_lora(load_ldm(lora_base), kohya)
    name = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"  # SDXL's second text encoder
    save_file(
        {f"{name}.lora_down.weight": torch.zeros(4, 32), f"{name}.lora_up.weight": torch.zeros(32, 4)}, str(kohya)
    )
    with pytest.raises(CheckpointError, match=f"no linear layer of this model: {name}"):
        load_lora(load_ldm(lora_base), kohya)


def test_unsupported_and_incomplete_adapters_are_refused(lora_base, tmp_path):
    dora = tmp_path / "dora.safetensors"
    down, up = torch.zeros(4, 32), torch.zeros(32, 4)
    save_file(
        {f"{KEY}.lora_A.weight": down, f"{KEY}.lora_B.weight": up, f"{KEY}.lora_magnitude_vector": torch.ones(32)},
        str(dora),
    )
    with pytest.raises(CheckpointError, match="does not use: .*to_q.lora_magnitude_vector") as err:
        load_lora(load_ldm(lora_base), dora)
    assert "DoRA" in err.value.hint
    half = tmp_path / "half.safetensors"
    save_file({f"{KEY}.lora_A.weight": down}, str(half))
    with pytest.raises(CheckpointError, match="only one of their down/up tensors"):
        load_lora(load_ldm(lora_base), half)


def test_kohya_extra_layers_load(lora_base, tmp_path):
    """kohya's SD LoRAs adapt feed-forward and proj_in/proj_out (1x1 convolutions in SD 1.x) too: they load."""
    g = torch.Generator().manual_seed(0)
    names = {
        "lora_unet_down_blocks_0_attentions_0_proj_in": (32, 32),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj": (64, 512),
        "lora_te_text_model_encoder_layers_1_mlp_fc1": (32, 37),
    }
    tensors = {}
    for name, (cin, cout) in names.items():
        conv = name.endswith("proj_in")
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, cin, *((1, 1) if conv else ()), generator=g)
        tensors[f"{name}.lora_up.weight"] = torch.randn(cout, 2, *((1, 1) if conv else ()), generator=g)
        tensors[f"{name}.alpha"] = torch.tensor(1.0)
    path = tmp_path / "kohya_full.safetensors"
    save_file(tensors, str(path))
    model = load_ldm(lora_base)
    load_lora(model, path)
    state = lora_state_dict(model, "kohya_full")
    assert state["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"].shape == (2, 32)
    assert "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_B.weight" in state
